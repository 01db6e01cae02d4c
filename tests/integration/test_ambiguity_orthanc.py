"""Ambiguity against a real Orthanc: one manifest row, two studies under its MRN and
accession number (as after a merge of two patients' records, or a re-used accession).

The sandbox tests cover the policies in detail; this one checks that Orthanc's own C-FIND
answers lead to the same decisions: by default the row ends ``ambiguous`` and nothing is
retrieved; with ``date_match`` (and a requeue) only the study on the manifest's date is
exported.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study, StudyStatus
from pacsflow.sandbox.synthetic import make_patients, study_of, write_study
from tests.orthanc_sites import filesystem_site, orthanc_source, write_manifest, write_project
from tests.servers import free_port

pytestmark = pytest.mark.integration

PROJECT = "twins"
ON_DATE, OTHER_DATE = dt.date(2022, 5, 3), dt.date(2022, 5, 9)


@pytest.fixture
def twins(orthanc_factory, ledger_url, tmp_path):
    """An Orthanc holding two studies under one MRN and accession (one on the manifest's
    date, with 2 instances; one a week later, with 4), a site, a project and a manifest."""
    receiver_port = free_port()
    pacs = orthanc_factory("PRIMARY", {"pacsflow": ("PACSFLOW", "127.0.0.1", receiver_port)})
    patient = make_patients(1, seed=11)[0]
    studies = {}
    for study_date, n_instances in ((ON_DATE, 2), (OTHER_DATE, 4)):
        datasets = study_of(
            patient,
            accession="ACC-TWIN-1",
            study_date=study_date,
            modality="CT",
            n_series=1,
            n_instances=n_instances,
            seed=study_date.day,
        )
        files = write_study(datasets, tmp_path / "seed" / study_date.isoformat())
        assert pacs.upload(files) == len(files)
        studies[study_date] = str(datasets[0].StudyInstanceUID)
    assert len(set(studies.values())) == 2, "two distinct studies"

    source = orthanc_source(pacs, max_concurrent=2, timeout=20)
    site = filesystem_site(tmp_path, ledger_url, receiver_port, {"primary": source})
    project_file = write_project(tmp_path, PROJECT, ["primary"])
    row = {"mrn": patient.mrn, "accession_number": "ACC-TWIN-1", "study_date": str(ON_DATE)}
    manifest = write_manifest(tmp_path, [row])
    yield site, project_file, manifest, studies, tmp_path
    from pacsflow.dicom.receiver import stop_process_receiver

    stop_process_receiver()


def _exported_files(root: Path) -> list[Path]:
    return sorted((root / PROJECT).rglob("*.dcm"))


def test_orthanc_twins_are_ambiguous_by_default_and_date_match_takes_the_one_on_the_date(
    twins, prefect_api
):
    from blocks.site import save_site
    from flows.extract import extract_project

    site, project_file, manifest, studies, tmp = twins
    save_site(site)
    run = {"project": str(project_file), "manifest": str(manifest)}

    first = extract_project(**run, return_state=True)
    assert first.is_completed(), first.message
    assert first.result()["ambiguous"] == 1 and first.result()["exported"] == 0
    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        (row,) = session.query(Study).filter(Study.project == PROJECT).all()
        assert (row.status, row.source, row.error_type) == ("ambiguous", "primary", "ambiguous")
        assert row.last_error.startswith(f"2 studies match (dated {ON_DATE}, {OTHER_DATE};")
        assert row.found_study_uid is None
    assert not _exported_files(tmp / "export"), "nothing is exported while ambiguous"
    staged = [p for p in (tmp / "staging").rglob("*") if p.is_file()]
    assert not staged, "nothing is retrieved while ambiguous"

    write_project(tmp, PROJECT, ["primary"], ambiguity="date_match")
    with sessions() as session:
        assert repo.requeue(session, PROJECT, StudyStatus.AMBIGUOUS) == 1
    second = extract_project(**run, return_state=True)
    assert second.is_completed(), second.message
    assert second.result()["exported"] == 1 and second.result()["ambiguous"] == 0
    with sessions() as session:
        (row,) = session.query(Study).filter(Study.project == PROJECT).all()
        assert row.status == "exported"
        assert row.found_study_uid == studies[ON_DATE]
        assert row.exported_instances == 2  # the study on the date, not the 4-instance one
    assert len(_exported_files(tmp / "export")) == 2
