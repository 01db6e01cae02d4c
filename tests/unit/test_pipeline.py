"""The per-study steps against two real (in-process) PACS: primary by C-MOVE, secondary by C-GET.

No Prefect here: these are the plain functions the tasks wrap, run on a SQLite ledger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import socket
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from sqlalchemy import Engine

from pacsflow import failures, pipeline
from pacsflow.config import (
    FilesystemDestinationConfig,
    ProjectConfig,
    ReceiverConfig,
    RetrieveMethod,
    SiteConfig,
    SourceConfig,
)
from pacsflow.deid.profile import build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.dicom import storage
from pacsflow.dicom.query import StudyQuery, find_studies
from pacsflow.dicom.receiver import Receiver, stop_process_receiver
from pacsflow.errors import RetriableError, SourceUnavailable
from pacsflow.ledger import StudyStatus, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study
from pacsflow.manifest import ManifestRow
from pacsflow.pipeline import (
    Located,
    Workspace,
    begin,
    deidentify_and_export,
    fetch,
    locate,
    record_not_found,
)
from pacsflow.sandbox import FakePatient, SandboxPacs, make_patients
from pacsflow.sandbox import study_of as sandbox_study
from tests.ledger_rows import ingest_study

PROJECT = ProjectConfig(name="my-study", sources=["primary", "secondary"], destination="local")
PSEUDONYMIZER = Pseudonymizer(bytes(range(32)))
BASIC = build_profile("basic")
DATE = dt.date(2024, 3, 5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def study_of(
    patient: FakePatient, accession: str, modality: str, study_date: dt.date = DATE, **kwargs: int
) -> list[Dataset]:
    return sandbox_study(
        patient,
        accession=accession,
        study_date=study_date,
        modality=modality,
        **kwargs,
    )


PATIENTS = make_patients(3, seed=21)
#: In the primary only: 2 series x 2 instances.
IN_PRIMARY = study_of(PATIENTS[0], "ACC2001", "CT", n_series=2, n_instances=2)
#: In the secondary only: 1 series x 3 instances.
IN_SECONDARY = study_of(PATIENTS[1], "ACC2002", "MR", n_series=1, n_instances=3)
#: Two different studies of one patient under one accession number, both in the primary.
TWINS = [
    study_of(PATIENTS[2], "ACC2003", "CT", n_series=1, n_instances=1, seed=seed) for seed in (1, 2)
]
NEXT_DAY = DATE + dt.timedelta(days=1)
#: Two studies under one accession, one on the manifest's date (2 instances), one the
#: day after (1 instance), both in the primary.
DATED_TWINS = [
    study_of(PATIENTS[2], "ACC2004", "CT", DATE, n_series=1, n_instances=2, seed=1),
    study_of(PATIENTS[2], "ACC2004", "CT", NEXT_DAY, n_series=1, n_instances=1, seed=2),
]
#: One study, dated the day after the manifest's date, in the primary.
OFF_DATE = study_of(PATIENTS[1], "ACC2005", "CT", NEXT_DAY, n_series=1, n_instances=1)
#: Like DATED_TWINS, in the secondary only.
SECONDARY_TWINS = [
    study_of(PATIENTS[0], "ACC2006", "MR", day, n_series=1, n_instances=1, seed=seed)
    for seed, day in ((1, DATE), (2, NEXT_DAY))
]


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxPacs]:
    server = SandboxPacs("PRIMARY", 0, tmp_path_factory.mktemp("primary"), timeout=5)
    server.add_datasets(IN_PRIMARY)
    for study in [*TWINS, *DATED_TWINS, OFF_DATE]:
        server.add_datasets(study)
    with server:
        yield server


@pytest.fixture(scope="module")
def secondary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxPacs]:
    server = SandboxPacs("SECONDARY", 0, tmp_path_factory.mktemp("secondary"), timeout=5)
    server.add_datasets(IN_SECONDARY)
    for study in SECONDARY_TWINS:
        server.add_datasets(study)
    with server:
        yield server


@pytest.fixture(scope="module")
def receiver_port(primary: SandboxPacs, secondary: SandboxPacs) -> int:
    """A port for our receiver, chosen once the sandboxes hold theirs (so none takes it)."""
    port = free_port()
    primary.add_destination("PACSFLOW", "127.0.0.1", port)
    return port


def source_for(pacs: SandboxPacs, retrieve: RetrieveMethod, timeout: float = 5) -> SourceConfig:
    host, port = pacs.address
    return SourceConfig(
        ae_title=pacs.ae_title, host=host, port=port, retrieve=retrieve, timeout=timeout
    )


@pytest.fixture
def site(
    tmp_path: Path, primary: SandboxPacs, secondary: SandboxPacs, receiver_port: int
) -> Iterator[SiteConfig]:
    yield SiteConfig(
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        receiver=ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=receiver_port),
        staging=tmp_path / "staging",
        sources={
            "primary": source_for(primary, RetrieveMethod.MOVE),
            "secondary": source_for(secondary, RetrieveMethod.GET),
        },
        destinations={"local": FilesystemDestinationConfig(path=tmp_path / "export")},
    )
    stop_process_receiver()


@pytest.fixture
def engine(site: SiteConfig) -> Iterator[Engine]:
    engine = make_engine(site.ledger)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def ws(site: SiteConfig, engine: Engine) -> Workspace:
    return Workspace(site=site, sessions=session_factory(engine))


def add_study(ws: Workspace, study: list[Dataset], *, by_uid: bool = False) -> int:
    first = study[0]
    row = ManifestRow(
        row=1,
        study_date=DATE,
        mrn=None if by_uid else str(first.PatientID),
        accession_number=None if by_uid else str(first.AccessionNumber),
        study_uid=str(first.StudyInstanceUID) if by_uid else None,
    )
    with ws.sessions() as session:
        assert repo.ingest_manifest(session, PROJECT.name, [row]).added == 1
        return max(study_id for study_id, _ref in repo.studies_to_process(session, PROJECT.name))


def ledger_row(ws: Workspace, study_id: int):
    with ws.sessions() as session:
        return repo.get_study(session, study_id)


# -- locate and fetch --------------------------------------------------------------------


def test_study_in_primary_is_located_and_moved(ws: Workspace) -> None:
    study_id = add_study(ws, IN_PRIMARY)
    assert begin(ws, study_id) is True

    assert locate(ws, study_id, "primary") == Located.FOUND
    study = ledger_row(ws, study_id)
    assert study.source == "primary"
    assert study.found_study_uid == IN_PRIMARY[0].StudyInstanceUID
    assert study.expected_instances == 4

    assert fetch(ws, study_id, "primary").received == 4
    folder = storage.study_dir(ws.staging, PROJECT.name, IN_PRIMARY[0].StudyInstanceUID)
    received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.glob("*.dcm")}
    assert received == {str(ds.SOPInstanceUID) for ds in IN_PRIMARY}
    assert ledger_row(ws, study_id).received_instances == 4


def test_study_only_in_secondary_falls_through_to_it(ws: Workspace) -> None:
    study_id = add_study(ws, IN_SECONDARY)
    begin(ws, study_id)

    assert locate(ws, study_id, "primary") == Located.NOT_FOUND
    assert ledger_row(ws, study_id).source is None

    assert locate(ws, study_id, "secondary") == Located.FOUND
    assert ledger_row(ws, study_id).source == "secondary"
    assert fetch(ws, study_id, "secondary").received == 3  # by C-GET, no receiver involved
    folder = storage.study_dir(ws.staging, PROJECT.name, IN_SECONDARY[0].StudyInstanceUID)
    assert storage.count_instances(folder) == 3


def test_study_located_by_uid(ws: Workspace) -> None:
    study_id = add_study(ws, IN_SECONDARY, by_uid=True)
    assert locate(ws, study_id, "primary") == Located.NOT_FOUND
    assert locate(ws, study_id, "secondary") == Located.FOUND
    assert ledger_row(ws, study_id).expected_instances == 3


def test_offline_source_raises_never_not_found(ws: Workspace, primary: SandboxPacs) -> None:
    study_id = add_study(ws, IN_PRIMARY)
    primary.set_offline(True)
    try:
        with pytest.raises(SourceUnavailable, match=r"source PRIMARY@127\.0\.0\.1:\d+ refused"):
            locate(ws, study_id, "primary")
        # Also for a study the source does not hold: down is never "not found".
        other_id = add_study(ws, IN_SECONDARY)
        with pytest.raises(SourceUnavailable):
            locate(ws, other_id, "primary")
    finally:
        primary.set_offline(False)
    assert ledger_row(ws, study_id).source is None
    assert locate(ws, study_id, "primary") == Located.FOUND


# -- ambiguity: several studies for one row, or one on another date ---------------------


def staged(ws: Workspace) -> list[Path]:
    return list(ws.staging.rglob("*.dcm")) if ws.staging.exists() else []


def assert_ambiguous(ws: Workspace, study_id: int, source: str, reason: str) -> None:
    """Ended ambiguous with a reason free of identifiers, nothing found or staged."""
    study = ledger_row(ws, study_id)
    assert study.status == StudyStatus.AMBIGUOUS
    assert study.error_type == "ambiguous"
    assert study.source == source and study.found_study_uid is None
    assert reason in study.last_error
    assert study.mrn not in study.last_error and study.accession_number not in study.last_error
    assert "1.2." not in study.last_error and "2.25." not in study.last_error  # no UID
    assert staged(ws) == []
    with ws.sessions() as session:  # final: no run picks it up again by itself
        assert study_id not in [i for i, _ in repo.studies_to_process(session, PROJECT.name)]


def test_two_studies_under_one_accession_are_ambiguous_by_default(ws: Workspace) -> None:
    study_id = add_study(ws, TWINS[0])
    begin(ws, study_id)
    assert locate(ws, study_id, "primary") == Located.AMBIGUOUS
    assert_ambiguous(
        ws, study_id, "primary", "2 studies match (dated 2024-03-05, 2024-03-05; the manifest"
    )
    assert "add the study_uid column" in ledger_row(ws, study_id).last_error


def test_date_match_cannot_choose_between_twins_on_the_same_date(ws: Workspace) -> None:
    study_id = add_study(ws, TWINS[0])
    assert locate(ws, study_id, "primary", policy="date_match") == Located.AMBIGUOUS
    assert_ambiguous(ws, study_id, "primary", "2 are on the manifest's date")


def test_twins_on_different_dates_are_ambiguous_under_none(ws: Workspace) -> None:
    study_id = add_study(ws, DATED_TWINS[0])
    assert locate(ws, study_id, "primary", policy="none") == Located.AMBIGUOUS
    assert_ambiguous(ws, study_id, "primary", "(dated 2024-03-05, 2024-03-06; the manifest")


def test_date_match_retrieves_the_twin_on_the_manifest_date(ws: Workspace) -> None:
    study_id = add_study(ws, DATED_TWINS[0])
    begin(ws, study_id)
    assert locate(ws, study_id, "primary", policy="date_match") == Located.FOUND
    wanted = DATED_TWINS[0][0].StudyInstanceUID
    assert ledger_row(ws, study_id).found_study_uid == wanted
    assert fetch(ws, study_id, "primary").received == 2
    received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in staged(ws)}
    assert received == {str(ds.SOPInstanceUID) for ds in DATED_TWINS[0]}


def test_one_study_on_another_date_is_ambiguous(ws: Workspace) -> None:
    study_id = add_study(ws, OFF_DATE)
    assert locate(ws, study_id, "primary") == Located.AMBIGUOUS
    assert_ambiguous(ws, study_id, "primary", "1 study matches (dated 2024-03-06; the manifest")
    assert locate(ws, study_id, "primary", policy="date_match") == Located.AMBIGUOUS
    assert_ambiguous(ws, study_id, "primary", "none is on the manifest's date")


def test_not_found_at_the_primary_then_ambiguous_at_the_secondary(ws: Workspace) -> None:
    study_id = add_study(ws, SECONDARY_TWINS[0])
    assert locate(ws, study_id, "primary") == Located.NOT_FOUND
    assert ledger_row(ws, study_id).status == StudyStatus.PENDING
    assert locate(ws, study_id, "secondary") == Located.AMBIGUOUS
    assert_ambiguous(ws, study_id, "secondary", "2 studies match")


def test_an_ambiguous_study_can_be_requeued_after_the_policy_changed(ws: Workspace) -> None:
    study_id = add_study(ws, DATED_TWINS[0])
    assert locate(ws, study_id, "primary") == Located.AMBIGUOUS
    with ws.sessions() as session:
        assert repo.requeue(session, PROJECT.name, StudyStatus.AMBIGUOUS) == 1
    assert locate(ws, study_id, "primary", policy="date_match") == Located.FOUND


def rows_of(ws: Workspace):
    with ws.sessions() as session:
        return session.query(Study).order_by(Study.id).all()


def test_all_retrieves_every_twin_each_as_its_own_row(ws: Workspace) -> None:
    study_id = add_study(ws, DATED_TWINS[0])
    assert locate(ws, study_id, "primary", policy="all") == Located.EXPANDED
    parent, *children = rows_of(ws)
    assert (parent.id, parent.status, parent.source) == (study_id, "expanded", "primary")
    assert (
        parent.last_error == "2 studies match; policy all retrieves each as its own row (2 added)"
    )
    assert {c.study_uid for c in children} == {t[0].StudyInstanceUID for t in DATED_TWINS}
    for child in children:
        assert (child.status, child.expanded_from, child.source_index) == ("pending", study_id, 0)
        assert (child.mrn, child.accession_number) == (parent.mrn, parent.accession_number)
        assert child.study_date == parent.study_date and child.ref != parent.ref
    with ws.sessions() as session:  # the children are the work now, the manifest row is not
        todo = [i for i, _ in repo.studies_to_process(session, PROJECT.name)]
    assert todo == [c.id for c in children]

    for child, twin in zip(children, DATED_TWINS, strict=True):
        begin(ws, child.id)
        assert locate(ws, child.id, "primary", policy="all") == Located.FOUND
        assert fetch(ws, child.id, "primary").received == len(twin)
        assert deidentify_and_export(ws, child.id, PROJECT, PSEUDONYMIZER, BASIC) == "exported"
    assert [r.status for r in rows_of(ws)] == ["expanded", "exported", "exported"]


def test_expanding_again_or_a_later_manifest_adds_no_second_row(ws: Workspace) -> None:
    study_id = add_study(ws, DATED_TWINS[0])
    assert locate(ws, study_id, "primary", policy="all") == Located.EXPANDED
    assert locate(ws, study_id, "primary", policy="all") == Located.EXPANDED  # a rerun
    assert "(0 added)" in ledger_row(ws, study_id).last_error
    first = DATED_TWINS[0][0]
    again = [
        ManifestRow(
            row=1,
            study_date=DATE,
            mrn=str(first.PatientID),
            accession_number=str(first.AccessionNumber),
        ),
        ManifestRow(row=2, study_date=NEXT_DAY, study_uid=str(DATED_TWINS[1][0].StudyInstanceUID)),
    ]
    with ws.sessions() as session:
        assert repo.ingest_manifest(session, PROJECT.name, again).added == 0
    assert len(rows_of(ws)) == 3


def test_a_study_uid_picks_one_of_the_twins(ws: Workspace) -> None:
    study_id = add_study(ws, TWINS[1], by_uid=True)
    assert locate(ws, study_id, "primary") == Located.FOUND
    assert ledger_row(ws, study_id).found_study_uid == TWINS[1][0].StudyInstanceUID


def test_move_to_a_destination_the_source_does_not_know(ws: Workspace) -> None:
    unknown = ws.site.model_copy(
        update={"receiver": ws.site.receiver.model_copy(update={"ae_title": "STRANGER"})}
    )
    stranger = Workspace(site=unknown, sessions=ws.sessions)
    study_id = add_study(stranger, IN_PRIMARY)
    assert locate(stranger, study_id, "primary") == Located.FOUND
    # Retriable: the same status means "cannot reach it" too; the reason says what to fix.
    with pytest.raises(RetriableError, match="does not know our receiver's AE title"):
        fetch(stranger, study_id, "primary")


def test_a_move_refused_because_another_process_receiver_ended_is_sent_again_at_once(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another worker process's receiver serves the port, and its flow run ends right
    # after this process found it answering: the source cannot reach it (0xA801).
    other = Receiver(ws.site.receiver, ws.staging, ws.peers).start()
    real_move = pipeline.move_study
    moves = []

    def move_after_the_other_stopped(*args: object, **kwargs: object) -> object:
        moves.append(args)
        if len(moves) == 1:
            other.stop()
        return real_move(*args, **kwargs)

    monkeypatch.setattr(pipeline, "move_study", move_after_the_other_stopped)
    study_id = add_study(ws, IN_PRIMARY)
    try:
        assert locate(ws, study_id, "primary") == Located.FOUND
        assert fetch(ws, study_id, "primary").received == 4  # not a retry delay away
    finally:
        other.stop()
    assert len(moves) == 2  # the second one into this process's own receiver


# -- de-identify and export ------------------------------------------------------------


def test_deidentify_and_export(ws: Workspace, site: SiteConfig) -> None:
    study_id = add_study(ws, IN_PRIMARY)
    begin(ws, study_id)
    assert locate(ws, study_id, "primary") == Located.FOUND
    fetch(ws, study_id, "primary")
    stages: list[str] = []

    def stage(name: str) -> contextlib.AbstractContextManager[None]:
        stages.append(name)
        return contextlib.nullcontext()

    assert deidentify_and_export(ws, study_id, PROJECT, PSEUDONYMIZER, BASIC, stage) == "exported"
    assert stages == ["de-identify", "export"]  # what the time-per-stage artifact times

    original = IN_PRIMARY[0]
    pseudo_patient = PSEUDONYMIZER.patient_id(str(original.PatientID))
    pseudo_study = PSEUDONYMIZER.uid(str(original.StudyInstanceUID))
    final = site.destinations["local"].path / PROJECT.name / pseudo_patient / pseudo_study
    files = sorted(final.glob("*.dcm"))
    assert len(files) == 4
    secrets = [
        str(original.PatientID).encode(),
        str(original.AccessionNumber).encode(),
        str(original.PatientName).encode(),
        PATIENTS[0].family_name.encode(),
        str(original.StudyInstanceUID).encode(),
    ]
    raw = BytesIO()
    pydicom.dcmwrite(raw, original, enforce_file_format=True)
    assert all(secret in raw.getvalue() for secret in secrets)  # the check can fail
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.PatientID == pseudo_patient
        assert str(ds.PatientName) == pseudo_patient
        assert ds.StudyInstanceUID == pseudo_study
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret!r} found in {path.name}"

    study = ledger_row(ws, study_id)
    assert study.status == StudyStatus.EXPORTED
    assert study.pseudo_patient_id == pseudo_patient
    assert study.pseudo_study_uid == pseudo_study
    assert study.exported_instances == 4
    assert study.exported_at is not None
    # Raw (identifiable) staging is gone, and so is the de-identification work folder.
    assert not storage.study_dir(ws.staging, PROJECT.name, str(original.StudyInstanceUID)).exists()
    assert not (ws.staging / "deid" / study.ref).exists()
    # A later run does not start the study again.
    assert begin(ws, study_id) is False
    with ws.sessions() as session:
        assert repo.studies_to_process(session, PROJECT.name) == []


def test_participant_id_is_the_patient_pseudonym(ws: Workspace, site: SiteConfig) -> None:
    study_id = ingest_study(ws.sessions, PROJECT.name, IN_SECONDARY, DATE, participant_id="P0042")
    assert locate(ws, study_id, "secondary") == Located.FOUND
    fetch(ws, study_id, "secondary")
    assert deidentify_and_export(ws, study_id, PROJECT, PSEUDONYMIZER, BASIC) == "exported"
    assert ledger_row(ws, study_id).exported_instances == 3
    folder = site.destinations["local"].path / PROJECT.name / "P0042"
    [study_folder] = list(folder.iterdir())
    assert all(pydicom.dcmread(p).PatientID == "P0042" for p in study_folder.glob("*.dcm"))


def test_a_study_whose_series_are_all_filtered_out_is_excluded(ws: Workspace) -> None:
    study_id = add_study(ws, IN_SECONDARY)
    assert locate(ws, study_id, "secondary") == Located.FOUND
    fetch(ws, study_id, "secondary")
    ct_only = PROJECT.model_copy(update={"modalities": ["CT"]})
    assert deidentify_and_export(ws, study_id, ct_only, PSEUDONYMIZER, BASIC) == "excluded"
    study = ledger_row(ws, study_id)
    assert study.status == StudyStatus.EXCLUDED
    assert study.last_error == "kept 0 of 1 series; dropped: 1 by modality"
    assert not (ws.staging / "deid" / study.ref).exists()
    assert not storage.study_dir(ws.staging, PROJECT.name, study.found_study_uid).exists()
    assert not (ws.site.destinations["local"].path / PROJECT.name).exists()


def test_the_phi_gate_quarantines_a_planted_leak(ws: Workspace, tmp_path: Path) -> None:
    """A profile that keeps a description holding the patient's name must not export."""
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("tags:\n  - {keyword: StudyDescription, op: keep}\n")
    profile = build_profile("basic", [], [leaky])
    study_id = add_study(ws, IN_PRIMARY)
    assert PATIENTS[0].family_name in str(IN_PRIMARY[0].StudyDescription)  # the plant
    assert locate(ws, study_id, "primary") == Located.FOUND
    fetch(ws, study_id, "primary")

    assert deidentify_and_export(ws, study_id, PROJECT, PSEUDONYMIZER, profile) == "quarantined"
    study = ledger_row(ws, study_id)
    assert study.status == StudyStatus.QUARANTINED
    assert "StudyDescription" in study.last_error
    assert study.error_type == "PHI gate"  # the reason Prefect's table counts by
    assert PATIENTS[0].family_name not in study.last_error  # paths, never values
    assert not (ws.site.destinations["local"].path / PROJECT.name).exists()
    assert not (ws.staging / "deid" / study.ref).exists()
    # The same study with the basic profile is clean and exported.
    begin(ws, study_id)
    fetch(ws, study_id, "primary")
    assert deidentify_and_export(ws, study_id, PROJECT, PSEUDONYMIZER, BASIC) == "exported"


