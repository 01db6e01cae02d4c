"""Completeness: a study is exported whole, or ends ``partial`` with both counts.

Against a real (in-process) sandbox PACS that loses instances on the way
(:meth:`SandboxPacs.drop_instances`) or does not say how many a study holds. What is
asserted is what a user would check: the PACS's own record of the requests it served
(a re-fetch is an IMAGE-level retrieval of the missing instances only), the ledger's
status and counts, and what reached the destination. No Prefect here: these are the
plain functions the lanes call.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from sqlalchemy import Engine

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
from pacsflow.dicom.association import SourceAssociation
from pacsflow.dicom.receiver import stop_process_receiver
from pacsflow.errors import RetriableError
from pacsflow.ledger import StudyStatus, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.pipeline import Located, Workspace, begin, deidentify_and_export, fetch, locate
from pacsflow.sandbox import SandboxPacs, make_patients
from pacsflow.sandbox.activity import Operation, OperationKind
from tests.ledger_rows import ingest_study
from tests.unit.test_pipeline import study_of  # a sandbox study of one fake patient

PSEUDONYMIZER = Pseudonymizer(bytes(range(32)))
BASIC = build_profile("basic")
DATE = dt.date(2024, 3, 5)  # study_of's date
[PATIENT, OTHER] = make_patients(2, seed=33)


#: One series of five instances, in the PACS's (insertion) order.
FIVE = study_of(PATIENT, "ACC3001", "CT", n_series=1, n_instances=5)
#: Two series of three instances.
SIX = study_of(OTHER, "ACC3002", "CT", n_series=2, n_instances=3)
RETRIES = [0.0, 0.0, 0.0]  # the source's retry count is len(retry_delays): three re-fetches


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def module_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxPacs]:
    server = SandboxPacs("LOSSY", 0, tmp_path_factory.mktemp("lossy"), timeout=5)
    server.add_datasets(FIVE)
    server.add_datasets(SIX)
    with server:
        yield server


@pytest.fixture
def pacs(module_pacs: SandboxPacs) -> Iterator[SandboxPacs]:
    """The module's PACS, sending everything and counting again after each test."""
    yield module_pacs
    module_pacs.drop_instances(0, 0)
    module_pacs.announce_instance_counts = True


@pytest.fixture(scope="module")
def receiver_port(module_pacs: SandboxPacs) -> int:
    port = free_port()
    module_pacs.add_destination("PACSFLOW", "127.0.0.1", port)
    return port


@pytest.fixture
def ws(tmp_path: Path, pacs: SandboxPacs, receiver_port: int) -> Iterator[Workspace]:
    host, port = pacs.address
    sources = {
        method.value: SourceConfig(
            ae_title=pacs.ae_title,
            host=host,
            port=port,
            retrieve=method,
            timeout=5,
            retry_delays=RETRIES,
        )
        for method in RetrieveMethod
    }
    site = SiteConfig(
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        receiver=ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=receiver_port),
        staging=tmp_path / "staging",
        sources=sources,
        destinations={"local": FilesystemDestinationConfig(path=tmp_path / "export")},
    )
    engine: Engine = make_engine(site.ledger)
    migrate(engine)
    yield Workspace(site=site, sessions=session_factory(engine))
    engine.dispose()
    stop_process_receiver()


@pytest.fixture
def lane(ws: Workspace) -> Iterator[dict[str, SourceAssociation]]:
    """One association per source, reused for every request as a lane does (a C-GET
    association negotiates 120 storage contexts: opening one per request is slow)."""
    opened = {
        name: SourceAssociation(source, ws.calling_ae) for name, source in ws.site.sources.items()
    }
    yield opened
    for association in opened.values():
        association.close()


def project(source: str, allow_partial: bool = False) -> ProjectConfig:
    return ProjectConfig(
        name="complete", sources=[source], destination="local", allow_partial=allow_partial
    )


def located(
    ws: Workspace, study: list[Dataset], source: str, lane: dict[str, SourceAssociation]
) -> int:
    """A ledger row for the study, begun and located at ``source``."""
    study_id = ingest_study(ws.sessions, "complete", study, DATE)
    assert begin(ws, study_id)
    assert locate(ws, study_id, source, lane[source]) == Located.FOUND
    return study_id


