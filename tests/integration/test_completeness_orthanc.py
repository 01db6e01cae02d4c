"""What completeness needs from a real PACS, asked of Orthanc: NumberOfStudyRelatedInstances
in a study-level C-FIND answer, an IMAGE-level C-FIND listing a study's instances, and
IMAGE-level C-MOVE and C-GET of some of them by SOP Instance UID.

The pipeline's own functions do the asking (no Prefect; a SQLite ledger is enough here):
a study located at Orthanc gets Orthanc's count, and a study of which a killed run left 3
of 5 instances in staging is completed with the 2 missing ones only.
"""

from __future__ import annotations

import datetime as dt
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
from pacsflow.dicom.query import StudyQuery, find_instances, find_studies
from pacsflow.dicom.receiver import stop_process_receiver
from pacsflow.dicom.retrieve import get_instances
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.manifest import ManifestRow
from pacsflow.pipeline import Located, Workspace, fetch, locate
from pacsflow.sandbox.synthetic import make_patients, write_study
from tests.servers import free_port
from tests.unit.test_pipeline import study_of

pytestmark = pytest.mark.integration

[PATIENT] = make_patients(1, seed=11)
DATE = dt.date(2022, 6, 1)
FIVE = study_of(PATIENT, "ACC9001", "CT", DATE, n_series=1, n_instances=5)
STUDY_UID = str(FIVE[0].StudyInstanceUID)
SERIES_UID = str(FIVE[0].SeriesInstanceUID)
ALL_UIDS = {str(ds.SOPInstanceUID) for ds in FIVE}


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


@pytest.mark.parametrize("source", ["move", "get"])
def test_a_study_left_incomplete_is_completed_with_the_missing_instances(
    site: SiteConfig, source: str
) -> None:
    engine = make_engine(site.ledger)
    migrate(engine)
    ws = Workspace(site=site, sessions=session_factory(engine))
    row = ManifestRow(row=1, study_date=DATE, mrn=PATIENT.mrn, accession_number="ACC9001")
    with ws.sessions() as session:
        repo.ingest_manifest(session, "orthanc", [row])
        [(study_id, _ref)] = repo.studies_to_process(session, "orthanc")
    with SourceAssociation(site.sources[source], ws.calling_ae) as association:
        assert locate(ws, study_id, source, association) == Located.FOUND
        with ws.sessions() as session:
            study = repo.get_study(session, study_id)
        assert study.expected_instances == 5
        folder = ws.raw_dir(study)
        folder.mkdir(parents=True)
        for ds in FIVE[:3]:  # what a killed run had received
            ds.save_as(folder / storage.instance_file_name(str(ds.SOPInstanceUID)))

        fetched = fetch(ws, study_id, source, association)

    assert (fetched.received, fetched.expected, fetched.refetches) == (5, 5, 1)
    assert staged(folder) == ALL_UIDS
    engine.dispose()