def test_record_not_found(ws: Workspace) -> None:
    study_id = add_study(ws, IN_SECONDARY)
    assert locate(ws, study_id, "primary") == Located.NOT_FOUND
    record_not_found(ws, study_id)
    assert ledger_row(ws, study_id).status == StudyStatus.NOT_FOUND
    with ws.sessions() as session:
        assert repo.studies_to_process(session, PROJECT.name) == []


# -- unreachable sources ---------------------------------------------------------------


def test_find_studies_with_nothing_listening_is_unavailable_and_quick() -> None:
    source = SourceConfig(ae_title="GONE", host="127.0.0.1", port=free_port(), timeout=1)
    start = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"source GONE@127\.0\.0\.1:\d+ refused or did not"):
        find_studies(source, "PACSFLOW", StudyQuery(mrn="MRN1", accession_number="ACC1"))
    assert time.monotonic() - start < 3


def test_find_studies_with_a_silent_peer_times_out() -> None:
    # The port accepts TCP connections (kernel backlog) but never speaks DICOM.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        source = SourceConfig(ae_title="MUTE", host="127.0.0.1", port=port, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(SourceUnavailable, match="refused or did not answer"):
            find_studies(source, "PACSFLOW", StudyQuery(study_uid="1.2.3"))
        assert time.monotonic() - start < 3