def ledger_row(ws: Workspace, study_id: int):
    with ws.sessions() as session:
        return repo.get_study(session, study_id)


def served_since(pacs: SandboxPacs, mark: int) -> list[Operation]:
    return pacs.activity[mark:]


def retrievals(ops: list[Operation]) -> list[tuple[str, int]]:
    """(level, instances sent) of each C-MOVE or C-GET, in order."""
    return [(op.level, op.instances) for op in ops if op.kind != OperationKind.FIND]


def staged_uids(ws: Workspace, study: list[Dataset]) -> set[str]:
    folder = storage.study_dir(ws.staging, "complete", str(study[0].StudyInstanceUID))
    return {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.glob("*.dcm")}


def exported_files(ws: Workspace) -> list[Path]:
    root = ws.site.destinations["local"].path / "complete"
    return [p for p in root.rglob("*.dcm") if ".partial" not in p.parts] if root.exists() else []


@pytest.mark.parametrize("source", ["move", "get"])
def test_two_lost_instances_are_fetched_again_by_uid(
    ws: Workspace, pacs: SandboxPacs, lane: dict[str, SourceAssociation], source: str
) -> None:
    study_id = located(ws, FIVE, source, lane)
    assert ledger_row(ws, study_id).expected_instances == 5  # NumberOfStudyRelatedInstances
    pacs.drop_instances(2, requests=1)  # the first transfer loses instances 1 and 2
    mark = len(pacs.activity)

    fetched = fetch(ws, study_id, source, lane[source])

    assert (fetched.received, fetched.expected, fetched.refetches) == (5, 5, 1)
    assert fetched.complete and fetched.exportable
    ops = served_since(pacs, mark)
    # The PACS's own record: the study once (3 arrived), then the 2 missing by their UIDs.
    assert retrievals(ops) == [("STUDY", 3), ("IMAGE", 2)]
    assert [op.level for op in ops if op.kind == OperationKind.FIND] == ["SERIES", "IMAGE"]
    assert staged_uids(ws, FIVE) == {str(ds.SOPInstanceUID) for ds in FIVE}
    row = ledger_row(ws, study_id)
    assert (row.expected_instances, row.received_instances) == (5, 5)
    assert deidentify_and_export(ws, study_id, project(source), PSEUDONYMIZER, BASIC) == "exported"
    assert len(exported_files(ws)) == 5
    assert ledger_row(ws, study_id).error_type is None


def test_missing_instances_of_two_series_take_one_request_per_series(
    ws: Workspace, pacs: SandboxPacs, lane: dict[str, SourceAssociation]
) -> None:
    study_id = located(ws, SIX, "move", lane)
    pacs.drop_instances(4, requests=1)  # all 3 of the first series and 1 of the second
    mark = len(pacs.activity)

    assert fetch(ws, study_id, "move", lane["move"]).received == 6

    assert sorted(retrievals(served_since(pacs, mark))) == [
        ("IMAGE", 1),
        ("IMAGE", 3),
        ("STUDY", 2),
    ]


def test_a_source_that_never_sends_one_instance_ends_partial(
    ws: Workspace, pacs: SandboxPacs, lane: dict[str, SourceAssociation]
) -> None:
    study_id = located(ws, FIVE, "move", lane)
    pacs.drop_instances(1, requests=100)  # the first instance never comes, however asked
    mark = len(pacs.activity)

    fetched = fetch(ws, study_id, "move", lane["move"])

    assert (fetched.received, fetched.expected, fetched.exportable) == (4, 5, False)
    # One study-level transfer, then the source's three retries, each of the one missing.
    assert retrievals(served_since(pacs, mark)) == [("STUDY", 4)] + [("IMAGE", 0)] * 3
    row = ledger_row(ws, study_id)
    assert (row.status, row.error_type) == (StudyStatus.PARTIAL, "partial")
    assert (row.expected_instances, row.received_instances) == (5, 4)
    assert row.last_error == (
        "received 4 of 5 instances from move, after 3 IMAGE-level re-fetches of the missing "
        "ones; once the source holds them, `pacsflow requeue --status partial`, or set "
        "allow_partial: true in the project to export what arrives"
    )
    assert row.claimed_by is None  # final: no worker holds it
    assert staged_uids(ws, FIVE) == set()  # raw (identifiable) staging is cleared
    assert exported_files(ws) == []
    with ws.sessions() as session:  # not picked up again by itself, but requeueable
        assert repo.studies_to_process(session, "complete") == []
        assert repo.requeue(session, "complete", StudyStatus.PARTIAL) == 1


