"""Start, seed, configure, run and stop what the end-to-end benchmarks need.

Every benchmark measures ``pacsflow extract`` as a user runs it, a subprocess with
``PREFECT_API_URL`` pointing at a Prefect server the benchmark started itself, against a
source it seeded itself, beside a baseline measured in the same run:

* :func:`prefect_server`: a Prefect server on SQLite (the local default) or PostgreSQL,
  with a PostgreSQL ledger database in the second case, as a real site would run it;
* :func:`sandbox_process`: a busy sandbox PACS in its own process
  (:mod:`bench.sandbox_server`), with a retrieve delay and an activity log;
* :func:`seeded_orthanc`: Orthanc seeded over REST with :mod:`bench.studies`;
* :func:`write_site`, :func:`run_extract`, :func:`exported`: the site files, the timed
  run, and what it wrote.

Servers listen on free 127.0.0.1 ports and are stopped by pid when their ``with`` block
ends. Port 4200 (a user's own Prefect server) is never used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from bench.baselines.bare_pipeline import BareResult, run_bare
from bench.studies import BenchStudy, read_manifest_rows, write_manifest
from pacsflow.config import ProjectConfig, SiteConfig
from pacsflow.sandbox.activity import (
    RETRIEVALS,
    Operation,
    OperationKind,
    busy_window,
    fraction_at_least,
    max_in_flight,
    max_retrievals_in_flight,
    read_activity,
)
from tests.servers import (
    LOOPBACK,
    OrthancServer,
    log_tail,
    start_orthanc,
    start_postgres,
    start_prefect_server,
)

REPO = Path(__file__).resolve().parents[1]
PROJECT = "bench"
RECEIVER_AE = "PACSFLOW"
BARE_AE = "BARE"  # the bare baseline's calling AE and C-MOVE destination
BACKENDS = ("sqlite", "postgres")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: this checkout's code, no inherited Prefect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# -- Prefect server -----------------------------------------------------------------


@dataclass(frozen=True)
class PrefectBackend:
    """A running Prefect server, and the ledger URL that goes with it (None: SQLite)."""

    name: str  # as printed: "SQLite" or "PostgreSQL"
    api_url: str
    ledger_url: str | None


@contextlib.contextmanager
def prefect_server(root: Path, backend: str = "sqlite") -> Iterator[PrefectBackend]:
    """A fresh Prefect server on ``backend`` ("sqlite" or "postgres"), stopped on exit.

    On PostgreSQL the ledger gets its own database on the same cluster, as the README's
    production setup has it; on SQLite the site's ledger stays a SQLite file.
    """
    if backend not in BACKENDS:
        raise ValueError(f'Argument "backend" must be one of {BACKENDS}, not {backend!r}.')
    with contextlib.ExitStack() as stack:
        database_url = ledger_url = None
        if backend == "postgres":
            postgres = start_postgres(root / "postgres")
            stack.callback(postgres.stop)
            database_url = postgres.create_database("prefect", driver="asyncpg")
            ledger_url = postgres.create_database("ledger", driver="psycopg")
        server = start_prefect_server(root / f"prefect-{backend}", database_url)
        stack.callback(server.stop)
        name = "PostgreSQL" if backend == "postgres" else "SQLite"
        yield PrefectBackend(name, server.api_url, ledger_url)


# -- DICOM sources ------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A DICOM source as the pipelines under test call it."""

    ae_title: str
    port: int
    host: str = LOOPBACK


@dataclass
class SandboxProcess:
    """A running :mod:`bench.sandbox_server` and what it wrote."""

    source: Source
    process: subprocess.Popen
    manifest: Path
    activity_log: Path
    log_path: Path

    @property
    def rows(self) -> list[dict[str, str]]:
        return read_manifest_rows(self.manifest)

    def log_offset(self) -> int:
        """Where the next phase's records start in the activity log."""
        return self.activity_log.stat().st_size if self.activity_log.exists() else 0

    def activity(self, since: int = 0) -> list[Operation]:
        """The operations the PACS recorded from byte ``since`` of its log on."""
        return read_activity(self.activity_log, since) if self.activity_log.exists() else []


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the child by its pid, SIGKILL it if it does not go, and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def standing_receiver(config: Path, port: int, timeout: float = 30) -> Iterator[None]:
    """``pacsflow receiver --config`` in a child process, as README's production path
    runs one per machine; stopped by its pid."""
    command = [*_pacsflow_command(), "receiver", "--config", str(config)]
    log = config.parent / "receiver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=config.parent, stdout=out, stderr=subprocess.STDOUT, env=child_env()
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pacsflow receiver did not start:\n{log_tail(log)}")
            time.sleep(0.1)
        yield
    finally:
        _stop(process)


