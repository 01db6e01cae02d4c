"""The extraction flow against the sandbox PACS: failure paths and kill/restart.

These run the real flow on a real Prefect server (the ``prefect_api`` fixture) with
pynetdicom PACS of our own, which can be taken offline on demand.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import yaml

from pacsflow.config import load_project_config, load_site_config
from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study
from tests.prefect_records import flush_to_server, run_tree
from tests.servers import free_port

pytestmark = pytest.mark.integration

PACSFLOW = str(Path(sys.executable).parent / "pacsflow")


def _fast_retries(config_path: Path, delays: list[float]) -> None:
    data = yaml.safe_load(config_path.read_text())
    for source in data["sources"].values():
        source["retry_delays"] = delays
        source["timeout"] = 10
    config_path.write_text(yaml.safe_dump(data))


@pytest.fixture
def sandbox(sandbox_factory):
    site = sandbox_factory(n_studies=8)
    _fast_retries(site.config_path, [0.5])
    return site


def test_a_source_that_is_down_fails_studies_and_never_falls_through(sandbox, prefect_api):
    """Down is not 'not found': no study may be taken from the secondary instead."""
    from blocks.site import save_site
    from flows.extract import extract_project

    site = load_site_config(sandbox.config_path)
    project = load_project_config(sandbox.project_path)
    save_site(site)
    sandbox.primary.set_offline(True)
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )
    assert state.is_failed()
    assert "studies failed" in state.message

    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        counts = repo.status_counts(session, project.name)
        reasons = [reason for _, reason in repo.failures(session, project.name)]
    assert counts["exported"] == 0 and counts["not_found"] == 0
    assert counts["failed"] == 8
    assert all("SourceUnavailable" in r and "PRIMARY" in r for r in reasons)

    # The source comes back: the next run picks the failed studies up again.
    sandbox.primary.set_offline(False)
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )
    assert state.is_completed(), state.message
    expected = sandbox.expected
    counts = state.result()
    assert counts["exported"] == 8 - expected["neither"]
    assert counts["not_found"] == expected["neither"]
    with sessions() as session:
        by_source = repo.source_counts(session, project.name)
    assert by_source == {
        "primary": expected["primary"] + expected["both"],
        "secondary": expected["secondary"],
    }


def _exported(ledger: Path) -> int:
    """Studies exported so far; 0 while the run has created the file but not yet its tables."""
    with sqlite3.connect(ledger) as db:
        try:
            query = db.execute("select count(*) from studies where status='exported'")
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return 0
        return query.fetchone()[0]


def test_a_killed_extraction_resumes_without_loss_or_duplicates(tmp_path, prefect_api):
    """SIGKILL the worker mid-run; a rerun finishes every study exactly once."""
    folder = tmp_path / "site"
    ports = [str(free_port()) for _ in range(3)]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    pacs = subprocess.Popen(
        [
            PACSFLOW,
            "sandbox",
            "--folder",
            str(folder),
            "--primary-port",
            ports[0],
            "--secondary-port",
            ports[1],
            "--receiver-port",
            ports[2],
            "--studies",
            "12",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    extract = None
    try:
        config = folder / "pacsflow.yaml"
        for _ in range(200):
            if config.exists() and (folder / "manifest.csv").exists():
                break
            time.sleep(0.1)
        _fast_retries(config, [0.5, 1])
        command = [
            PACSFLOW,
            "extract",
            "--config",
            str(config),
            "--project",
            str(folder / "projects" / "sandbox-demo.yaml"),
            "--manifest",
            str(folder / "manifest.csv"),
        ]
        extract = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path
        )
        ledger = folder / "ledger.db"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and extract.poll() is None:
            if ledger.exists() and _exported(ledger) >= 2:
                break
            time.sleep(0.05)
        assert extract.poll() is None, "the run ended before it could be killed"
        os.kill(extract.pid, signal.SIGKILL)
        extract.wait()
        killed_at = _exported(ledger)
        assert killed_at < 10

        rerun = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400
        )
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    finally:
        for process in (extract, pacs):
            if process and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)

    site = load_site_config(config)
    with session_factory(make_engine(site.ledger))() as session:
        rows = session.query(Study).all()
    exported = [r for r in rows if r.status == "exported"]
    assert len(exported) == 10 and sum(r.status == "not_found" for r in rows) == 2
    root = Path(site.destinations["local"].path) / "sandbox-demo"
    study_dirs = sorted(p for p in root.glob("*/*") if p.is_dir() and p.parent.name != ".partial")
    assert sorted(p.name for p in study_dirs) == sorted(r.pseudo_study_uid for r in exported)
    assert all(len(list(d.glob("*.dcm"))) == 6 for d in study_dirs)
    assert not [p for p in root.glob(".partial/*")]


def test_demo_command_shows_both_sources_and_not_found(tmp_path, prefect_api):
    """``--no-serve`` (for scripts): the demo leaves nothing running (test_demo_serves.py
    covers what it serves otherwise). It runs in tmp_path, whose .pacsflow/ it uses."""
    from deployments.background import read_served

    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "120"}
    result = subprocess.run(
        [PACSFLOW, "demo", "--folder", str(tmp_path / "demo"), "--no-serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert read_served(tmp_path / ".pacsflow" / "prefect") is None
    assert "exported from primary" in result.stdout
    assert "exported from secondary" in result.stdout
    assert "not_found" in result.stdout
    for line in result.stdout.splitlines():
        if "MRN" in line or "ACC0" in line:
            pytest.fail(f"the demo printed an identifier: {line}")


def test_a_changed_key_is_refused_after_exports_unless_forced(sandbox, prefect_api):
    """New pseudonyms would not link to earlier exports: the run stops before any study."""
    from prefect.blocks.system import Secret

    from blocks.secrets import key_secret_name
    from blocks.site import save_site
    from flows.extract import extract_project
    from pacsflow.deid.pseudonyms import new_key

    site = load_site_config(sandbox.config_path)
    project = load_project_config(sandbox.project_path)
    save_site(site)
    run = {"project": str(sandbox.project_path), "manifest": str(sandbox.manifest_path)}
    assert extract_project(**run, return_state=True).is_completed()

    Secret(value=new_key()).save(
        key_secret_name("default", project.key_secret_name), overwrite=True
    )
    refused = extract_project(**run, return_state=True)
    assert refused.is_failed()
    assert "pseudonymisation key is not the one" in str(refused.result(raise_on_failure=False))

    forced = extract_project(**run, force_key_change=True, return_state=True)
    assert forced.is_completed(), forced.message
    assert extract_project(**run, return_state=True).is_completed()


def test_an_image_limit_bounds_retrievals_and_is_released(sandbox, prefect_api, monkeypatch):
    """With max_images, each fetch holds slots of a global limit; all return at the end."""
    from prefect.client.orchestration import get_client

    import flows.lanes
    from blocks.site import save_site
    from flows.extract import extract_project

    taken = []
    real_concurrency = flows.lanes.concurrency

    def spy(names, occupy=1, **kwargs):
        taken.append((names, occupy))
        return real_concurrency(names, occupy=occupy, **kwargs)

    monkeypatch.setattr(flows.lanes, "concurrency", spy)

    data = yaml.safe_load(sandbox.config_path.read_text())
    data["sources"]["primary"]["max_images"] = 8  # studies have 6 instances: one at a time
    sandbox.config_path.write_text(yaml.safe_dump(data))
    site = load_site_config(sandbox.config_path)
    save_site(site)
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result()["exported"] == 8 - sandbox.expected["neither"]
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("source-images-primary")
    assert limit.limit == 8
    assert limit.active_slots == 0
    from_primary = sandbox.expected["primary"] + sandbox.expected["both"]
    assert taken == [("source-images-primary", 6)] * from_primary  # none for the secondary


def test_a_library_error_quoting_patient_data_stays_out_of_prefect(
    sandbox, prefect_api, monkeypatch
):
    """The error detail goes to the ledger; Prefect sees only the step and the type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    import pacsflow.deid.processes
    import pacsflow.deid.study
    from blocks.site import save_site
    from flows.extract import extract_project

    def broken_read(path):
        ds = pydicom.dcmread(path)
        raise ValueError(f"cannot parse {ds.PatientName} {ds.PatientID}")  # as pydicom might

    monkeypatch.setattr(pacsflow.deid.study, "read_instance", broken_read)
    # In this process, where the patch is: an exception from a de-identification process
    # arrives as the same type and message (tests/unit/test_deid_processes.py).
    monkeypatch.setattr(pacsflow.deid.processes, "PROCESSES", 0)
    site = load_site_config(sandbox.config_path)
    save_site(site)
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )
    assert state.is_failed()

    with session_factory(make_engine(site.ledger))() as session:
        rows = session.query(Study).all()
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == 8 - sandbox.expected["neither"]
    assert all(r.mrn in r.last_error for r in failed)  # the detail is kept, in the ledger
    mrns = [r.mrn for r in rows]

    flow_run_id = state.state_details.flow_run_id
    flush_to_server()
    with get_client(sync_client=True) as client:
        ours = run_tree(client, flow_run_id)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ours)), limit=200)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ours)), limit=200
        )
    stored = " ".join(log.message for log in logs)
    stored += " ".join(f"{t.name} {t.state.message}" for t in tasks if t.state)
    assert "de-identify failed with ValueError" in stored
    assert not [m for m in mrns if m in stored]