def test_allow_partial_exports_what_arrived_and_says_so(
    ws: Workspace, pacs: SandboxPacs, lane: dict[str, SourceAssociation]
) -> None:
    study_id = located(ws, FIVE, "get", lane)
    pacs.drop_instances(1, requests=100)

    fetched = fetch(ws, study_id, "get", lane["get"], allow_partial=True)

    assert (fetched.received, fetched.expected, fetched.exportable) == (4, 5, True)
    status = deidentify_and_export(ws, study_id, project("get", True), PSEUDONYMIZER, BASIC)
    assert status == "exported"
    files = exported_files(ws)
    assert len(files) == 4
    lost = PSEUDONYMIZER.uid(str(FIVE[0].SOPInstanceUID))
    assert lost not in {str(pydicom.dcmread(p).SOPInstanceUID) for p in files}
    row = ledger_row(ws, study_id)
    assert (row.status, row.error_type) == (StudyStatus.EXPORTED, "partial")
    assert (row.expected_instances, row.received_instances, row.exported_instances) == (5, 4, 4)
    assert "received 4 of 5 instances" in row.last_error
    with ws.sessions() as session:
        assert repo.partially_exported(session, "complete") == [(study_id, row.last_error)]


def test_without_a_count_from_the_source_its_image_level_list_is_the_count(
    ws: Workspace, pacs: SandboxPacs, lane: dict[str, SourceAssociation]
) -> None:
    pacs.announce_instance_counts = False  # as dcmqrscp: no NumberOfStudyRelatedInstances
    mark = len(pacs.activity)

    study_id = located(ws, FIVE, "move", lane)

    finds = [op for op in served_since(pacs, mark) if op.kind == OperationKind.FIND]
    assert [(op.level, op.instances) for op in finds] == [("STUDY", 1), ("SERIES", 1), ("IMAGE", 5)]
    assert ledger_row(ws, study_id).expected_instances == 5
    pacs.drop_instances(2, requests=1)  # and the count it gave is what fetch must reach
    assert fetch(ws, study_id, "move", lane["move"]).received == 5


def test_instances_a_cut_off_try_received_are_kept(
    ws: Workspace, pacs: SandboxPacs, lane: dict[str, SourceAssociation]
) -> None:
    """A killed run (or a try that ended in an error) left 3 of 5: only 2 are asked for."""
    study_id = located(ws, FIVE, "get", lane)
    folder = ws.raw_dir(ledger_row(ws, study_id))
    folder.mkdir(parents=True)
    for ds in FIVE[:3]:
        ds.save_as(folder / storage.instance_file_name(str(ds.SOPInstanceUID)))
    (folder / ".half-written.part").write_bytes(b"DICM")  # a write the kill cut off
    mark = len(pacs.activity)

    assert fetch(ws, study_id, "get", lane["get"]).received == 5

    assert retrievals(served_since(pacs, mark)) == [("IMAGE", 2)]
    assert staged_uids(ws, FIVE) == {str(ds.SOPInstanceUID) for ds in FIVE}


def test_nothing_received_is_retried_later_not_partial(
    ws: Workspace, pacs: SandboxPacs, lane: dict[str, SourceAssociation]
) -> None:
    study_id = located(ws, FIVE, "move", lane)
    pacs.drop_instances(5, requests=100)
    with pytest.raises(RetriableError, match="received 0 of 5 instances from move"):
        fetch(ws, study_id, "move", lane["move"])
    assert ledger_row(ws, study_id).status == StudyStatus.RETRIEVING
