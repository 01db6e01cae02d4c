"""Completeness against dcmtk's dcmqrscp, a source without NumberOfStudyRelatedInstances.

Its study-level C-FIND answers carry no count (field notes), so the expected count must
come from the study's instance list (SERIES- then IMAGE-level C-FIND, hierarchical, as
dcmqrscp requires), and a study left incomplete must be completed by IMAGE-level C-GET.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from pacsflow.config import (
    FilesystemDestinationConfig,
    ReceiverConfig,
    RetrieveMethod,
    SiteConfig,
    SourceConfig,
)
from pacsflow.dicom import storage
from pacsflow.dicom.association import SourceAssociation
from pacsflow.dicom.query import StudyQuery, find_studies
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.manifest import ManifestRow
from pacsflow.pipeline import Located, Workspace, fetch, locate
from pacsflow.sandbox.synthetic import make_patients, write_study
from tests.integration.conftest import require_dcmtk
from tests.servers import free_port
from tests.unit.test_pipeline import DATE, study_of

pytestmark = pytest.mark.integration

[PATIENT] = make_patients(1, seed=12)
FIVE = study_of(PATIENT, "ACC9101", "CT", n_series=2, n_instances=3)[:5]  # 3 + 2
STUDY_UID = str(FIVE[0].StudyInstanceUID)


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
    """dcmqrscp (fork mode: --single-process crashes after one association) holding FIVE."""
    binary = require_dcmtk("dcmqrscp")
    index = require_dcmtk("dcmqridx")
    store = tmp_path / "dcmqr"
    store.mkdir()
    files = write_study(FIVE, tmp_path / "seed")
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
    [match] = find_studies(dcmqrscp, "PACSFLOW", StudyQuery(study_uid=STUDY_UID))
    assert match.instances is None  # the premise: dcmqrscp does not count

    site = SiteConfig(
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        receiver=ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=free_port()),
        staging=tmp_path / "staging",
        sources={"dcmqr": dcmqrscp},
        destinations={"local": FilesystemDestinationConfig(path=tmp_path / "export")},
    )
    engine = make_engine(site.ledger)
    migrate(engine)
    ws = Workspace(site=site, sessions=session_factory(engine))
    first = FIVE[0]
    row = ManifestRow(row=1, study_date=DATE, mrn=str(first.PatientID), accession_number="ACC9101")
    with ws.sessions() as session:
        repo.ingest_manifest(session, "dcmqr", [row])
        [(study_id, _ref)] = repo.studies_to_process(session, "dcmqr")
    with SourceAssociation(dcmqrscp, ws.calling_ae) as association:
        assert locate(ws, study_id, "dcmqr", association) == Located.FOUND
        with ws.sessions() as session:
            study = repo.get_study(session, study_id)
        assert study.expected_instances == 5
        folder = ws.raw_dir(study)
        folder.mkdir(parents=True)
        for ds in FIVE[:2]:  # two of the first series arrived before the cut
            ds.save_as(folder / storage.instance_file_name(str(ds.SOPInstanceUID)))

        fetched = fetch(ws, study_id, "dcmqr", association)

    assert (fetched.received, fetched.expected, fetched.refetches) == (5, 5, 2)  # 2 series
    held = {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.glob("*.dcm")}
    assert held == {str(ds.SOPInstanceUID) for ds in FIVE}
    engine.dispose()
