"""SIGKILL at six chosen moments of one pull on a two-worker pool; each time, the pull is
started again. Every study must end exported exactly once.

Issue 10's series. The production path (a Prefect server and the ledger on PostgreSQL, a
process work pool with two ``prefect worker start`` processes, the pull split over both),
50 studies, and a kill of the process doing the work:

1. during a C-FIND (the source holds the query until the kill),
2. during a C-MOVE, with one of the study's instances sent,
3. during an export (the process is frozen while its study is in ``.partial/``),
4. between the export and its ledger record (the test holds the study's ledger row, so
   the export is at the destination and the ledger does not know it yet),
5. a worker process alone (its flow run lives on, orphaned),
6. everything: both workers and every flow run, during a transfer.

Then: every study exported once (by SOP Instance UID at the destination), nothing
partial or temporary visible there, the ledger agrees with the destination, and claims
and source slots free again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections import Counter
from pathlib import Path

import psutil
import pydicom
import pytest
from sqlalchemy import text

from pacsflow.config import load_project_config, load_site_config
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.ledger import Study, make_engine, migrate, session_factory
from pacsflow.sandbox import make_patients
from tests.servers import free_port, start_prefect_worker
from tests.work_pool import (
    CountingPacs,
    delete_deployments,
    flow_run_pids,
    kill,
    kill_machine,
    pid_at,
    study_of,
    write_project,
    write_site,
)

pytestmark = pytest.mark.integration

N_STUDIES = 50
ONLY_SECONDARY = 5  # the last five studies, so the secondary is tried and used
INSTANCES = 6
PROJECT = "killed"
WAIT = 180  # seconds a moment may take to come: killed slots come back in 60-75 s


def _wait_until_stopped(processes: list[psutil.Process], seconds: float = 2.0) -> None:
    """Wait for SIGSTOP to take hold: a process stops only on its way back from the
    kernel, so a rename it had under way completes after ``suspend()`` returned."""
    deadline = time.monotonic() + seconds
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            while process.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
                time.sleep(0.001)


class Pull:
    """The pull under test: its processes, the runs started, and ways to reach each moment."""

    def __init__(self, tmp: Path, ledger_url: str, prefect_api: str) -> None:
        self.tmp = tmp
        self.prefect_api = prefect_api
        self.primary = CountingPacs("PRIMARY", 0, tmp / "primary", delay=1.0)
        self.secondary = CountingPacs("SECONDARY", 0, tmp / "secondary", delay=1.0)
        patients = iter(make_patients(N_STUDIES, seed=10))
        self.studies = [
            study_of(next(patients), f"KILL{i:04d}", n_instances=INSTANCES)
            for i in range(N_STUDIES)
        ]
        for i, study in enumerate(self.studies):
            where = self.secondary if i >= N_STUDIES - ONLY_SECONDARY else self.primary
            where.add_datasets(study)
        self.primary.start()
        self.secondary.start()
        receiver_port = free_port()
        self.primary.add_destination("PACSFLOW", "127.0.0.1", receiver_port)
        sources = {"primary": (self.primary, 2), "secondary": (self.secondary, 1)}
        self.site = load_site_config(write_site(tmp, ledger_url, sources, receiver_port))
        self.project_path, self.manifest = write_project(tmp, PROJECT, [s[0] for s in self.studies])
        self.root = Path(self.site.destinations["out"].path) / PROJECT
        self.engine = make_engine(self.site.ledger)
        migrate(self.engine)  # so the test can watch the ledger before a run has migrated it
        self.sessions = session_factory(self.engine)
        self.workers: list = []
        self.seen: dict[int, psutil.Process] = {}  # every flow-run process, orphans too
        self.runs: list = []
        self.moments: list[str] = []

    # -- processes ------------------------------------------------------------------------

    def start_worker(self, pool: str) -> None:
        name = f"w{len(self.moments)}-{len(self.workers)}-{pool}"
        self.workers.append(
            start_prefect_worker(self.tmp / name, self.prefect_api, pool, name=name)
        )

    def flow_processes(self) -> list[int]:
        """Every live flow-run process: the workers' children and the orphans seen before."""
        for pid in flow_run_pids(self.workers):
            with contextlib.suppress(psutil.NoSuchProcess):
                self.seen.setdefault(pid, psutil.Process(pid))
        return [pid for pid, p in self.seen.items() if p.is_running()]

    def claimant(self, study_id: int) -> int:
        with self.sessions() as session:
            owner = session.get(Study, study_id).claimed_by
        assert owner, f"study {study_id} is not claimed"
        return int(owner.split(":")[1])  # host:pid:start (pacsflow.processes)

    def start_pull(self) -> None:
        from prefect.deployments import run_deployment

        parameters = {"project": str(self.project_path), "manifest": str(self.manifest)}
        self.runs.append(
            run_deployment(
                "extract-project/extract-project",
                parameters={**parameters, "workers": 2, "studies_per_worker": 1},
                timeout=0,
            )
        )

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.flow_processes()
        for process in self.seen.values():  # psutil will not signal a reused pid
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.primary.stop()
        self.secondary.stop()
        self.engine.dispose()

    # -- the moments ----------------------------------------------------------------------

    def kill_during(self, kind: str) -> str:
        """Kill the process on the other end of the next ``kind`` at the primary."""
        trap = self.primary.trap(kind)
        try:
            pid = pid_at(trap.wait(WAIT), self.flow_processes())
            kill([pid])
        finally:
            trap.let_go()
        return f"{kind}: killed pid {pid}"

    def kill_during_export(self) -> str:
        """Freeze every flow-run process as soon as a study appears in ``.partial/``; if
        it is still there (the rename has not happened), kill the process exporting it."""
        key = _project_key(self.project_path)
        by_pseudo = {key.uid(str(s[0].StudyInstanceUID)): s[0] for s in self.studies}
        partial_root = self.root / ".partial"
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                entries = os.listdir(partial_root)
                if entries:
                    frozen = [psutil.Process(pid) for pid in self.flow_processes()]
                    for process in frozen:
                        process.suspend()
                    _wait_until_stopped(frozen)
                    try:
                        # <pseudonymous study UID>.<attempt>, see pacsflow.export.filesystem
                        still = [
                            e for e in os.listdir(partial_root) if e.rsplit(".", 1)[0] in by_pseudo
                        ]
                        if still:
                            ds = by_pseudo[still[0].rsplit(".", 1)[0]]
                            pid = self.claimant(self._study_id(ds.AccessionNumber))
                            kill([pid])
                            assert (partial_root / still[0]).exists()
                            return f"export: killed pid {pid} with {still[0]} in .partial/"
                    finally:
                        for process in frozen:
                            with contextlib.suppress(psutil.NoSuchProcess):
                                process.resume()
            time.sleep(0.0005)
        pytest.fail(f"no export caught in .partial/ in {WAIT} s")

    def kill_between_export_and_ledger(self) -> str:
        """Hold a fetched study's ledger row; once its exporter waits on that row to record
        the export, which is at the destination by then, kill the exporter."""
        key = _project_key(self.project_path)
        tried: set[int] = set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT id, found_study_uid FROM studies WHERE project = :p"
                        " AND status = 'retrieving' AND received_instances IS NOT NULL"
                        " AND claimed_by IS NOT NULL AND NOT (id = ANY(:tried))"
                        " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ),
                    {"p": PROJECT, "tried": list(tried)},
                ).first()
                if row is None:
                    conn.rollback()
                    time.sleep(0.05)
                    continue
                tried.add(row.id)
                me = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                waiting = time.monotonic() + 20
                while time.monotonic() < waiting:
                    # pg_stat_activity is read once per transaction unless told otherwise
                    conn.execute(text("SELECT pg_stat_clear_snapshot()"))
                    blocked = conn.execute(
                        text(
                            "SELECT query FROM pg_stat_activity"
                            " WHERE :me = ANY(pg_blocking_pids(pid))"
                        ),
                        {"me": me},
                    ).scalars()
                    if any("pseudo_patient_id" in q for q in blocked):
                        exported = list(self.root.glob(f"*/{key.uid(row.found_study_uid)}"))
                        assert exported, "the exporter recorded before it exported"
                        pid = self.claimant(row.id)
                        kill([pid])
                        conn.rollback()
                        return f"ledger: killed pid {pid} with study {row.id} exported, unrecorded"
                    time.sleep(0.02)
                conn.rollback()  # it was not this row's export the lane waited on
        pytest.fail(f"no export caught between the destination and the ledger in {WAIT} s")

    def kill_a_worker(self, pool: str) -> str:
        """SIGKILL one worker that runs a flow run, not the flow run; a new one replaces it."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            busy = [w for w in self.workers if flow_run_pids([w])]
            if busy:
                self.flow_processes()  # its flow runs become orphans: remember them
                kill([busy[0].pid])
                self.workers.remove(busy[0])
                self.start_worker(pool)
                return f"worker: killed worker pid {busy[0].pid}"
            time.sleep(0.2)
        pytest.fail(f"no worker ran a flow run in {WAIT} s")

    def kill_everything(self, pool: str) -> str:
        """Kill both workers and every flow run during a transfer, as when the machine dies."""
        trap = self.primary.trap("transfer")
        try:
            trap.wait(WAIT)
            kill(self.flow_processes())
            kill_machine(self.workers)
        finally:
            trap.let_go()
        self.workers.clear()
        for _ in range(2):
            self.start_worker(pool)
        return "everything: killed both workers and every flow run mid-transfer"

    def _study_id(self, accession: str) -> int:
        with self.sessions() as session:
            return (
                session.query(Study.id)
                .filter_by(project=PROJECT, accession_number=accession)
                .one()[0]
            )

    def wait_done(self, timeout: float) -> list[Study]:
        """The ledger's rows, once every study is final and unclaimed."""
        deadline = time.monotonic() + timeout
        while True:
            with self.sessions() as session:
                rows = session.query(Study).filter_by(project=PROJECT).all()
            if len(rows) == N_STUDIES and all(
                r.status == "exported" and r.claimed_by is None for r in rows
            ):
                return rows
            if time.monotonic() > deadline:
                statuses = Counter((r.status, r.last_error) for r in rows)
                pytest.fail(f"not done after {timeout} s: {statuses}; {self.moments}")
            time.sleep(1)