def test_a_requeued_study_is_processed_again_not_answered_from_the_cache(sandbox, prefect_api):
    """Not found today, in the PACS tomorrow: requeue it and the next run exports it."""
    from blocks.site import save_site
    from flows.extract import extract_project
    from pacsflow.ledger.models import StudyStatus
    from pacsflow.sandbox.synthetic import make_study

    site = load_site_config(sandbox.config_path)
    save_site(site)
    run = {"project": str(sandbox.project_path), "manifest": str(sandbox.manifest_path)}
    first = extract_project(**run, return_state=True).result()
    missing = sandbox.expected["neither"]
    assert first["not_found"] == missing

    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        absent = [r for r in session.query(Study).all() if r.status == "not_found"]
    for row in absent:  # the studies reach the secondary PACS
        sandbox.secondary.add_datasets(
            make_study(
                mrn=row.mrn,
                accession=row.accession_number,
                study_date=row.study_date,  # on the manifest's date: not ambiguous
                patient_name="LATE^ARRIVAL",
                birth_date=dt.date(1950, 1, 1),
                sex="F",
                n_series=1,
                n_instances=2,
            )
        )
    with sessions() as session:
        assert repo.requeue(session, "sandbox-demo", StudyStatus.NOT_FOUND) == missing

    second = extract_project(**run, return_state=True).result()
    assert second["not_found"] == 0
    assert second["exported"] == 8
    with sessions() as session:
        by_source = repo.source_counts(session, "sandbox-demo")
    assert by_source["secondary"] == sandbox.expected["secondary"] + missing