# -- corrupt data from a source --------------------------------------------------------


def _process(ws: Workspace, study_id: int, source: str) -> None:
    """What a lane does with one study: run its steps, and record a failure as lanes do."""
    step = "fetch"
    try:
        begin(ws, study_id)
        assert locate(ws, study_id, source) == Located.FOUND
        fetch(ws, study_id, source)
        step = "de-identify and export"
        deidentify_and_export(ws, study_id, PROJECT, PSEUDONYMIZER, BASIC)
    except Exception as exc:
        with ws.sessions() as session:
            failures.record(session, study_id, ws.owner, failures.describe(step, exc), 1, [])


#: A study's accession number, where the source's copy of its second instance ends, and
#: what the study's reason then says (each case a study of its own: the secondary is shared).
CUTS = {
    "in the pixel data": (
        "ACC2101",
        lambda data: len(data) - 20_000,
        r"pixel data of [\d,]+ bytes where its image attributes need 32,768 bytes",
    ),
    "before the pixel data": (
        "ACC2102",
        lambda data: data.rindex(b"\xe0\x7f\x10\x00"),  # the (7FE0,0010) tag
        r"no pixel data, though its image attributes \(Rows, Columns\) say it is an image",
    ),
}


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
def test_a_truncated_instance_fails_its_study_alone_with_the_reason(
    ws: Workspace,
    site: SiteConfig,
    secondary: SandboxPacs,
    tmp_path: Path,
    cut: tuple[str, Callable[[bytes], int], str],
) -> None:
    accession, end, reason = cut
    study = study_of(PATIENTS[1], accession, "CT", n_series=1, n_instances=2)
    files = []
    for ds in study:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: end(data)])  # a file the source stored cut short
    secondary.add_files(files)
    broken = add_study(ws, study)
    good = add_study(ws, IN_SECONDARY)

    _process(ws, broken, "secondary")
    _process(ws, good, "secondary")

    row = ledger_row(ws, broken)
    assert row.status == StudyStatus.FAILED, row.last_error
    assert row.error_type == "source_rejected"
    assert re.fullmatch(
        rf"CorruptInstance: instance [12] of 2 from secondary is not whole: {reason}; .*",
        row.last_error,
    ), row.last_error
    # Nothing of it reached the destination or stays in staging; the other study exported.
    exported = site.destinations["local"].path / PROJECT.name
    pseudo_patient = PSEUDONYMIZER.patient_id(str(study[0].PatientID))
    pseudo_study = PSEUDONYMIZER.uid(str(study[0].StudyInstanceUID))
    assert not (exported / pseudo_patient / pseudo_study).exists()
    assert not storage.study_dir(ws.staging, PROJECT.name, row.found_study_uid).exists()
    assert not (ws.staging / "deid" / row.ref).exists()
    assert ledger_row(ws, good).status == StudyStatus.EXPORTED
    assert ledger_row(ws, good).exported_instances == 3
