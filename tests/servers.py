"""Start and stop real servers (Orthanc, PostgreSQL, a Prefect server) for integration tests.

Plain helpers with no pytest import, so benchmarks and scripts can use them too.
The pytest wiring (skip/fail, teardown) lives in ``tests/integration/conftest.py``.
PostgreSQL and Prefect facts are in the docstrings of :func:`start_postgres` and
:func:`start_prefect_server`.

Orthanc facts this module relies on (Debian ``orthanc`` 1.10):

* It runs in the foreground with ``Orthanc config.json``; the HTTP API answers within
  ~0.1 s. SIGTERM takes ~4 s to complete, so :func:`stop_all` signals every server
  first and then waits, instead of paying 4 s per server in sequence.
* A port already in use makes it exit with status 255: :func:`start_orthanc` retries
  with fresh ports (another process may grab a port between :func:`free_port` and
  Orthanc's bind).
* Orthanc 1.10 has no option to choose the listen address: both the DICOM and the
  HTTP servers bind to all interfaces. ``RemoteAccessAllowed: false`` makes the HTTP
  server refuse non-loopback clients, and the DICOM server only answers C-FIND, C-GET
  and C-MOVE for calling AE titles listed in ``DicomModalities``.
* Every calling AE title and every C-MOVE destination must be in ``DicomModalities``;
  an unknown AE gets its C-FIND/C-GET/C-MOVE refused (C-ECHO and C-STORE are allowed
  from anyone by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

from deployments.server import pid_alive as _pid_alive
from deployments.server import server_command

ORTHANC_BIN_ENV = "PACSFLOW_ORTHANC_BIN"
"""Environment variable that can point at a specific ``Orthanc`` executable."""

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_EXIT_PORT_IN_USE = 255
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when it is not installed.

    ``/usr/sbin`` is not on every user's PATH, so it is looked at explicitly.
    """
    override = os.environ.get(ORTHANC_BIN_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("Orthanc")
    if found:
        return found
    for candidate in ("/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc", "/usr/local/bin/Orthanc"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def orthanc_available() -> bool:
    """Whether an Orthanc executable is installed (tests skip otherwise, fail under CI)."""
    return orthanc_binary() is not None


def dcmtk_binary(name: str) -> str | None:
    """Path of a dcmtk tool such as ``echoscu``.

    Looks in ``/usr/bin`` first: the venv's pynetdicom installs console scripts with the
    same names (echoscu, findscu, storescp...) that would shadow dcmtk on PATH.
    """
    for directory in ("/usr/bin", "/usr/local/bin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _set_parent_death_signal(sig: int = signal.SIGTERM) -> None:  # pragma: no cover - child
    """Ask Linux to send ``sig`` to the child if the test process dies (no orphan servers)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, sig)
    except Exception:
        pass


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


# -- shared start/stop plumbing -----------------------------------------------------

_Server = TypeVar("_Server")


def _spawn(
    argv: list[str], *, cwd: Path, env: Mapping[str, str], log_path: Path, **popen: Any
) -> subprocess.Popen:
    """Start a server in the background, its stdout and stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            **popen,
        )


def _log_size(path: Path) -> int:
    """Where the next start attempt's output will begin in ``path``."""
    return path.stat().st_size if path.exists() else 0


def _log_mentions(path: Path, offset: int, *needles: str) -> bool:
    """Whether the log written since ``offset`` contains one of ``needles``."""
    text = path.read_text(errors="replace")[offset:]
    return any(needle in text for needle in needles)


def _wait_until_ready(
    process: subprocess.Popen,
    probe: Callable[[], str | None],
    *,
    timeout: float,
    interval: float,
    stop: Callable[[], None],
    error_cls: type[Exception],
    describe: str,
    log_path: Path,
) -> int | None:
    """None once ``probe()`` says ready; the exit status if ``process`` died first.

    ``probe`` returns None when the server is ready, else why not ("" for no detail, shown
    as ``(last error: ...)`` otherwise). On timeout, ``stop()`` runs and ``error_cls`` is
    raised with ``describe``, the last reason and the log tail; on any other exception
    (Ctrl-C included) ``stop()`` runs and the exception propagates.
    """
    deadline = time.monotonic() + timeout
    last = ""
    try:
        while time.monotonic() < deadline:
            status = process.poll()
            if status is not None:
                return status
            reason = probe()
            if reason is None:
                return None
            last = reason
            time.sleep(interval)
    except BaseException:
        stop()
        raise
    stop()
    detail = f" (last error: {last})" if last else ""
    raise error_cls(f"{describe} within {timeout} s{detail}; log tail:\n{log_tail(log_path)}")


def _wait_http_ready(
    url: str,
    process: subprocess.Popen,
    timeout: float,
    stop: Callable[[], None],
    error_cls: type[Exception],
    describe: str,
    *,
    log_path: Path,
    interval: float,
) -> int | None:
    """:func:`_wait_until_ready` with "``GET url`` answers 2xx/3xx" as the probe."""

    def probe() -> str | None:
        try:
            if requests.get(url, timeout=2).ok:
                return None
        except requests.RequestException:
            pass
        return ""

    return _wait_until_ready(
        process,
        probe,
        timeout=timeout,
        interval=interval,
        stop=stop,
        error_cls=error_cls,
        describe=describe,
        log_path=log_path,
    )


def _start_with_retries(
    launch: Callable[[], tuple[_Server, int | None, str | None]],
    *,
    attempts: int,
    what: str,
    error_cls: type[Exception],
    log_path: Path,
) -> _Server:
    """Call ``launch`` until a server is ready, retrying only when its port was taken.

    ``launch()`` starts one server on fresh ports and waits for it: it returns the server,
    None or the exit status, and (for an exit) a note such as ``"exit 1 (port 5 in use)"``
    when the exit was a lost port race, else None. Another process may grab a port between
    :func:`free_port` and the server's bind, hence the retries.
    """
    last_error = ""
    for _attempt in range(attempts):
        server, status, port_race = launch()
        if status is None:
            return server
        if port_race is None:
            raise error_cls(
                f"{what} exited with status {status} during start-up; log tail:\n"
                f"{log_tail(log_path)}"
            )
        last_error = port_race
    raise error_cls(
        f"{what} did not start after {attempts} attempts ({last_error}); log tail:\n"
        f"{log_tail(log_path)}"
    )


def _wait_gone(
    alive: Callable[[], bool],
    deadline: float,
    *,
    process: subprocess.Popen | None = None,
    interval: float = 0.05,
) -> None:
    """Until ``deadline``, wait for ``alive()`` to turn false (blocking in ``process.wait``
    when a process is given, else polling every ``interval`` seconds)."""
    while alive() and time.monotonic() < deadline:
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        else:
            time.sleep(interval)


class _ProcessHandle:
    """``is_running`` for the server dataclasses below (they define ``pid``, ``_process``)."""

    pid: int
    _process: subprocess.Popen | None

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return _pid_alive(self.pid)


@dataclass
class OrthancServer(_ProcessHandle):
    """A running Orthanc process started by :func:`start_orthanc`."""

    aet: str
    dicom_port: int
    http_port: int
    pid: int
    workdir: Path
    host: str = LOOPBACK
    _process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.json"

    # -- REST helpers -------------------------------------------------------------
    def get(self, path: str, **kwargs: Any) -> Any:
        """GET ``path`` on the REST API and return the decoded JSON (raises on HTTP error)."""
        response = requests.get(self.base_url + path, timeout=kwargs.pop("timeout", 30), **kwargs)
        response.raise_for_status()
        return response.json()

    def upload(self, paths: Iterable[Path]) -> int:
        """POST each DICOM file to ``/instances``; returns how many were accepted.

        Raises ``requests.HTTPError`` on the first file Orthanc refuses.
        """
        count = 0
        with requests.Session() as session:
            for path in paths:
                data = Path(path).read_bytes()
                response = session.post(
                    self.base_url + "/instances",
                    data=data,
                    headers={"Content-Type": "application/dicom"},
                    timeout=60,
                )
                if not response.ok:
                    raise requests.HTTPError(
                        f"upload of {path} to {self.base_url} failed: "
                        f"{response.status_code} {response.text[:500]}",
                        response=response,
                    )
                count += 1
        return count

    def statistics(self) -> dict[str, Any]:
        return self.get("/statistics")

    def study_count(self) -> int:
        return int(self.statistics()["CountStudies"])

    def instance_count(self) -> int:
        return int(self.statistics()["CountInstances"])

    def delete_all_studies(self) -> None:
        """Delete every study Orthanc holds (the benchmarks send the same study again)."""
        for study in self.get("/studies"):
            response = requests.delete(f"{self.base_url}/studies/{study}", timeout=60)
            response.raise_for_status()

    def find_studies(self) -> list[dict[str, Any]]:
        """``GET /studies?expand``: one dict per study, with ``MainDicomTags`` etc."""
        return self.get("/studies?expand")

    # -- lifecycle ----------------------------------------------------------------
    def terminate(self) -> None:
        """Send SIGTERM (no wait); see :meth:`wait_stopped`."""
        with contextlib.suppress(ProcessLookupError):
            if self.is_running():
                os.kill(self.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 15) -> None:
        """Wait until the process has exited; SIGKILL it after ``timeout`` seconds."""
        _wait_gone(self.is_running, time.monotonic() + timeout, process=self._process)
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if self._process is not None:
                self._process.wait(timeout=10)
            else:
                _wait_gone(lambda: _pid_alive(self.pid), time.monotonic() + 10)
        elif self._process is not None:
            self._process.wait()  # reap

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM by pid, wait for exit (ports and storage are free afterwards)."""
        self.terminate()
        self.wait_stopped(timeout)


def stop_all(servers: Iterable[OrthancServer], timeout: float = 15) -> None:
    """Stop several servers in parallel: signal all, then wait for each."""
    servers = list(servers)
    for server in servers:
        server.terminate()
    for server in servers:
        server.wait_stopped(timeout)


ModalitySpec = tuple[str, str, int] | Mapping[str, Any]


def _modality(spec: ModalitySpec) -> dict[str, Any]:
    """A ``DicomModalities`` entry in Orthanc's long form.

    ``(aet, host, port)`` allows every command. Orthanc's ``Allow*`` flags already default
    to true; they are spelled out so the C-GET/C-MOVE permissions are visible. A mapping
    is passed through as-is, e.g. ``{"AET": ..., "Host": ..., "Port": ..., "AllowGet":
    False}`` to test a PACS that refuses C-GET.
    """
    if isinstance(spec, Mapping):
        return dict(spec)
    aet, host, port = spec
    return {
        "AET": aet,
        "Host": host,
        "Port": int(port),
        "AllowEcho": True,
        "AllowFind": True,
        "AllowGet": True,
        "AllowMove": True,
        "AllowStore": True,
    }


def orthanc_config(
    workdir: Path,
    aet: str,
    dicom_port: int,
    http_port: int,
    modalities: Mapping[str, ModalitySpec],
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config.json :func:`start_orthanc` writes (exposed for inspection/tweaks)."""
    config: dict[str, Any] = {
        "Name": f"pacsflow-test-{aet}",
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        # No listen-address option exists in Orthanc 1.10; this keeps HTTP loopback-only.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # Like a real PACS: refuse associations addressed to another called AE.
        "DicomCheckCalledAet": True,
        # Every calling AE and every C-MOVE destination must be listed here.
        "DicomModalities": {name: _modality(spec) for name, spec in modalities.items()},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": False,
        "DicomScuTimeout": 10,
        "MaximumPduLength": 16384,
        "OverwriteInstances": True,
        "SaveJobs": False,
        "StableAge": 2,
        "HttpDescribeErrors": True,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpThreadsCount": 10,
        "WebDavEnabled": False,
        "Plugins": [],
    }
    if DICOMWEB_PLUGIN.exists():
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
    if extra_config:
        config.update(extra_config)
    return config


class OrthancStartError(RuntimeError):
    pass


def start_orthanc(
    workdir: Path,
    aet: str,
    modalities: Mapping[str, ModalitySpec],
    *,
    extra_config: Mapping[str, Any] | None = None,
    timeout: float = 20,
    attempts: int = 5,
) -> OrthancServer:
    """Start Orthanc with its config, storage, index and log inside ``workdir``.

    ``modalities`` maps a symbolic name to ``(aet, host, port)``: list every AE title that
    will call this server and every C-MOVE destination. ``extra_config`` overrides or adds
    config.json keys. Returns once ``GET /system`` answers (the DICOM port is listening by then).
    """
    binary = orthanc_binary()
    if binary is None:
        raise OrthancStartError("Orthanc is not installed (apt-get install orthanc)")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    config_path = workdir / "config.json"
    log_path = workdir / "orthanc.log"

    def launch() -> tuple[OrthancServer, int | None, str | None]:
        dicom_port = free_port()
        http_port = free_port()
        while http_port == dicom_port:
            http_port = free_port()
        config = orthanc_config(workdir, aet, dicom_port, http_port, modalities, extra_config)
        config_path.write_text(json.dumps(config, indent=2))
        process = _spawn(
            [binary, str(config_path)],
            cwd=workdir,
            env=env,
            log_path=log_path,
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
        )
        server = OrthancServer(
            aet=aet,
            dicom_port=dicom_port,
            http_port=http_port,
            pid=process.pid,
            workdir=workdir,
            _process=process,
        )
        # Orthanc starts its DICOM server before its HTTP server (see its log), so an
        # answering REST API means the DICOM port is listening too: no need to probe it
        # with a bare TCP connect, which Orthanc would log as a failed association.
        status = _wait_http_ready(
            server.base_url + "/system",
            process,
            timeout,
            server.stop,
            OrthancStartError,
            f"Orthanc (pid {server.pid}) did not answer on {server.base_url}/system and DICOM "
            f"port {server.dicom_port}",
            log_path=log_path,
            interval=0.02,
        )
        in_use = status == ORTHANC_EXIT_PORT_IN_USE
        return server, status, f"exit {status} (port in use?)" if in_use else None

    return _start_with_retries(
        launch, attempts=attempts, what="Orthanc", error_cls=OrthancStartError, log_path=log_path
    )


# -- PostgreSQL ---------------------------------------------------------------------

PG_BIN_ENV = "PACSFLOW_PG_BIN"
"""Environment variable that can point at a PostgreSQL ``bin`` directory (initdb, postgres)."""

POSTGRES_OS_USER = "postgres"
"""PostgreSQL refuses to run as root: as root, initdb and postgres run as this user."""

POSTGRES_DB_USER = "postgres"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``postgres``, or None when PostgreSQL is not installed.

    Debian keeps them off PATH in ``/usr/lib/postgresql/<major>/bin``; the newest wins.
    """
    override = os.environ.get(PG_BIN_ENV)
    if override:
        candidates = [Path(override)]
    else:

        def major(path: Path) -> int:
            return int(path.parent.name) if path.parent.name.isdigit() else -1

        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in ("initdb", "postgres")):
            return candidate
    return None


def _postgres_ids() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root; None when we are not root.

    Raises KeyError when we are root and the ``postgres`` OS user does not exist.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    entry = pwd.getpwnam(POSTGRES_OS_USER)
    return entry.pw_uid, entry.pw_gid


def postgres_available() -> bool:
    """Whether PostgreSQL can be started here (tests skip otherwise, fail under CI)."""
    if postgres_bindir() is None:
        return False
    try:
        _postgres_ids()
    except KeyError:
        return False
    return True


def _demote(ids: tuple[int, int] | None, death_signal: int) -> Any:
    """A ``preexec_fn`` that drops root to ``ids`` and then sets the parent-death signal.

    The order matters: Linux clears the parent-death signal when the credentials change.
    libc is loaded here, in the parent: once demoted, the child can no longer import
    ``ctypes`` from a Python installed under ``/root`` (mode 0700), and the death signal
    would silently not be set.
    """
    prctl = None
    if sys.platform == "linux":
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:  # pragma: no cover - runs in the child
        if ids is not None:
            uid, gid = ids
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        if prctl is not None:
            prctl(pr_set_pdeathsig, death_signal)

    return preexec


def _chown(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is not None:
        os.chown(path, *ids)


class PostgresStartError(RuntimeError):
    pass


_PG_ROOT_PREFIX = "pacsflow-pg-"
_STALE_AFTER_SECONDS = 600


def _remove_stale_postgres_dirs(tmpdir: Path) -> None:
    """Delete cluster dirs left behind by killed test sessions.

    A dir is stale once it is older than 10 minutes and has no ``postmaster.pid``: a
    running server has one; a killed session's server removed it on its way out (fast
    shutdown on parent death); a cluster being created is seconds old.
    """
    now = time.time()
    for path in tmpdir.glob(_PG_ROOT_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if (path / "data" / "postmaster.pid").exists():
                continue
            if now - path.stat().st_mtime > _STALE_AFTER_SECONDS:
                shutil.rmtree(path, ignore_errors=True)


@dataclass
class PostgresServer(_ProcessHandle):
    """A running ``postgres`` started by :func:`start_postgres` (trust auth, loopback only).

    ``datadir`` and ``socket_dir`` live under ``rootdir``, a fresh directory in the system
    temp dir owned by the ``postgres`` OS user (pytest's own temp dirs are mode 0700 and
    root-owned, so that user could not enter them); :meth:`stop` deletes ``rootdir``.
    The server log is in ``workdir``.
    """

    port: int
    pid: int
    datadir: Path
    rootdir: Path
    socket_dir: Path
    workdir: Path
    host: str = LOOPBACK
    user: str = POSTGRES_DB_USER
    _process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def url(self, database: str = "postgres", driver: str | None = "psycopg") -> str:
        """SQLAlchemy URL of ``database``: ``driver="asyncpg"`` for the Prefect server,
        ``driver=None`` for a plain libpq URL (``postgresql://...``)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """An autocommit psycopg connection (close it, or use it in a ``with``)."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str | None = None, driver: str | None = "psycopg") -> str:
        """Create an empty database (a random ``pacsflow_<hex>`` name by default).

        Returns its SQLAlchemy URL (see :meth:`url` for ``driver``).
        """
        name = name or f"pacsflow_{secrets.token_hex(6)}"
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name, driver)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting its clients first (``WITH (FORCE)``, PostgreSQL 13+)."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        with self.connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- lifecycle ----------------------------------------------------------------
    def terminate(self) -> None:
        """Ask for a *fast* shutdown (SIGINT; no wait), see :meth:`wait_stopped`.

        PostgreSQL's SIGTERM is a "smart" shutdown that waits for every client to
        disconnect: an engine's idle pooled connection would hold it up until the SIGKILL.
        SIGINT rolls back open transactions, disconnects clients and stops cleanly.
        """
        with contextlib.suppress(ProcessLookupError):
            if self.is_running():
                os.kill(self.pid, signal.SIGINT)

    def wait_stopped(self, timeout: float = 15) -> None:
        """Wait for the postmaster to exit; SIGKILL its process group after ``timeout``."""
        _wait_gone(self.is_running, time.monotonic() + timeout, interval=0.02)
        if self.is_running():
            # The postmaster leads its own session (start_new_session): kill the backends too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            _wait_gone(self.is_running, time.monotonic() + 10, interval=0.02)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)  # reap

    def stop(self, timeout: float = 15, *, remove: bool = True) -> None:
        """Stop by pid and delete ``rootdir`` (data and socket) unless ``remove`` is false."""
        self.terminate()
        self.wait_stopped(timeout)
        if remove:
            shutil.rmtree(self.rootdir, ignore_errors=True)


def start_postgres(
    workdir: Path, *, timeout: float = 30, attempts: int = 5, database: str | None = None
) -> PostgresServer:
    """initdb a fresh cluster and start ``postgres`` on a free 127.0.0.1 port.

    * As root, ``initdb`` and ``postgres`` run as the ``postgres`` OS user (dropped in
      ``preexec_fn``, so the pid is the postmaster's own, not a ``runuser`` wrapper's).
    * Trust authentication for the ``postgres`` database user, over the Unix socket (in
      ``rootdir``) and 127.0.0.1 only; it listens on 127.0.0.1 only.
    * Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): a
      crash loses the cluster, which a test cluster does not mind.
    * A port taken between :func:`free_port` and the bind makes postgres exit; it is
      retried with a fresh port.

    ``database`` (optional) is created once the server is ready. Returns once a psycopg
    connection succeeds. Raises :class:`PostgresStartError` with the log tail otherwise.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise PostgresStartError("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        ids = _postgres_ids()
    except KeyError as exc:
        raise PostgresStartError(
            f"running as root, but there is no {POSTGRES_OS_USER!r} OS user to run PostgreSQL"
        ) from exc
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _remove_stale_postgres_dirs(Path(tempfile.gettempdir()))
    rootdir = Path(tempfile.mkdtemp(prefix=_PG_ROOT_PREFIX))
    datadir = rootdir / "data"
    socket_dir = rootdir / "sock"
    socket_dir.mkdir()
    for path in (rootdir, socket_dir):
        _chown(path, ids)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "HOME": str(rootdir), "TZ": "UTC"}
    env.pop("PGDATA", None)
    try:
        initdb_log = workdir / "initdb.log"
        with open(initdb_log, "ab") as log:
            status = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(datadir),
                    "--auth=trust",
                    "-U",
                    POSTGRES_DB_USER,
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                cwd=rootdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_demote(ids, signal.SIGKILL),
                timeout=120,
                check=False,
            ).returncode
        if status != 0:
            raise PostgresStartError(
                f"initdb exited with status {status}; log tail:\n{log_tail(initdb_log)}"
            )
        hba = datadir / "pg_hba.conf"
        hba.write_text(
            "# pacsflow test cluster: trust, local socket and 127.0.0.1 only\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        _chown(hba, ids)
        server = _start_postmaster(
            bindir,
            ids,
            env,
            rootdir,
            datadir,
            socket_dir,
            workdir,
            timeout=timeout,
            attempts=attempts,
        )
    except BaseException:
        shutil.rmtree(rootdir, ignore_errors=True)
        raise
    if database:
        try:
            server.create_database(database)
        except BaseException:
            server.stop()
            raise
    return server


def _start_postmaster(
    bindir: Path,
    ids: tuple[int, int] | None,
    env: dict[str, str],
    rootdir: Path,
    datadir: Path,
    socket_dir: Path,
    workdir: Path,
    *,
    timeout: float,
    attempts: int,
) -> PostgresServer:
    log_path = workdir / "postgres.log"

    def launch() -> tuple[PostgresServer, int | None, str | None]:
        port = free_port()
        offset = _log_size(log_path)
        process = _spawn(
            [
                str(bindir / "postgres"),
                "-D",
                str(datadir),
                "-p",
                str(port),
                "-k",
                str(socket_dir),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            cwd=rootdir,
            env=env,
            log_path=log_path,
            start_new_session=True,
            # Fast shutdown if the test process dies (SIGTERM would wait for clients).
            preexec_fn=_demote(ids, signal.SIGINT),
        )
        server = PostgresServer(
            port=port,
            pid=process.pid,
            datadir=datadir,
            rootdir=rootdir,
            socket_dir=socket_dir,
            workdir=workdir,
            _process=process,
        )
        status = _wait_postgres_ready(server, process, timeout)
        in_use = status is not None and _log_mentions(
            log_path, offset, "could not bind", "already in use"
        )
        return server, status, f"exit {status} (port {port} in use)" if in_use else None

    return _start_with_retries(
        launch, attempts=attempts, what="postgres", error_cls=PostgresStartError, log_path=log_path
    )


def _wait_postgres_ready(
    server: PostgresServer, process: subprocess.Popen, timeout: float
) -> int | None:
    """None once a connection succeeds; the exit status if postgres died; raises on timeout."""
    import psycopg

    def probe() -> str | None:
        try:
            with server.connect() as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            return str(exc).strip()
        return None

    return _wait_until_ready(
        process,
        probe,
        timeout=timeout,
        interval=0.05,
        stop=lambda: server.stop(remove=False),
        error_cls=PostgresStartError,
        describe=f"postgres (pid {server.pid}) did not accept connections on port {server.port}",
        log_path=server.log_path,
    )


# -- Prefect server -----------------------------------------------------------------


class PrefectStartError(RuntimeError):
    pass


def prefect_binary() -> Path:
    """The ``prefect`` CLI of the running interpreter's environment (the venv's)."""
    return Path(sys.executable).parent / "prefect"


@dataclass
class PrefectServerProcess(_ProcessHandle):
    """A ``prefect server start`` process started by :func:`start_prefect_server`.

    ``pid`` leads its own process group; :meth:`stop` signals the whole group.
    ``startup_seconds`` is the time from spawn to the first healthy ``/health``.
    """

    api_url: str
    pid: int
    home: Path
    port: int = 0
    startup_seconds: float = 0.0
    _process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def log_path(self) -> Path:
        return self.home / "prefect-server.log"

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def terminate(self) -> None:
        """SIGTERM the process group (no wait)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 15) -> None:
        """Wait for the server to exit; SIGKILL the group after ``timeout`` or for stragglers."""
        _wait_gone(self.is_running, time.monotonic() + timeout, process=self._process)
        if self.is_running() or self._group_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            _wait_gone(lambda: self.is_running() or self._group_alive(), time.monotonic() + 10)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)  # reap

    def stop(self, timeout: float = 15) -> None:
        self.terminate()
        self.wait_stopped(timeout)


