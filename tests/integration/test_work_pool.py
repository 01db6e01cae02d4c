"""Several projects at once on a work pool with two workers, sharing two sources.

The production path: a Prefect server on PostgreSQL, the ledger on PostgreSQL, a process
work pool with two ``prefect worker start`` processes, and pulls split into chunks that
run as deployment runs on the pool. The sources count what they have in flight.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from pacsflow.config import load_site_config
from pacsflow.ledger import Study, make_engine, migrate, session_factory
from pacsflow.sandbox import make_patients
from tests.servers import free_port, start_prefect_worker
from tests.work_pool import (
    CountingPacs,
    delete_deployments,
    kill_machine,
    study_of,
    write_project,
    write_site,
)

pytestmark = pytest.mark.integration

LIMITS = {"primary": 2, "secondary": 1}
PROJECTS = ("alpha", "beta", "gamma")


@pytest.fixture
def scenario(tmp_path: Path, ledger_url: str):
    """Two slow sources and three projects; alpha and beta both ask for one study."""
    primary = CountingPacs("PRIMARY", 0, tmp_path / "primary")
    secondary = CountingPacs("SECONDARY", 0, tmp_path / "secondary")
    patients = iter(make_patients(40, seed=7))
    shared = study_of(next(patients), "SHARED01", n_instances=3)
    primary.add_datasets(shared)
    rows: dict[str, list] = {}
    expected: dict[str, Counter] = {}
    for name in PROJECTS:
        rows[name], counts = [], Counter()
        for i in range(8):
            study = study_of(next(patients), f"{name[:2].upper()}{i:04d}")
            (secondary if i % 4 == 3 else primary).add_datasets(study)
            rows[name].append(study[0])
            counts["exported"] += 1
        rows[name].append(study_of(next(patients), f"{name[:2].upper()}MISS")[0])  # nowhere
        counts["not_found"] += 1
        if name in ("alpha", "beta"):
            rows[name].append(shared[0])
            counts["exported"] += 1
        expected[name] = counts
    primary.start()
    secondary.start()
    receiver_port = free_port()  # once the sandboxes hold their ports, so neither takes it
    primary.add_destination("PACSFLOW", "127.0.0.1", receiver_port)
    sources = {
        name: (pacs, LIMITS[name])
        for name, pacs in (("primary", primary), ("secondary", secondary))
    }
    site_path = write_site(tmp_path, ledger_url, sources, receiver_port)
    files = {name: write_project(tmp_path, name, rows[name]) for name in PROJECTS}
    yield {
        "site": load_site_config(site_path),
        "files": files,
        "expected": expected,
        "primary": primary,
        "secondary": secondary,
        "shared": shared,
        "tmp": tmp_path,
    }
    primary.stop()
    secondary.stop()


@pytest.fixture
def pool(scenario, prefect_api):
    """A process work pool with both deployments and two workers (stopped by pid)."""
    from blocks.site import save_site
    from deployments.serve import deploy_to_pool

    save_site(scenario["site"])
    name = f"pacsflow-test-{secrets.token_hex(3)}"
    deployments = deploy_to_pool(name, replace=True)  # an earlier test may have served them
    workers = []
    try:
        for i in range(2):
            home = scenario["tmp"] / f"worker-{i}"
            workers.append(start_prefect_worker(home, prefect_api, name, name=f"w{i}-{name}"))
        yield name
    finally:
        for worker in workers:
            worker.stop()
        delete_deployments(deployments)


def _wait_final(client, run_ids, timeout: float = 420):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [client.read_flow_run(i) for i in run_ids]
        if all(r.state and r.state.is_final() for r in runs):
            return runs
        time.sleep(1)
    pytest.fail(f"runs did not finish in {timeout} s: {[r.state for r in runs]}")


def test_three_projects_on_two_workers_stay_within_the_limits_and_export_once(scenario, pool):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    started = [
        run_deployment(
            "extract-project/extract-project",
            parameters={
                "project": str(project),
                "manifest": str(manifest),
                "workers": 2,
                "studies_per_worker": 1,  # split even these few studies
            },
            timeout=0,
        )
        for project, manifest in scenario["files"].values()
    ]
    with get_client(sync_client=True) as client:
        runs = _wait_final(client, [r.id for r in started])
    site = scenario["site"]
    with session_factory(make_engine(site.ledger))() as session:
        rows = session.query(Study).all()
    reasons = [(r.project, r.id, r.last_error) for r in rows if r.status == "failed"]
    assert all(r.state.is_completed() for r in runs), (reasons, [r.state.message for r in runs])
    with get_client(sync_client=True) as client:
        ours = {f"process-{name}-{chunk}" for name in PROJECTS for chunk in (0, 1)}
        chunks = [r for r in client.read_flow_runs(limit=200) if r.name in ours]
    assert len(chunks) == 2 * len(PROJECTS) and all(r.state.is_completed() for r in chunks)

    # The sources never saw more retrievals than their limits, and the limits were used;
    # each lane queries at most one study ahead beside its retrieval.
    for name in ("primary", "secondary"):
        pacs = scenario[name]
        assert pacs.most_in_flight["retrieve"] == LIMITS[name], (name, pacs.operations)
        assert 1 <= pacs.most_in_flight["find"] <= LIMITS[name], (name, pacs.operations)

    # Every study exactly once: in the ledger and at the destination.
    root = Path(site.destinations["out"].path)
    shared_uid = str(scenario["shared"][0].StudyInstanceUID)
    for name in PROJECTS:
        mine = [r for r in rows if r.project == name]
        assert Counter(r.status for r in mine) == scenario["expected"][name]
        assert all(r.claimed_by is None for r in mine)
        exported = [r for r in mine if r.status == "exported"]
        folders = sorted(p for p in (root / name).glob("*/*") if p.parent.name != ".partial")
        assert sorted(p.name for p in folders) == sorted(r.pseudo_study_uid for r in exported)
        assert not list((root / name).glob(".partial/*"))
        for row in exported:
            files = list((root / name / row.pseudo_patient_id / row.pseudo_study_uid).glob("*"))
            assert len(files) == row.expected_instances == row.exported_instances
    # The study both alpha and beta asked for reached both, whole and de-identified.
    for name in ("alpha", "beta"):
        row = next(r for r in rows if r.project == name and r.found_study_uid == shared_uid)
        folder = root / name / row.pseudo_patient_id / row.pseudo_study_uid
        instances = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
        assert len(instances) == 3
        assert all(ds.StudyInstanceUID == row.pseudo_study_uid != shared_uid for ds in instances)


def test_a_run_whose_workers_die_becomes_crashed_and_a_new_run_finishes_the_pull(
    scenario, prefect_api
):
    """Issue 9: a killed run becomes Crashed; its claims and slots come back."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from blocks.site import save_site
    from deployments.crashes import ensure_crash_automation
    from deployments.serve import deploy_to_pool

    assert ensure_crash_automation() in ("created", "unchanged")
    assert ensure_crash_automation() == "unchanged"  # configure runs it every time
    save_site(scenario["site"])
    pool = f"pacsflow-crash-{secrets.token_hex(3)}"
    deployments = deploy_to_pool(pool, replace=True)  # an earlier test may have served them
    scenario["primary"].delay = 2.0  # slow enough to be killed mid-pull
    project, manifest = scenario["files"]["alpha"]
    parameters = {"project": str(project), "manifest": str(manifest)}
    home = scenario["tmp"] / "worker-crash"
    workers = [start_prefect_worker(home, prefect_api, pool, name=f"doomed-{pool}")]
    site = scenario["site"]
    engine = make_engine(site.ledger)
    migrate(engine)  # so the test can watch the ledger before the run has migrated it
    sessions = session_factory(engine)
    try:
        run = run_deployment("extract-project/extract-project", parameters=parameters, timeout=0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the pull is under way
            with sessions() as session:
                if session.query(Study).filter(Study.claimed_by.isnot(None)).count():
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the run never claimed a study")
        kill_machine(workers)

        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 240
            while not (state := client.read_flow_run(run.id).state).is_final():
                assert time.monotonic() < deadline, f"still {state.type} 240 s after the kill"
                time.sleep(2)
        assert state.is_crashed(), state
    finally:
        for worker in workers:
            worker.stop()

    # A new worker and a new run of the same pull finish it: the dead run's claims ran
    # out and its source slots were given back, or this run would wait on them.
    scenario["primary"].delay = 0.2
    rescuer = start_prefect_worker(home, prefect_api, pool, name=f"rescuer-{pool}")
    try:
        again = run_deployment("extract-project/extract-project", parameters=parameters)
    finally:
        rescuer.stop()
        delete_deployments(deployments)
    assert again.state.is_completed(), again.state
    with sessions() as session:
        rows = session.query(Study).filter(Study.project == "alpha").all()
    assert Counter(r.status for r in rows) == scenario["expected"]["alpha"]
    assert all(r.claimed_by is None for r in rows)
    root = Path(site.destinations["out"].path) / "alpha"
    exported = sorted(r.pseudo_study_uid for r in rows if r.status == "exported")
    assert sorted(p.name for p in root.glob("*/*") if p.parent.name != ".partial") == exported
    assert not list(root.glob(".partial/*"))