@contextlib.contextmanager
def sandbox_process(
    root: Path,
    *,
    studies: int,
    destinations: Mapping[str, int],
    instances: int = 1,
    retrieve_delay: float = 0.0,
    ae_title: str = "SLOWPACS",
    seed: int = 0,
    timeout: float = 300,
) -> Iterator[SandboxProcess]:
    """A seeded sandbox PACS in a child process; C-MOVE ``destinations`` are AE -> port."""
    root.mkdir(parents=True, exist_ok=True)
    ready = root / "ready.json"
    ready.unlink(missing_ok=True)
    log_path = root / "sandbox.log"
    command = [
        sys.executable,
        "-m",
        "bench.sandbox_server",
        *("--storage", str(root / "storage"), "--port", "0"),  # it reports the real port
        *("--ae-title", ae_title, "--studies", str(studies), "--instances", str(instances)),
        *("--seed", str(seed)),
        *("--retrieve-delay", str(retrieve_delay), "--activity-log", str(root / "activity.jsonl")),
        *("--manifest", str(root / "manifest.csv"), "--ready", str(ready)),
    ]
    for ae, port in destinations.items():
        command += ["--destination", f"{ae}={LOOPBACK}:{port}"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"sandbox PACS (pid {process.pid}) did not start; log tail:\n"
                    f"{log_tail(log_path)}"
                )
            time.sleep(0.1)
        port = json.loads(ready.read_text())["port"]
        yield SandboxProcess(
            Source(ae_title, port),
            process,
            root / "manifest.csv",
            root / "activity.jsonl",
            log_path,
        )
    finally:
        _stop(process)


def _upload(server: OrthancServer, studies: Iterable[BenchStudy], threads: int = 2) -> list:
    """POST every file to Orthanc's ``/instances`` (the fastest way to seed it); the rows.

    One study at a time, so memory holds one study's files, not the whole data set.
    """
    url = server.base_url + "/instances"
    sessions: dict[int, requests.Session] = {}
    rows = []

    def post(data: bytes) -> None:
        session = sessions.setdefault(threading.get_ident(), requests.Session())
        response = session.post(
            url, data=data, headers={"Content-Type": "application/dicom"}, timeout=60
        )
        if not response.ok:
            raise RuntimeError(
                f"Orthanc refused an upload: {response.status_code} {response.text[:300]}"
            )

    with ThreadPoolExecutor(threads) as pool:
        for study in studies:
            list(pool.map(post, study.files))
            rows.append(study.row)
    for session in sessions.values():
        session.close()
    return rows


@contextlib.contextmanager
def seeded_orthanc(
    root: Path, studies: Iterable[BenchStudy], callers: Mapping[str, int], ae_title: str = "ORTHANC"
) -> Iterator[tuple[Source, OrthancServer, list[dict[str, str]]]]:
    """Orthanc holding ``studies``; ``callers`` (AE -> storage port) may query and move.

    Yields the source, the server and the manifest rows. ``TCP_NODELAY=1`` and the largest
    PDU Orthanc allows (field notes), so the transfer is not what is measured.
    """
    modalities = {ae.lower(): (ae, LOOPBACK, port) for ae, port in callers.items()}
    server = start_orthanc(
        root, ae_title, modalities, extra_config={"MaximumPduLength": 131072, "Plugins": []}
    )
    try:
        rows = _upload(server, studies)
        yield Source(ae_title, server.dicom_port), server, rows
    finally:
        server.stop()


# -- the site and the run -----------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """The files ``pacsflow extract`` is given, and where it exports."""

    folder: Path
    config: Path
    project: Path
    manifest: Path
    export: Path  # the project's folder under the destination


def write_site(
    folder: Path,
    source: Source,
    rows: Sequence[dict[str, str]],
    *,
    limit: int,
    retrieve: str = "move",
    receiver_port: int,
    ledger_url: str | None = None,
) -> Site:
    """A site with one source held to ``limit``, a Basic Profile project and a manifest.

    Built from pacsflow's own config models, so a benchmark cannot drift from the format.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    site = SiteConfig(
        ledger=ledger_url or f"sqlite:///{folder / 'ledger.db'}",
        receiver={"ae_title": RECEIVER_AE, "host": LOOPBACK, "port": receiver_port},
        staging=folder / "staging",
        sources={
            "pacs": {
                "ae_title": source.ae_title,
                "host": source.host,
                "port": source.port,
                "max_concurrent": limit,
                "retrieve": retrieve,
            }
        },
        destinations={"out": {"type": "filesystem", "path": folder / "export"}},
    )
    project = ProjectConfig(name=PROJECT, sources=["pacs"], destination="out", profile="basic")
    config_path = folder / "pacsflow.yaml"
    config_path.write_text(yaml.safe_dump(site.model_dump(mode="json"), sort_keys=False))
    project_path = folder / f"{PROJECT}.yaml"
    project_path.write_text(
        yaml.safe_dump(project.model_dump(mode="json", exclude={"base_dir"}), sort_keys=False)
    )
    manifest = write_manifest(rows, folder / "manifest.csv")
    return Site(folder, config_path, project_path, manifest, folder / "export" / PROJECT)


@dataclass(frozen=True)
class ExtractRun:
    """One timed ``pacsflow extract``; ``started``/``ended`` are ``time.monotonic()``,
    ``started_wall`` is ``time.time()`` at the start, to set beside the source's record."""

    returncode: int
    started: float
    ended: float
    log_path: Path
    started_wall: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def _pacsflow_command() -> list[str]:
    script = Path(sys.executable).parent / "pacsflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "deployments.cli"]


