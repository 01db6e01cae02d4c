"""End to end: extract_project against two real Orthanc PACS and a real Prefect server.

Studies only in the primary, only in the secondary, in both (the primary must win) and
in neither. Checks what a project lead and a data-protection officer would check: the
exported files and their tags, the ledger, that a second run does nothing, and that no
identifier reached Prefect.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pydicom
import pytest

from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger.models import Study
from pacsflow.sandbox.synthetic import make_patients, study_of, write_study
from tests.orthanc_sites import filesystem_site, orthanc_source, write_manifest, write_project
from tests.prefect_records import flush_to_server, run_tree
from tests.servers import free_port

pytestmark = pytest.mark.integration

PROJECT = "lung-ct"
TEXT_VRS = {
    "AE",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UT",
}


@pytest.fixture
def scenario(orthanc_factory, ledger_url, tmp_path):
    """Two seeded Orthancs, a PostgreSQL ledger, a site config, a project and a manifest."""
    receiver_port = free_port()
    known = {"pacsflow": ("PACSFLOW", "127.0.0.1", receiver_port)}
    primary = orthanc_factory("PRIMARY", known)
    secondary = orthanc_factory("SECONDARY", known)

    patients = make_patients(5, seed=7)
    placement = ["primary", "primary", "secondary", "both", "neither"]
    rows, studies = [], {}
    for number, (patient, place) in enumerate(zip(patients, placement, strict=True)):
        accession = f"ACC{number:05d}"
        datasets = study_of(
            patient,
            accession=accession,
            study_date=dt.date(2021, 3, number + 1),
            modality="CT",
            n_series=2,
            n_instances=2,
            seed=7,
        )
        files = write_study(datasets, tmp_path / "seed" / accession)
        if place in ("primary", "both"):
            assert primary.upload(files) == len(files)
        if place in ("secondary", "both"):
            assert secondary.upload(files) == len(files)
        rows.append(
            {
                "mrn": patient.mrn,
                "accession_number": accession,
                "study_date": f"2021-03-{number + 1:02d}",
            }
        )
        studies[accession] = {"patient": patient, "place": place, "datasets": datasets}

    sources = {
        "primary": orthanc_source(primary, max_concurrent=3, timeout=20),
        "secondary": orthanc_source(secondary, retrieve="get", max_concurrent=1, timeout=20),
    }
    site = filesystem_site(tmp_path, ledger_url, receiver_port, sources)
    project_file = write_project(tmp_path, PROJECT, ["primary", "secondary"])
    manifest = write_manifest(tmp_path, rows)
    yield {
        "site": site,
        "project_file": project_file,
        "manifest": manifest,
        "studies": studies,
        "tmp": tmp_path,
    }
    from pacsflow.dicom.receiver import stop_process_receiver

    stop_process_receiver()


def _identifiers(studies: dict) -> list[str]:
    values = []
    for accession, info in studies.items():
        patient = info["patient"]
        values += [
            accession,
            patient.mrn,
            *patient.name.split("^"),
            patient.birth_date.strftime("%Y%m%d"),
        ]
        values += [str(ds.StudyInstanceUID) for ds in info["datasets"][:1]]
        values += [str(ds.SOPInstanceUID) for ds in info["datasets"]]
    return values


def _task_runs(client, flow_run_ids):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))), limit=200
    )


def _subflow_ids(client, parent_id):
    """``parent_id`` and the flow runs started inside it (the process-studies subflow)."""
    flush_to_server()  # the logs the caller reads next
    tree = run_tree(client, parent_id)
    assert len(tree) > 1, "the extraction ran no subflow"
    return tree


def test_extract_project_from_two_orthancs(scenario, prefect_api):
    from prefect.client.orchestration import get_client

    from blocks.site import save_site
    from flows.extract import extract_project

    site = scenario["site"]
    save_site(site)
    state = extract_project(
        project=str(scenario["project_file"]), manifest=str(scenario["manifest"]), return_state=True
    )
    assert state.is_completed(), state.message
    counts = state.result()
    assert counts["exported"] == 4 and counts["not_found"] == 1 and counts["failed"] == 0

    # The ledger: which source each study came from (the primary wins when both have it).
    engine = make_engine(site.ledger)
    with session_factory(engine)() as session:
        ledger = {s.accession_number: s for s in session.query(Study).filter_by(project=PROJECT)}
    for accession, info in scenario["studies"].items():
        row = ledger[accession]
        if info["place"] == "neither":
            assert row.status == "not_found" and row.source is None
            continue
        assert row.status == "exported", row.last_error
        assert row.source == ("secondary" if info["place"] == "secondary" else "primary")
        assert row.expected_instances == row.received_instances == row.exported_instances == 4
        assert row.pseudo_patient_id and row.pseudo_study_uid.startswith("2.25.")

    # The exported files: complete, de-identified, where the layout says.
    root = Path(site.destinations["out"].path) / PROJECT
    identifiers = _identifiers(scenario["studies"])
    exported = sorted(root.glob("*/*/*.dcm"))
    assert len(exported) == 16
    assert not list(root.glob(".partial/*"))
    for path in exported:
        ds = pydicom.dcmread(path)
        study_row = next(r for r in ledger.values() if r.pseudo_study_uid == ds.StudyInstanceUID)
        assert path.parent.name == study_row.pseudo_study_uid
        assert path.parent.parent.name == study_row.pseudo_patient_id == ds.PatientID
        assert str(ds.PatientName) == study_row.pseudo_patient_id
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(elem.tag.is_private for elem in ds.iterall())
        raw = path.read_bytes()  # long identifiers cannot appear in pixel data by chance
        leaked = [v for v in identifiers if len(v) >= 6 and v.encode() in raw]
        assert not leaked, f"{path.name} still holds identifiers"
        texts = [str(e.value) for e in ds.iterall() if e.VR in TEXT_VRS and e.value]
        words = {w.upper() for t in texts for w in re.split(r"[^A-Za-z0-9.]+", t)}
        assert not words & {v.upper() for v in identifiers}, f"{path.name} holds a name part"

    # Prefect: per-source tag limits exist, lanes carry them, no identifier reached it.
    with get_client(sync_client=True) as client:
        limit = client.read_concurrency_limit_by_tag("source:primary")
        assert limit.concurrency_limit == 3
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        runs = _task_runs(client, _subflow_ids(client, flow_run.id))
        lanes = [t for t in runs if re.fullmatch(r"(primary|secondary)-lane-\d+", t.name)]
        assert {t.name.split("-")[0] for t in lanes} == {"primary", "secondary"}
        assert all(t.tags == [f"source:{t.name.split('-')[0]}"] for t in lanes), (
            "every retrieval lane carries its source's tag"
        )
        assert any(t.name.startswith("export-lane-") for t in runs)
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        flow_ids = _subflow_ids(client, flow_run.id)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_ids)))
        subflows = client.read_flow_runs()
        artifacts = client.read_artifacts()
        stored = json.dumps(flow_run.parameters) + " ".join(r.name for r in runs)
        stored += " ".join(log.message for log in logs) + " ".join(f.name for f in subflows)
        stored += " ".join(json.dumps(f.parameters) for f in subflows)
        stored += " ".join(str(a.data) + str(a.description) for a in artifacts)
        assert not [v for v in identifiers if v in stored]
        assert any(f.name == f"process-{PROJECT}-0" for f in subflows)
        # The progress is on the run the user opens (not its subflow), under the project.
        progress = [a for a in artifacts if a.type == "progress" and a.flow_run_id in flow_ids]
        assert [(a.flow_run_id, a.key, a.data) for a in progress] == [
            (flow_run.id, f"{PROJECT}-progress", 100.0)
        ]

    # A second run: the ledger filters everything out before any study task is made.
    second = extract_project(
        project=str(scenario["project_file"]), manifest=str(scenario["manifest"]), return_state=True
    )
    assert second.is_completed()
    assert second.result() == counts
    assert sorted(root.glob("*/*/*.dcm")) == exported
    with get_client(sync_client=True) as client:
        second_runs = _task_runs(client, [second.state_details.flow_run_id])
    assert sorted(t.name for t in second_runs) == [
        "check-project-key-and-profile",
        "ingest-manifest",
    ]
