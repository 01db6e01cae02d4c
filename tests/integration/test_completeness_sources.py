"""What completeness needs from real sources, asked of Orthanc and of dcmtk's dcmqrscp:
NumberOfStudyRelatedInstances in a study-level C-FIND answer (Orthanc gives it, dcmqrscp
does not), SERIES- and IMAGE-level C-FINDs listing a study's instances, and IMAGE-level
C-MOVE and C-GET of some of them by SOP Instance UID.

The pipeline's own functions do the asking (no Prefect; a SQLite ledger is enough here):
a located study gets the source's count, or its list's, and a study of which a killed
run left some instances in staging is completed with the missing ones only.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from pacsflow.config import (
    FilesystemDestinationConfig,
    ReceiverConfig,
    RetrieveMethod,
    SiteConfig,
    SourceConfig,
)
from pacsflow.dicom import storage
from pacsflow.dicom.association import SourceAssociation
from pacsflow.dicom.query import StudyQuery, find_instances, find_studies
from pacsflow.dicom.receiver import stop_process_receiver
from pacsflow.dicom.retrieve import get_instances
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.pipeline import Fetched, Located, Workspace, fetch, locate
from pacsflow.sandbox.synthetic import make_patients, write_study
from tests.integration.conftest import require_dcmtk
from tests.ledger_rows import ingest_study
from tests.servers import free_port
from tests.unit.test_pipeline import study_of

pytestmark = pytest.mark.integration

[PATIENT] = make_patients(1, seed=11)
DATE = dt.date(2022, 6, 1)
FIVE = study_of(PATIENT, "ACC9001", "CT", DATE, n_series=1, n_instances=5)
STUDY_UID = str(FIVE[0].StudyInstanceUID)
SERIES_UID = str(FIVE[0].SeriesInstanceUID)
ALL_UIDS = {str(ds.SOPInstanceUID) for ds in FIVE}
#: 3 + 2 instances in two series (dcmqrscp's test study).
TWO_SERIES = study_of(PATIENT, "ACC9101", "CT", DATE, n_series=2, n_instances=3)[:5]
TWO_SERIES_UID = str(TWO_SERIES[0].StudyInstanceUID)


@pytest.fixture
def site(orthanc_factory, tmp_path: Path):
    receiver_port = free_port()
    orthanc = orthanc_factory("ORTHANC", {"pacsflow": ("PACSFLOW", "127.0.0.1", receiver_port)})
    assert orthanc.upload(write_study(FIVE, tmp_path / "seed")) == 5
    sources = {
        method.value: SourceConfig(
            ae_title="ORTHANC",
            host="127.0.0.1",
            port=orthanc.dicom_port,
            retrieve=method,
            timeout=20,
        )
        for method in RetrieveMethod
    }
    yield SiteConfig(
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        receiver=ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=receiver_port),
        staging=tmp_path / "staging",
        sources=sources,
        destinations={"local": FilesystemDestinationConfig(path=tmp_path / "export")},
    )
    stop_process_receiver()


def staged(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.glob("*.dcm")}


def test_orthanc_counts_and_lists_a_studys_instances(site: SiteConfig) -> None:
    source = site.sources["move"]
    [match] = find_studies(source, "PACSFLOW", StudyQuery(study_uid=STUDY_UID))
    assert match.instances == 5  # NumberOfStudyRelatedInstances
    listed = find_instances(source, "PACSFLOW", STUDY_UID)
    assert {i.sop_uid for i in listed} == ALL_UIDS
    assert {i.series_uid for i in listed} == {SERIES_UID}


def test_orthanc_sends_chosen_instances_by_image_level_c_get(
    site: SiteConfig, tmp_path: Path
) -> None:
    wanted = sorted(ALL_UIDS)[:2]
    folder = tmp_path / "got"
    with SourceAssociation(site.sources["get"], "PACSFLOW") as association:
        outcome = get_instances(
            site.sources["get"], "PACSFLOW", STUDY_UID, SERIES_UID, wanted, folder, association
        )
    assert (outcome.completed, outcome.failed) == (2, 0)
    assert staged(folder) == set(wanted)


def complete_after_a_cut(
    site: SiteConfig, source: str, study: list[Dataset], kept: int
) -> tuple[Fetched, Path, int | None]:
    """Locate ``study`` at ``source``, stage its first ``kept`` instances as a killed run
    would have left them, and fetch: (what fetch says, the folder, the expected count)."""
    engine = make_engine(site.ledger)
    migrate(engine)
    ws = Workspace(site=site, sessions=session_factory(engine))
    study_id = ingest_study(ws.sessions, "complete", study, DATE)
    with SourceAssociation(site.sources[source], ws.calling_ae) as association:
        assert locate(ws, study_id, source, association) == Located.FOUND
        with ws.sessions() as session:
            located = repo.get_study(session, study_id)
        folder = ws.raw_dir(located)
        folder.mkdir(parents=True)
        for ds in study[:kept]:
            ds.save_as(folder / storage.instance_file_name(str(ds.SOPInstanceUID)))
        fetched = fetch(ws, study_id, source, association)
    engine.dispose()
    return fetched, folder, located.expected_instances


@pytest.mark.parametrize("source", ["move", "get"])
def test_a_study_left_incomplete_is_completed_with_the_missing_instances(
    site: SiteConfig, source: str
) -> None:
    fetched, folder, expected = complete_after_a_cut(site, source, FIVE, kept=3)

    assert expected == 5
    assert (fetched.received, fetched.expected, fetched.refetches) == (5, 5, 1)
    assert staged(folder) == ALL_UIDS


# -- dcmqrscp: no NumberOfStudyRelatedInstances ------------------------------------------


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dcmqrscp exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"dcmqrscp did not listen on port {port} within {timeout} s")


@pytest.fixture
def dcmqrscp(tmp_path: Path):
    """dcmqrscp (fork mode: --single-process crashes after one association) holding
    TWO_SERIES."""
    binary = require_dcmtk("dcmqrscp")
    index = require_dcmtk("dcmqridx")
    store = tmp_path / "dcmqr"
    store.mkdir()
    files = write_study(TWO_SERIES, tmp_path / "seed")
    subprocess.run([index, str(store), *map(str, files)], check=True, capture_output=True)
    port = free_port()
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {store} R (200, 1024mb) ANY\nAETable END\n"
    )
    log = (tmp_path / "dcmqrscp.log").open("wb")
    process = subprocess.Popen(
        [binary, "-c", str(config), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"TCP_NODELAY": "1"},
    )
    try:
        _wait_for_port(port, process)
        yield SourceConfig(
            ae_title="DCMQR", host="127.0.0.1", port=port, retrieve=RetrieveMethod.GET, timeout=20
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_dcmqrscp_gives_no_count_so_the_list_does_and_a_gap_is_filled(
    dcmqrscp: SourceConfig, tmp_path: Path
) -> None:
    [match] = find_studies(dcmqrscp, "PACSFLOW", StudyQuery(study_uid=TWO_SERIES_UID))
    assert match.instances is None  # the premise: dcmqrscp does not count
    site = SiteConfig(
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        receiver=ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=free_port()),
        staging=tmp_path / "staging",
        sources={"dcmqr": dcmqrscp},
        destinations={"local": FilesystemDestinationConfig(path=tmp_path / "export")},
    )

    # Two of the first series arrived before the cut: both series miss some.
    fetched, folder, expected = complete_after_a_cut(site, "dcmqr", TWO_SERIES, kept=2)

    assert expected == 5  # the hierarchical list's count
    assert (fetched.received, fetched.expected, fetched.refetches) == (5, 5, 2)  # per series
    assert staged(folder) == {str(ds.SOPInstanceUID) for ds in TWO_SERIES}