def run_extract(
    site: Site, api_url: str, extra_args: Sequence[str] = (), timeout: float | None = None
) -> ExtractRun:
    """Run ``pacsflow extract`` as a user would, against ``api_url``; time it end to end."""
    command = [
        *_pacsflow_command(),
        "extract",
        *("--config", str(site.config), "--project", str(site.project)),
        *("--manifest", str(site.manifest)),
        *extra_args,
    ]
    env = child_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(site.folder / "prefect-home"))
    log_path = site.folder / "extract.log"
    with open(log_path, "wb") as log:
        started, started_wall = time.monotonic(), time.time()
        status = subprocess.run(
            command,
            cwd=site.folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        ).returncode
        ended = time.monotonic()
    return ExtractRun(status, started, ended, log_path, started_wall)


def exported(export: Path) -> tuple[int, int]:
    """(studies, instances) exported under a project's folder (``.partial`` excluded)."""
    if not export.exists():
        return 0, 0
    studies = [p for p in export.glob("*/*") if p.is_dir() and not p.parts[-2].startswith(".")]
    return len(studies), sum(len(list(p.glob("*.dcm"))) for p in studies)


def add_extract_args(parser: argparse.ArgumentParser) -> None:
    """``--extract-args``: options passed on to every ``pacsflow extract`` of a benchmark."""
    parser.add_argument(
        "--extract-args",
        default="",
        help='Extra `pacsflow extract` options, e.g. "--export-lanes 4".',
    )


def bare_baseline(
    root: Path,
    source: Source,
    rows: Sequence[dict[str, str]],
    *,
    k: int,
    retrieve: str,
    scp_port: int,
) -> BareResult:
    """The bare script against ``source`` (which knows :data:`BARE_AE` at ``scp_port``)."""
    return run_bare(
        rows,
        (source.ae_title, source.host, source.port),
        k=k,
        method=retrieve,
        out_dir=root / "bare-out",
        work_dir=root / "bare",
        ae_title=BARE_AE,
        scp_port=scp_port,
    )


# -- printing -----------------------------------------------------------------------


def check(label: str, value: float, goal: str, ok: bool) -> bool:
    """Print ``label  value  goal ...  PASS/FAIL`` in the results column; return ``ok``."""
    shown = f"{value:8d}" if isinstance(value, int) else f"{value:8.2f}"
    print(f"  {label:<48s} {shown}   goal {goal:<8s} {'PASS' if ok else 'FAIL'}")
    return ok


def figure(label: str, value: float, unit: str = "") -> None:
    """Print a figure with no goal of its own, aligned with :func:`check`'s lines."""
    print(f"  {label:<48s} {value:8.2f}   {unit}".rstrip())


def status_counts(site: Site) -> dict[str, int]:
    """The ledger's count per status, as ``pacsflow status --json`` reports it."""
    done = subprocess.run(
        [*_pacsflow_command(), "status", "--project", PROJECT, "--config", str(site.config)]
        + ["--json"],
        cwd=site.folder,
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-800:]
        raise RuntimeError(f"pacsflow status failed ({done.returncode}): {output}")
    report = json.loads(done.stdout)
    for study in report.get("failed", [])[:10]:  # reasons with identifiers masked
        print(f"  failed study {study['id']}: {study['reason'][:300]}")
    return {name: n for name, n in report["counts"].items() if n}


@dataclass(frozen=True)
class SourceRecord:
    """What the source saw during one phase, from its own activity log."""

    operations: int
    retrievals: int
    max_retrievals: int
    max_queries: int  # C-FINDs in flight at once
    max_operations: int
    at_limit: float  # fraction of the busy window with >= k retrievals in flight
    busy_seconds: float  # first request to last retrieval's end

    @classmethod
    def of(cls, ops: Sequence[Operation], k: int) -> SourceRecord:
        retrievals = [op for op in ops if op.kind in RETRIEVALS]
        busy = (
            max(op.ended for op in retrievals) - min(op.started for op in ops) if retrievals else 0
        )
        return cls(
            operations=len(ops),
            retrievals=len(retrievals),
            max_retrievals=max_retrievals_in_flight(ops),
            max_queries=max_in_flight(ops, {OperationKind.FIND}),
            max_operations=max_in_flight(ops),
            at_limit=fraction_at_least(ops, k, busy_window(ops)),
            busy_seconds=busy,
        )