def prefect_server_env(home: Path, database_url: str | None = None) -> dict[str, str]:
    """Environment for a hermetic server: no inherited ``PREFECT_*`` (API URL, profile...)."""
    from deployments.server import SERVER_SETTINGS

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            **SERVER_SETTINGS,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",  # legacy alias of the line above
        }
    )
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    return env


def start_prefect_server(
    home: Path,
    database_url: str | None = None,
    *,
    timeout: float = 90,
    attempts: int = 3,
    extra_env: Mapping[str, str] | None = None,
) -> PrefectServerProcess:
    """Run a Prefect server on a free 127.0.0.1 port; return once ``/health`` is OK.

    It is the server pacsflow runs locally (:func:`deployments.server.server_command`).

    ``database_url`` is an async SQLAlchemy URL (``postgresql+asyncpg://...``); without it
    the server uses SQLite in ``home``. The server migrates its database on start-up.
    The log is ``home/prefect-server.log``. ``extra_env`` adds settings such as
    ``PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED``.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = prefect_server_env(home, database_url)
    env.update(extra_env or {})
    log_path = home / "prefect-server.log"

    def launch() -> tuple[PrefectServerProcess, int | None, str | None]:
        port = free_port()
        offset = _log_size(log_path)
        started = time.monotonic()
        process = _spawn(
            server_command(LOOPBACK, port),
            cwd=home,
            env=env,
            log_path=log_path,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
        )
        server = PrefectServerProcess(
            api_url=f"http://{LOOPBACK}:{port}/api",
            pid=process.pid,
            home=home,
            port=port,
            _process=process,
        )
        status = _wait_http_ready(
            server.api_url + "/health",
            process,
            timeout,
            server.stop,
            PrefectStartError,
            f"prefect server (pid {server.pid}) did not answer {server.api_url}/health",
            log_path=server.log_path,
            interval=0.1,
        )
        if status is None:
            server.startup_seconds = time.monotonic() - started
            return server, None, None
        server.stop()  # stragglers in the group, if any
        in_use = _log_mentions(log_path, offset, "already in use")
        return server, status, f"exit {status} (port {port} in use)" if in_use else None

    return _start_with_retries(
        launch,
        attempts=attempts,
        what="prefect server",
        error_cls=PrefectStartError,
        log_path=log_path,
    )


@dataclass
class PrefectWorkerProcess(PrefectServerProcess):
    """A ``prefect worker start`` process; stopped like the server (its whole group)."""

    pool: str = ""
    log_file: Path = Path()

    @property
    def log_path(self) -> Path:
        return self.log_file


def start_prefect_worker(
    home: Path, api_url: str, pool: str, *, name: str, timeout: float = 90
) -> PrefectWorkerProcess:
    """Run ``prefect worker start --pool POOL --type process``; return once it polls.

    The worker polls every second (``PREFECT_WORKER_QUERY_SECONDS``, default 10), so a
    test does not wait ten seconds for each flow run it triggers.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    log_path = home / f"worker-{name}.log"
    process = _spawn(
        [str(prefect_binary()), "worker", "start", "--pool", pool, "--type", "process"]
        + ["--name", name],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        log_path=log_path,
        start_new_session=True,
        preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
    )
    worker = PrefectWorkerProcess(
        api_url=api_url,
        pid=process.pid,
        home=home,
        pool=pool,
        log_file=log_path,
        _process=process,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectStartError(f"prefect worker exited: {log_tail(log_path)}")
        if log_path.exists() and "started" in log_path.read_text(errors="replace"):
            return worker
        time.sleep(0.2)
    worker.stop()
    raise PrefectStartError(f"prefect worker did not start in {timeout} s: {log_tail(log_path)}")


def descendants(pid: int) -> list[int]:
    """Every process started under ``pid``, however deep (read from /proc; Linux only).

    A Prefect worker starts each flow run in a new session, so killing the worker's
    group leaves its flow runs alive; a test that means "the machine died" kills these.
    """
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                pending.append(child)
    return found
