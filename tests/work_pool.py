"""What the work-pool tests share: sources that count and can be stopped mid-operation,
the pool's deployments, and ways to kill its processes.

A test that kills "the process doing X" needs to know which process that is. The sources
here tell: a :class:`Trap` holds the next operation of a kind at the source and names the
address its requester called from, and :func:`pid_at` finds the process on that end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml
from pydicom import Dataset

from pacsflow.sandbox import SandboxPacs
from tests.pixel_phantoms import base_study
from tests.servers import descendants


@dataclass
class Trap:
    """The next ``kind`` operation ("find", or "transfer": a retrieval with one instance
    sent) at a source, held there until :meth:`let_go`."""

    kind: str
    caught: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    peer: tuple[str, int] | None = None

    def wait(self, timeout: float) -> tuple[str, int]:
        """The requester's (address, port), once an operation walked into the trap."""
        if not self.caught.wait(timeout):
            pytest.fail(f"no {self.kind} reached the source in {timeout} s")
        assert self.peer is not None
        return self.peer

    def let_go(self) -> None:
        self.released.set()


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
        self._trap: Trap | None = None

    def trap(self, kind: str) -> Trap:
        """Hold the next ``kind`` operation until the returned trap is let go."""
        self._trap = Trap(kind)
        return self._trap

    def _spring(self, kind: str, event) -> None:
        with self._count:
            trap = self._trap
            if trap is None or trap.kind != kind:
                return
            self._trap = None  # one operation only
        requestor = event.assoc.requestor
        trap.peer = (requestor.address, requestor.port)
        trap.caught.set()
        trap.released.wait(60)

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
        self._spring("find", event)
        return self._counted("find", "find", super()._on_find(event))

    def _on_move(self, event):
        return self._counted("move", "retrieve", super()._on_move(event))

    def _on_get(self, event):
        return self._counted("get", "retrieve", super()._on_get(event))

    def _send(self, event, entries):
        time.sleep(self.delay)
        for i, response in enumerate(super()._send(event, entries)):
            yield response
            if i == 0:  # one instance is at the receiver, the rest are not
                self._spring("transfer", event)


def study_of(patient, accession: str, n_instances: int = 2) -> list[Dataset]:
    """One sandbox study of ``patient`` under ``accession``, one series, on the date the
    manifests of :func:`write_project` give."""
    return base_study(patient, accession, n_instances, study_date=dt.date(2021, 5, 4))


def pid_at(peer: tuple[str, int], candidates: Iterable[int]) -> int:
    """The process among ``candidates`` that holds the TCP connection from ``peer``."""
    for pid in candidates:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.laddr and (conn.laddr.ip, conn.laddr.port) == peer:
                    return pid
    pytest.fail(f"no flow-run process holds the connection from {peer}")


def flow_run_pids(workers) -> list[int]:
    """The processes the workers started (their flow runs), however deep."""
    return [pid for worker in workers for pid in descendants(worker.pid)]


def kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_machine(workers) -> None:
    """SIGKILL every worker and every flow run it started, as when their machine dies."""
    kill([*flow_run_pids(workers), *(worker.pid for worker in workers)])


def delete_deployments(names: list[str]) -> None:
    """Remove the pool's deployments: later tests serve deployments of the same names,
    and a served deployment must not inherit this one's pool settings."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name in names:
            client.delete_deployment(client.read_deployment_by_name(name).id)


def write_site(
    folder: Path, ledger_url: str, sources: dict[str, tuple[SandboxPacs, int]], receiver_port: int
) -> Path:
    """``pacsflow.yaml`` for ``sources`` (name: (pacs, limit); the first is retrieved by
    C-MOVE, the others by C-GET) and a folder destination ``out``; returns its path."""
    site = {
        "ledger": ledger_url,
        "receiver": {"ae_title": "PACSFLOW", "host": "127.0.0.1", "port": receiver_port},
        "staging": str(folder / "staging"),
        "sources": {
            name: {
                "ae_title": pacs.ae_title,
                "host": "127.0.0.1",
                "port": pacs.address[1],
                "max_concurrent": limit,
                "retrieve": "move" if i == 0 else "get",
                "retry_delays": [0.5, 1.0],
                "timeout": 20,
            }
            for i, (name, (pacs, limit)) in enumerate(sources.items())
        },
        "destinations": {"out": {"type": "filesystem", "path": str(folder / "export")}},
    }
    path = folder / "pacsflow.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def write_project(folder: Path, name: str, rows: Iterable[Dataset]) -> tuple[Path, Path]:
    """``projects/<name>.yaml`` (every source, destination ``out``) and a manifest of the
    studies whose first instances are ``rows``; returns both paths."""
    project = folder / "projects" / f"{name}.yaml"
    project.parent.mkdir(exist_ok=True)
    project.write_text(
        yaml.safe_dump({"name": name, "sources": ["primary", "secondary"], "destination": "out"})
    )
    manifest = folder / f"{name}.csv"
    lines = ["mrn,accession_number,study_date"]
    lines += [f"{ds.PatientID},{ds.AccessionNumber},2021-05-04" for ds in rows]
    manifest.write_text("\n".join(lines) + "\n")
    return project, manifest
