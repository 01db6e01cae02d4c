"""The pre-flight check's classification against two real (in-process) sandbox PACS.

No Prefect here: the plain functions the check lanes wrap, on a SQLite ledger. Each test
asks what a user would: which class a row gets, what the ledger keeps, that nothing was
retrieved, and what the following extraction does with the check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from sqlalchemy import Engine, update

from pacsflow.check import CheckResult, check_at_source, classify, trusted_check
from pacsflow.config import ReceiverConfig, RetrieveMethod, SiteConfig, SourceConfig
from pacsflow.dicom.matching import choose
from pacsflow.dicom.query import StudyMatch
from pacsflow.errors import SourceUnavailable
from pacsflow.ledger import checks, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study
from pacsflow.manifest import ManifestRow
from pacsflow.pipeline import Located, Workspace, locate
from pacsflow.sandbox import SandboxPacs, make_patients
from pacsflow.sandbox import study_of as sandbox_study
from pacsflow.sandbox.activity import OperationKind
from tests.ledger_rows import ingest_study
from tests.servers import free_port

PROJECT = "check-study"
SOURCES = ["primary", "secondary"]
DATE = dt.date(2024, 3, 5)
NEXT_DAY = DATE + dt.timedelta(days=1)
PATIENTS = make_patients(4, seed=33)


def study_of(patient, accession: str, study_date: dt.date = DATE, **kwargs) -> list[Dataset]:
    return sandbox_study(
        patient,
        accession=accession,
        study_date=study_date,
        modality="CT",
        **kwargs,
    )


IN_PRIMARY = study_of(PATIENTS[0], "ACC3001", n_series=2, n_instances=2)
IN_SECONDARY = study_of(PATIENTS[1], "ACC3002", n_series=1, n_instances=3)
IN_BOTH = study_of(PATIENTS[2], "ACC3003", n_series=1, n_instances=1)
NOWHERE = study_of(PATIENTS[3], "ACC3004", n_series=1, n_instances=1)
TWINS = [
    study_of(PATIENTS[3], "ACC3005", day, n_series=1, n_instances=1, seed=seed)
    for seed, day in ((1, DATE), (2, NEXT_DAY))
]
OFF_DATE = study_of(PATIENTS[0], "ACC3006", NEXT_DAY, n_series=1, n_instances=2)


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxPacs]:
    server = SandboxPacs("PRIMARY", 0, tmp_path_factory.mktemp("primary"), timeout=5)
    for study in (IN_PRIMARY, IN_BOTH, *TWINS, OFF_DATE):
        server.add_datasets(study)
    with server:
        yield server


@pytest.fixture(scope="module")
def secondary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxPacs]:
    server = SandboxPacs("SECONDARY", 0, tmp_path_factory.mktemp("secondary"), timeout=5)
    for study in (IN_SECONDARY, IN_BOTH):
        server.add_datasets(study)
    with server:
        yield server


def _source(pacs: SandboxPacs, retrieve: RetrieveMethod) -> SourceConfig:
    host, port = pacs.address
    return SourceConfig(ae_title=pacs.ae_title, host=host, port=port, retrieve=retrieve, timeout=5)


@pytest.fixture
def ws(tmp_path: Path, primary: SandboxPacs, secondary: SandboxPacs) -> Iterator[Workspace]:
    site = SiteConfig(
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        receiver=ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=free_port()),
        staging=tmp_path / "staging",
        sources={
            "primary": _source(primary, RetrieveMethod.MOVE),
            "secondary": _source(secondary, RetrieveMethod.GET),
        },
        destinations={"local": {"type": "filesystem", "path": str(tmp_path / "export")}},
    )
    engine: Engine = make_engine(site.ledger)
    migrate(engine)
    yield Workspace(site=site, sessions=session_factory(engine))
    engine.dispose()


def add_row(ws: Workspace, study: list[Dataset]) -> int:
    return ingest_study(ws.sessions, PROJECT, study, DATE)


def check(ws: Workspace, study_id: int, policy="none") -> CheckResult:
    """Ask the sources in order, as the check flow does: the next only after 'not there'."""
    for index, name in enumerate(SOURCES):
        result = check_at_source(ws, study_id, name, index, index == len(SOURCES) - 1, policy)
        if result is not None:
            return result
    raise AssertionError("the last source must classify the row")


def row(ws: Workspace, study_id: int) -> Study:
    with ws.sessions() as session:
        return repo.get_study(session, study_id)


def retrievals(*servers: SandboxPacs) -> list:
    return [op for s in servers for op in s.activity if op.kind != OperationKind.FIND]


def finds(server: SandboxPacs) -> int:
    return sum(op.kind == OperationKind.FIND for op in server.activity)


# -- classes ----------------------------------------------------------------------------


def test_a_study_in_the_primary_is_found_there_with_its_instance_count(ws, primary, secondary):
    study_id = add_row(ws, IN_PRIMARY)
    asked_secondary = finds(secondary)
    assert check(ws, study_id) == CheckResult.PRIMARY
    found = row(ws, study_id)
    assert found.check_result == "primary" and found.checked_at is not None
    assert found.source == "primary"
    assert found.found_study_uid == str(IN_PRIMARY[0].StudyInstanceUID)
    assert found.expected_instances == 4
    assert found.status == "pending" and found.source_index == 0  # the queue is untouched
    assert finds(secondary) == asked_secondary  # found in the primary: the secondary is not asked
    assert retrievals(primary, secondary) == []


def test_a_study_in_both_is_found_in_the_primary(ws):
    study_id = add_row(ws, IN_BOTH)
    assert check(ws, study_id) == CheckResult.PRIMARY
    assert row(ws, study_id).source == "primary"


def test_a_study_only_in_the_secondary(ws, primary, secondary):
    study_id = add_row(ws, IN_SECONDARY)
    assert check_at_source(ws, study_id, "primary", 0, False) is None  # not there: ask the next
    assert row(ws, study_id).check_result is None  # nothing recorded until a source decides
    assert check_at_source(ws, study_id, "secondary", 1, True) == CheckResult.SECONDARY
    found = row(ws, study_id)
    assert (found.source, found.expected_instances) == ("secondary", 3)
    assert found.found_study_uid == str(IN_SECONDARY[0].StudyInstanceUID)
    assert retrievals(primary, secondary) == []


def test_a_study_in_no_source_is_not_found(ws):
    study_id = add_row(ws, NOWHERE)
    assert check(ws, study_id) == CheckResult.NOT_FOUND
    found = row(ws, study_id)
    assert (found.check_result, found.source, found.found_study_uid) == ("not_found", None, None)
    assert found.status == "pending"  # the extraction decides the row's status, not the check


def test_two_studies_under_one_accession_are_ambiguous(ws, secondary):
    study_id = add_row(ws, TWINS[0])
    asked_secondary = finds(secondary)
    assert check(ws, study_id) == CheckResult.AMBIGUOUS
    found = row(ws, study_id)
    assert found.source == "primary" and found.found_study_uid is None
    assert found.check_detail.startswith("2 studies match (dated 2024-03-05, 2024-03-06")
    assert finds(secondary) == asked_secondary  # the primary holds it: not asked elsewhere


def test_one_study_on_another_date_is_a_date_mismatch(ws):
    study_id = add_row(ws, OFF_DATE)
    assert check(ws, study_id) == CheckResult.DATE_MISMATCH
    assert "1 study matches (dated 2024-03-06; the manifest says 2024-03-05)" in (
        row(ws, study_id).check_detail
    )


def test_the_project_policy_decides_like_the_extraction(ws):
    twins = add_row(ws, TWINS[0])
    assert check(ws, twins, "date_match") == CheckResult.PRIMARY  # the twin on the row's date
    assert row(ws, twins).found_study_uid == str(TWINS[0][0].StudyInstanceUID)
    assert check(ws, twins, "all") == CheckResult.SEVERAL
    several = row(ws, twins)
    assert several.found_study_uid is None and several.expected_instances == 2
    assert check(ws, add_row(ws, OFF_DATE), "all") == CheckResult.PRIMARY


def test_classify_tells_a_date_mismatch_from_several_matches():
    one = StudyMatch("1.2.3", 1, ("CT",), NEXT_DAY)
    two = StudyMatch("1.2.4", 1, ("CT",), DATE)
    assert classify(choose([one], DATE, "none"), 1, 0) == CheckResult.DATE_MISMATCH
    assert classify(choose([one, two], DATE, "none"), 2, 0) == CheckResult.AMBIGUOUS
    # date_match with no match on the date but only one study: still its date is off.
    assert classify(choose([one], DATE, "date_match"), 1, 1) == CheckResult.DATE_MISMATCH
    assert classify(choose([], DATE, "none"), 0, 0) is None
    assert classify(choose([two], DATE, "none"), 1, 1) == CheckResult.SECONDARY


def test_a_source_that_is_down_raises_and_records_nothing(ws, primary):
    study_id = add_row(ws, IN_PRIMARY)
    primary.set_offline(True)
    try:
        with pytest.raises(SourceUnavailable, match="PRIMARY"):
            check_at_source(ws, study_id, "primary", 0, False)
    finally:
        primary.set_offline(False)
    assert row(ws, study_id).check_result is None


def test_a_study_a_worker_holds_is_not_overwritten(ws):
    study_id = add_row(ws, IN_PRIMARY)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    with ws.sessions() as session:
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(claimed_by="someone", claim_expires=later)
        )
        session.commit()
    assert check(ws, study_id) == CheckResult.PRIMARY
    assert row(ws, study_id).check_result is None
    assert row(ws, study_id).found_study_uid is None


def test_done_studies_are_listed_apart_and_not_checked(ws):
    study_id = add_row(ws, IN_PRIMARY)
    with ws.sessions() as session:
        repo.mark_exported(session, study_id, 4)
        rows = [
            ManifestRow(
                row=1, study_date=DATE, mrn=str(IN_PRIMARY[0].PatientID), accession_number="ACC3001"
            )
        ]
        assert checks.manifest_studies(session, PROJECT, rows) == ([], 1)


# -- what the extraction does with a check ---------------------------------------------


def test_the_extraction_fetches_a_freshly_checked_study_without_a_second_find(ws, primary):
    study_id = add_row(ws, IN_PRIMARY)
    check(ws, study_id)
    asked = finds(primary)
    assert locate(ws, study_id, "primary", sources=SOURCES) == Located.FOUND
    assert finds(primary) == asked
    assert row(ws, study_id).found_study_uid == str(IN_PRIMARY[0].StudyInstanceUID)


def test_a_study_checked_in_the_secondary_is_not_asked_of_the_primary_again(ws, primary, secondary):
    study_id = add_row(ws, IN_SECONDARY)
    check(ws, study_id)
    asked = finds(primary), finds(secondary)
    assert locate(ws, study_id, "primary", sources=SOURCES) == Located.NOT_FOUND
    assert locate(ws, study_id, "secondary", sources=SOURCES) == Located.FOUND
    assert (finds(primary), finds(secondary)) == asked


def test_an_old_check_or_a_second_try_asks_the_source_again(ws, primary):
    study_id = add_row(ws, IN_PRIMARY)
    check(ws, study_id)
    checked = row(ws, study_id)
    now = dt.datetime.now(dt.UTC)
    assert trusted_check(checked, "primary", SOURCES, now) is True
    assert trusted_check(checked, "primary", SOURCES, now + dt.timedelta(hours=25)) is None
    with ws.sessions() as session:
        repo.update_study(session, study_id, tries=2)  # the first fetch of this pull failed
    asked = finds(primary)
    assert locate(ws, study_id, "primary", sources=SOURCES) == Located.FOUND
    assert finds(primary) == asked + 1


def test_a_row_checked_ambiguous_or_not_found_is_asked_again(ws, primary):
    twins, nowhere = add_row(ws, TWINS[0]), add_row(ws, NOWHERE)
    check(ws, twins)
    check(ws, nowhere)
    asked = finds(primary)
    assert locate(ws, twins, "primary", sources=SOURCES) == Located.AMBIGUOUS
    assert locate(ws, nowhere, "primary", sources=SOURCES) == Located.NOT_FOUND
    assert finds(primary) == asked + 2