def test_a_lost_ledger_update_is_mended_from_prefects_cache_not_fetched_again(sandbox, prefect_api):
    """The ledger loses an export (restored from a backup, say): Prefect's record of it,
    keyed on project and study, marks it exported without asking the source again."""
    from sqlalchemy import update

    from blocks.site import save_site
    from flows.extract import extract_project

    site = load_site_config(sandbox.config_path)
    save_site(site)
    run = {"project": str(sandbox.project_path), "manifest": str(sandbox.manifest_path)}
    assert extract_project(**run, return_state=True).is_completed()
    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        before = {r.id: r for r in session.query(Study).all() if r.status == "exported"}
        session.execute(update(Study).where(Study.id.in_(before)).values(status="pending"))
        session.commit()

    sandbox.primary.set_offline(True)  # nothing may be fetched again
    sandbox.secondary.set_offline(True)
    state = extract_project(**run, return_state=True)
    assert state.is_completed(), state.message
    with sessions() as session:
        after = {r.id: r for r in session.query(Study).all() if r.id in before}
    assert all(r.status == "exported" for r in after.values())
    assert {i: r.pseudo_study_uid for i, r in after.items()} == {
        i: r.pseudo_study_uid for i, r in before.items()
    }


AMBIGUOUS_DAY = dt.date(2023, 6, 1)


def _twin_rows(sandbox) -> tuple[list, list]:
    """Two manifest rows, each matching two studies of one patient: one on the row's date
    (2 instances), one 3 days later (1 instance). The first row's twins are in the
    primary (and the one on the date in the secondary too: a fall-through would export
    it), the second's in the secondary only. Returns the two pairs of twins."""
    from pacsflow.sandbox import make_patients
    from pacsflow.sandbox.synthetic import make_study

    day = AMBIGUOUS_DAY
    at_primary, at_secondary = make_patients(2, seed=77)

    def twins(patient, accession):
        person = {"patient_name": patient.name, "birth_date": patient.birth_date}
        return [
            make_study(
                mrn=patient.mrn,
                accession=accession,
                study_date=study_date,
                **person,
                sex=patient.sex,
                n_series=1,
                n_instances=n,
                seed=seed,
            )
            for seed, study_date, n in ((1, day, 2), (2, day + dt.timedelta(days=3), 1))
        ]

    primary_twins = twins(at_primary, "AMB000001")
    secondary_twins = twins(at_secondary, "AMB000002")
    for study in primary_twins:
        sandbox.primary.add_datasets(study)
    sandbox.secondary.add_datasets(primary_twins[0])
    for study in secondary_twins:
        sandbox.secondary.add_datasets(study)
    with sandbox.manifest_path.open("a") as manifest:
        for patient, accession in ((at_primary, "AMB000001"), (at_secondary, "AMB000002")):
            manifest.write(f"{patient.mrn},{accession},{day.isoformat()}\n")
    return primary_twins, secondary_twins


