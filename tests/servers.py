"""Start and stop real servers (Orthanc for now) for integration tests.

Plain helpers with no pytest import, so benchmarks and scripts can use them too.
The pytest wiring (skip/fail, teardown) lives in ``tests/integration/conftest.py``.

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
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

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


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the child if the test process dies (no orphan servers)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3 (after the parenthesised command name) is the state.
    return stat.rpartition(")")[2].split()[0] != "Z"


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class OrthancServer:
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

    def find_studies(self) -> list[dict[str, Any]]:
        """``GET /studies?expand``: one dict per study, with ``MainDicomTags`` etc."""
        return self.get("/studies?expand")

    # -- lifecycle ----------------------------------------------------------------
    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return _pid_alive(self.pid)

    def terminate(self) -> None:
        """Send SIGTERM (no wait); see :meth:`wait_stopped`."""
        with contextlib.suppress(ProcessLookupError):
            if self.is_running():
                os.kill(self.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 15) -> None:
        """Wait until the process has exited; SIGKILL it after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.is_running() and time.monotonic() < deadline:
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            else:
                time.sleep(0.05)
        if self.is_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if self._process is not None:
                self._process.wait(timeout=10)
            else:
                kill_deadline = time.monotonic() + 10
                while _pid_alive(self.pid) and time.monotonic() < kill_deadline:
                    time.sleep(0.05)
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
    last_error = ""
    for _attempt in range(attempts):
        dicom_port = free_port()
        http_port = free_port()
        while http_port == dicom_port:
            http_port = free_port()
        config = orthanc_config(workdir, aet, dicom_port, http_port, modalities, extra_config)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = workdir / "orthanc.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [binary, str(config_path)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
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
        try:
            status = _wait_ready(server, process, timeout)
        except BaseException:
            server.stop()
            raise
        if status is None:
            return server
        if status == ORTHANC_EXIT_PORT_IN_USE:
            last_error = f"exit {status} (port in use?)"
            continue
        raise OrthancStartError(
            f"Orthanc exited with status {status} during start-up; log tail:\n{log_tail(log_path)}"
        )
    raise OrthancStartError(
        f"Orthanc did not start after {attempts} attempts ({last_error}); log tail:\n"
        f"{log_tail(workdir / 'orthanc.log')}"
    )


def _wait_ready(server: OrthancServer, process: subprocess.Popen, timeout: float) -> int | None:
    """None once ready; the exit status if the process died; raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = process.poll()
        if status is not None:
            return status
        # Orthanc starts its DICOM server before its HTTP server (see its log), so an
        # answering REST API means the DICOM port is listening too: no need to probe it
        # with a bare TCP connect, which Orthanc would log as a failed association.
        try:
            if requests.get(server.base_url + "/system", timeout=2).ok:
                return None
        except requests.RequestException:
            pass
        time.sleep(0.02)
    server.stop()
    raise OrthancStartError(
        f"Orthanc (pid {server.pid}) did not answer on {server.base_url}/system and DICOM port "
        f"{server.dicom_port} within {timeout} s; log tail:\n{log_tail(server.log_path)}"
    )