def _project_key(project_path: Path) -> Pseudonymizer:
    """The project's pseudonymizer, from its Secret block (created if no run has yet)."""
    from blocks.secrets import project_key

    project = load_project_config(project_path)
    return Pseudonymizer.from_hex(project_key(project.key_secret_name, "default"))


@pytest.fixture
def pull(tmp_path: Path, ledger_url: str, prefect_api: str):
    pull = Pull(tmp_path, ledger_url, prefect_api)
    yield pull
    pull.stop()


def test_sigkill_at_six_moments_then_the_same_pull_exports_every_study_exactly_once(pull):
    from prefect.client.orchestration import get_client

    from blocks.site import save_site
    from deployments.crashes import ensure_crash_automation
    from deployments.serve import deploy_to_pool
    from tests.prefect_records import wait_final

    ensure_crash_automation()
    save_site(pull.site)
    pool = f"pacsflow-kills-{secrets.token_hex(3)}"
    deployments = deploy_to_pool(pool, replace=True)  # an earlier test may have served them
    try:
        for _ in range(2):
            pull.start_worker(pool)
        moments = [
            lambda: pull.kill_during("find"),
            lambda: pull.kill_during("transfer"),
            pull.kill_during_export,
            pull.kill_between_export_and_ledger,
            lambda: pull.kill_a_worker(pool),
            lambda: pull.kill_everything(pool),
        ]
        pull.start_pull()
        for moment in moments:
            pull.moments.append(moment())
            pull.start_pull()  # the same pull again, at once
        rows = pull.wait_done(timeout=420)
        with get_client(sync_client=True) as client:
            last = wait_final(client, pull.runs[-1].id, timeout=120)
            assert last.state.is_completed(), (last.state, pull.moments)
            # Source slots held by killed lanes come back with their leases (60 s).
            deadline = time.monotonic() + 120
            while any(
                client.read_concurrency_limit_by_tag(f"source:{name}").active_slots
                for name in ("primary", "secondary")
            ):
                assert time.monotonic() < deadline, "source slots still held 120 s on"
                time.sleep(2)
    finally:
        for worker in pull.workers:
            worker.stop()
        delete_deployments(deployments)
    assert len(pull.moments) == 6, pull.moments

    # The ledger agrees with the destination, study by study.
    folders = sorted(p for p in pull.root.glob("*/*") if p.parent.name != ".partial")
    assert sorted(p.name for p in folders) == sorted(r.pseudo_study_uid for r in rows)
    for row in rows:
        files = list((pull.root / row.pseudo_patient_id / row.pseudo_study_uid).glob("*.dcm"))
        assert len(files) == row.expected_instances == row.exported_instances == INSTANCES
    # Nothing partial or temporary is visible, and each instance is there exactly once.
    assert not list(pull.root.glob(".partial/*")), pull.moments
    hidden = [p for p in pull.root.rglob("*") if p.name.startswith(".") or "partial" in p.name]
    assert not hidden, hidden
    uids = Counter(
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        for f in pull.root.rglob("*.dcm")
    )
    assert len(uids) == N_STUDIES * INSTANCES and set(uids.values()) == {1}
    # Both sources were used, and neither ever saw more retrievals than its limit.
    assert pull.primary.most_in_flight["retrieve"] <= 2
    assert pull.secondary.most_in_flight["retrieve"] == 1