def _set_policy(sandbox, policy: str) -> None:
    project = yaml.safe_load(sandbox.project_path.read_text())
    project["ambiguity"] = policy
    sandbox.project_path.write_text(yaml.safe_dump(project))


def test_ambiguous_rows_retrieve_nothing_until_the_policy_says_which(sandbox, prefect_api):
    """Two studies under one row's accession: by default the row ends ``ambiguous`` at the
    primary (not tried at the secondary, which holds one copy) and at the secondary for a
    row the primary lacks; with ``date_match`` and a requeue, the study on the row's date
    is exported, from the source that has the twins."""
    from blocks.site import save_site
    from flows.extract import extract_project
    from pacsflow.ledger.models import StudyStatus

    primary_twins, secondary_twins = _twin_rows(sandbox)
    site = load_site_config(sandbox.config_path)
    save_site(site)
    run = {"project": str(sandbox.project_path), "manifest": str(sandbox.manifest_path)}
    first = extract_project(**run, return_state=True)
    assert first.is_completed(), first.message
    assert first.result()["ambiguous"] == 2
    assert first.result()["exported"] == 8 - sandbox.expected["neither"]

    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        rows = {r.accession_number: r for r in session.query(Study).all()}
    for accession, source in (("AMB000001", "primary"), ("AMB000002", "secondary")):
        row = rows[accession]
        assert (row.status, row.source, row.error_type) == ("ambiguous", source, "ambiguous")
        assert row.last_error.startswith("2 studies match (dated 2023-06-01, 2023-06-04;")
        assert row.found_study_uid is None and row.exported_instances is None

    _set_policy(sandbox, "date_match")
    with sessions() as session:
        assert repo.requeue(session, "sandbox-demo", StudyStatus.AMBIGUOUS) == 2
    second = extract_project(**run, return_state=True)
    assert second.is_completed(), second.message
    assert second.result()["ambiguous"] == 0
    with sessions() as session:
        rows = {r.accession_number: r for r in session.query(Study).all()}
    for accession, source, on_date in (
        ("AMB000001", "primary", primary_twins[0]),
        ("AMB000002", "secondary", secondary_twins[0]),
    ):
        row = rows[accession]
        assert (row.status, row.source) == ("exported", source)
        assert row.found_study_uid == on_date[0].StudyInstanceUID
        assert row.exported_instances == 2  # the twin on the row's date, not the other one


def test_policy_all_exports_every_twin_once_each_from_its_own_row(sandbox, prefect_api):
    """With ``ambiguity: all`` each matching study is exported, once, under its own row;
    a second run (the same manifest again) neither adds rows nor exports anything again."""
    from blocks.site import save_site
    from flows.extract import extract_project

    twins = _twin_rows(sandbox)
    _set_policy(sandbox, "all")
    site = load_site_config(sandbox.config_path)
    save_site(site)
    run = {"project": str(sandbox.project_path), "manifest": str(sandbox.manifest_path)}
    state = extract_project(**run, return_state=True)
    assert state.is_completed(), state.message
    counts = state.result()
    assert counts["expanded"] == 2 and counts["ambiguous"] == 0
    assert counts["exported"] == 8 - sandbox.expected["neither"] + 4

    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        rows = session.query(Study).filter(Study.accession_number.like("AMB%")).all()
    parents = {r.accession_number: r for r in rows if r.expanded_from is None}
    assert {a: (p.status, p.source) for a, p in parents.items()} == {
        "AMB000001": ("expanded", "primary"),
        "AMB000002": ("expanded", "secondary"),
    }
    for (accession, parent), pair in zip(sorted(parents.items()), twins, strict=True):
        children = [r for r in rows if r.expanded_from == parent.id]
        assert sorted((c.found_study_uid, c.exported_instances) for c in children) == sorted(
            (study[0].StudyInstanceUID, len(study)) for study in pair
        )
        assert {c.status for c in children} == {"exported"}
        assert {c.source for c in children} == {parent.source}, accession
    root = Path(site.destinations["local"].path) / "sandbox-demo"
    exported_before = sorted(p.name for p in root.glob("*/*") if p.parent.name != ".partial")

    again = extract_project(**run, return_state=True)
    assert again.is_completed(), again.message
    with sessions() as session:
        assert session.query(Study).filter(Study.accession_number.like("AMB%")).count() == 6
    assert sorted(p.name for p in root.glob("*/*") if p.parent.name != ".partial") == (
        exported_before
    )
