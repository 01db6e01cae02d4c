"""Several projects at once on a work pool with two workers, sharing two sources.

The production path: a Prefect server on PostgreSQL, the ledger on PostgreSQL, a process
work pool with two ``prefect worker start`` processes, and pulls split into chunks that
run as deployment runs on the pool. The sources count what they have in flight.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
import yaml

from pacsflow.config import load_site_config
from pacsflow.ledger import Study, make_engine, migrate, session_factory
from pacsflow.sandbox import SandboxPacs, make_patients, make_study
from tests.servers import descendants, free_port, start_prefect_worker

pytestmark = pytest.mark.integration

LIMITS = {"primary": 2, "secondary": 1}
PROJECTS = ("alpha", "beta", "gamma")


class CountingPacs(SandboxPacs):
    """A sandbox PACS that is slow to retrieve (a busy archive) and counts retrievals and
    queries in flight, as the source itself sees them."""

    def __init__(self, *args, delay: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.in_flight = Counter()  # "retrieve" (C-MOVE, C-GET) and "find"
        self.most_in_flight = Counter()
        self.operations = Counter()
        self._count = threading.Lock()

    def _counted(self, kind, group, handler_result):
        with self._count:
            self.in_flight[group] += 1
            self.operations[kind] += 1
            self.most_in_flight[group] = max(self.most_in_flight[group], self.in_flight[group])
        try:
            yield from handler_result
        finally:
            with self._count:
                self.in_flight[group] -= 1

    def _on_find(self, event):
        return self._counted("find", "find", super()._on_find(event))

    def _on_move(self, event):
        return self._counted("move", "retrieve", super()._on_move(event))

    def _on_get(self, event):
        return self._counted("get", "retrieve", super()._on_get(event))

    def _send(self, event, entries):
        time.sleep(self.delay)
        yield from super()._send(event, entries)


def _study(patient, accession: str, n_instances: int = 2):
    return make_study(
        mrn=patient.mrn,
        accession=accession,
        study_date=dt.date(2021, 5, 4),
        patient_name=patient.name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        n_series=1,
        n_instances=n_instances,
    )


@pytest.fixture
def scenario(tmp_path: Path, ledger_url: str):
    """Two slow sources and three projects; alpha and beta both ask for one study."""
    primary = CountingPacs("PRIMARY", 0, tmp_path / "primary")
    secondary = CountingPacs("SECONDARY", 0, tmp_path / "secondary")
    patients = iter(make_patients(40, seed=7))
    shared = _study(next(patients), "SHARED01", n_instances=3)
    primary.add_datasets(shared)
    manifests: dict[str, list[dict]] = {}
    expected: dict[str, Counter] = {}
    for name in PROJECTS:
        rows, counts = [], Counter()
        for i in range(8):
            study = _study(next(patients), f"{name[:2].upper()}{i:04d}")
            where = "secondary" if i % 4 == 3 else "primary"
            (secondary if where == "secondary" else primary).add_datasets(study)
            rows.append(study[0])
            counts["exported"] += 1
        rows.append(_study(next(patients), f"{name[:2].upper()}MISS")[0])  # nowhere
        counts["not_found"] += 1
        if name in ("alpha", "beta"):
            rows.append(shared[0])
            counts["exported"] += 1
        manifests[name] = [
            {
                "mrn": ds.PatientID,
                "accession_number": ds.AccessionNumber,
                "study_date": "2021-05-04",
            }
            for ds in rows
        ]
        expected[name] = counts
    primary.start()
    secondary.start()
    receiver_port = free_port()  # once the sandboxes hold their ports, so neither takes it
    primary.add_destination("PACSFLOW", "127.0.0.1", receiver_port)

    site = {
        "ledger": ledger_url,
        "receiver": {"ae_title": "PACSFLOW", "host": "127.0.0.1", "port": receiver_port},
        "staging": str(tmp_path / "staging"),
        "sources": {
            name: {
                "ae_title": pacs.ae_title,
                "host": "127.0.0.1",
                "port": pacs.address[1],
                "max_concurrent": LIMITS[name],
                "retrieve": "move" if name == "primary" else "get",
                "retry_delays": [0.5, 1.0],
                "timeout": 20,
            }
            for name, pacs in (("primary", primary), ("secondary", secondary))
        },
        "destinations": {"out": {"type": "filesystem", "path": str(tmp_path / "export")}},
    }
    (tmp_path / "pacsflow.yaml").write_text(yaml.safe_dump(site))
    files = {}
    for name in PROJECTS:
        project = {"name": name, "sources": ["primary", "secondary"], "destination": "out"}
        path = tmp_path / "projects" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(project))
        manifest = tmp_path / f"{name}.csv"
        lines = ["mrn,accession_number,study_date"]
        lines += [f"{r['mrn']},{r['accession_number']},{r['study_date']}" for r in manifests[name]]
        manifest.write_text("\n".join(lines) + "\n")
        files[name] = (path, manifest)
    yield {
        "site": load_site_config(tmp_path / "pacsflow.yaml"),
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
        _delete_deployments(deployments)


def _delete_deployments(names: list[str]) -> None:
    """Remove the pool's deployments: later tests serve deployments of the same names,
    and a served deployment must not inherit this one's pool settings."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name in names:
            client.delete_deployment(client.read_deployment_by_name(name).id)


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
            parameters={"project": str(project), "manifest": str(manifest), "workers": 2},
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


def _kill_machine(workers) -> None:
    """SIGKILL every worker and every flow run it started, as when their machine dies."""
    for worker in workers:
        for pid in [*descendants(worker.pid), worker.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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
        _kill_machine(workers)

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
        _delete_deployments(deployments)
    assert again.state.is_completed(), again.state
    with sessions() as session:
        rows = session.query(Study).filter(Study.project == "alpha").all()
    assert Counter(r.status for r in rows) == scenario["expected"]["alpha"]
    assert all(r.claimed_by is None for r in rows)
    root = Path(site.destinations["out"].path) / "alpha"
    exported = sorted(r.pseudo_study_uid for r in rows if r.status == "exported")
    assert sorted(p.name for p in root.glob("*/*") if p.parent.name != ".partial") == exported
    assert not list(root.glob(".partial/*"))
