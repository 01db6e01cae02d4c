"""Find or start the Prefect server the CLI talks to, and know which one is ours.

If ``PREFECT_API_URL`` is set, that server is used. Otherwise pacsflow runs its *own*
local ``prefect server`` on 127.0.0.1 with its database under ``.pacsflow/prefect``. We
do not use Prefect's ephemeral in-process server: it loses task runs at process exit.

"Ours" is proved, never assumed. Two checkouts on one host once silently shared the
server on 127.0.0.1:4200, and with it each other's sources and staging folder. So when
pacsflow starts a server it records, in ``.pacsflow/prefect/server.json``, the pid, port,
home and a random token, and saves that token as a Prefect variable on the new server.
A server is reused only if that file exists, its pid is alive, and the server answering
on its port holds the same token (so it serves our database, not someone else's that
took the port). A server that is not ours is never reused: ours goes on another free port
and the user is told how to point at the other one explicitly.

This module must not import prefect: Prefect reads its settings from the environment
when first imported, so the environment is set here first.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PORT = 4200
#: Where pacsflow keeps its local server's database, log and state file.
DEFAULT_HOME = Path(".pacsflow/prefect")
STATE_FILE = "server.json"
#: The Prefect variable holding the token of the server pacsflow started.
TOKEN_VARIABLE = "pacsflow-server-token"

#: Server settings pacsflow relies on; set them on any Prefect server it runs against.
#:
#: A task waiting for a tag slot retries after the server's Retry-After, which is the
#: slots' average occupancy capped at the first setting (default 10 s). Lanes hold a slot
#: for up to ``lane_seconds``, so without a low cap a freed slot would idle for seconds
#: before another project's lane took it over.
#:
#: The second keeps the slots' leases on disk, under the server's ``PREFECT_HOME``. By
#: default Prefect keeps them in the server's memory while the slot counts are in its
#: database: a server restarted while lanes held slots forgot their leases, and those
#: slots stayed taken for good (a source of limit 2 took no retrieval again, measured),
#: neither given back by the lanes nor expired.
SERVER_SETTINGS = {
    "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": (
        "prefect.server.concurrency.lease_storage.filesystem"
    ),
}


@dataclass(frozen=True)
class PrefectServer:
    """The server the CLI uses. ``ours`` is true for the local server pacsflow runs."""

    api_url: str
    started_here: bool
    pid: int | None = None
    ours: bool = False
    #: Why ours is not on the port that was asked for (a foreign server holds it), if so.
    note: str | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


@dataclass(frozen=True)
class ServerState:
    """What ``server.json`` records about the local server pacsflow started."""

    pid: int
    port: int
    home: str
    token: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _state_path(home: Path) -> Path:
    return home / STATE_FILE


def read_state(home: Path = DEFAULT_HOME) -> ServerState | None:
    """The recorded state of our server, or None if none was recorded (or it is unreadable)."""
    try:
        return ServerState(**json.loads(_state_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, state: ServerState) -> None:
    path = _state_path(home)
    path.write_text(json.dumps(asdict(state), indent=2))
    path.chmod(0o600)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (the test servers use this too)."""
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


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _api(api_url: str, method: str, path: str, body: dict | None = None) -> dict | None:
    """One JSON request to a Prefect server: its answer (``{}`` if empty), None on failure."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{api_url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _server_token(api_url: str) -> str | None:
    found = _api(api_url, "GET", f"/variables/name/{TOKEN_VARIABLE}")
    return found.get("value") if isinstance(found, dict) else None


def _set_token(api_url: str, token: str) -> bool:
    """Save ``token`` on the server (its database may hold the one of our last start)."""
    body = {"name": TOKEN_VARIABLE, "value": token}
    if _api(api_url, "POST", "/variables/", body) is not None:
        return True
    return _api(api_url, "PATCH", f"/variables/name/{TOKEN_VARIABLE}", body) is not None


def runs_on_home(pid: int, home: Path) -> bool:
    """``pid`` is alive and a Prefect process started with ``PREFECT_HOME=home``.

    This is what makes a recorded pid safe to signal: after a reboot the number may
    belong to anything, even to another checkout's Prefect server.
    """
    if not pid_alive(pid):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"PREFECT_HOME={home}".encode() in environ


def is_ours(state: ServerState | None) -> bool:
    """Our recorded server is running and is the one answering on its port."""
    return (
        state is not None
        and pid_alive(state.pid)
        and _healthy(state.api_url)
        and _server_token(state.api_url) == state.token
    )


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (uvicorn binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(host: str, port: int) -> list[str]:
    """The command of a local Prefect server: ``prefect server start``, busy answers retried.

    See :mod:`deployments.server_process` for why it is not ``prefect server start`` itself.
    """
    return [
        sys.executable,
        *("-m", "deployments.server_process"),
        *("--host", host, "--port", str(port)),
    ]


def ensure_server(
    home: Path = DEFAULT_HOME, port: int = DEFAULT_PORT, wait: float = 90.0
) -> PrefectServer:
    """Return the server to use, starting our own local one if needed, and point Prefect at it.

    ``port`` is the port asked for; when something that is not our server holds it,
    ours is started on a free port instead and ``note`` says so.
    """
    if os.environ.get("PREFECT_API_URL"):
        return PrefectServer(os.environ["PREFECT_API_URL"].rstrip("/"), started_here=False)
    home = home.resolve()
    os.environ["PREFECT_HOME"] = str(home)
    state = read_state(home)
    running = state or _legacy_state(home)
    if running is not None and runs_on_home(running.pid, home):
        # Ours: never start a second server on the same database. It may still be
        # starting up (another command just launched it), so give it time to answer.
        deadline = time.monotonic() + wait
        while running.token and time.monotonic() < deadline:
            if is_ours(running):
                os.environ["PREFECT_API_URL"] = running.api_url
                return PrefectServer(running.api_url, False, running.pid, ours=True)
            time.sleep(0.5)
        raise RuntimeError(
            f"pacsflow's Prefect server (pid {running.pid}, home {home}) is running but does "
            f"not answer as ours on port {running.port}; stop it with `pacsflow server stop` "
            f"and run the command again (its log: {home / 'server.log'})"
        )
    note = None
    if not _port_free(port):
        chosen = _free_port()
        prefect = _healthy(_url(port))
        what = "a Prefect server that is not pacsflow's" if prefect else "another program"
        note = (
            f"port {port} is taken by {what}, so pacsflow started its own server on port {chosen}."
        )
        if prefect:  # only a Prefect server can be used instead
            note += f" To use the server on {port} instead, set PREFECT_API_URL={_url(port)}"
        port = chosen
    return _start(home, port, wait, note)


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def _start(home: Path, port: int, wait: float, note: str | None) -> PrefectServer:
    """Start ``prefect server`` on ``port``, mark it with a token and record it as ours."""
    home.mkdir(parents=True, exist_ok=True)
    _state_path(home).unlink(missing_ok=True)
    api_url = _url(port)
    env = {
        **os.environ,
        **SERVER_SETTINGS,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
    }
    env.pop("PREFECT_API_URL", None)
    with (home / "server.log").open("ab") as log:
        process = subprocess.Popen(
            server_command("127.0.0.1", port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # keeps serving after this command ends, for the UI
        )
    # Recorded at once, so a command started meanwhile waits for this server instead of
    # starting a second one on the same database; the token makes it ours once it answers.
    state = ServerState(process.pid, port, str(home), secrets.token_hex(16))
    _write_state(home, state)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _state_path(home).unlink(missing_ok=True)
            raise RuntimeError(
                f"the local Prefect server exited with code {process.returncode}; see "
                f"{home / 'server.log'} (is port {port} taken? set PREFECT_API_URL instead)"
            )
        if _healthy(api_url) and _set_token(api_url, state.token):
            os.environ["PREFECT_API_URL"] = api_url
            return PrefectServer(api_url, True, process.pid, ours=True, note=note)
        time.sleep(0.5)
    _stop_group(process.pid, 15.0)
    _state_path(home).unlink(missing_ok=True)
    raise RuntimeError(
        f"the local Prefect server did not answer within {wait:.0f} s; see {home / 'server.log'}"
    )


def _stop_group(pid: int, wait: float) -> None:
    """SIGTERM the server's process group, wait for it, SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
            if not pid_alive(pid):
                return
            time.sleep(0.2)


def stop_local_server(home: Path = DEFAULT_HOME, wait: float = 20.0) -> ServerState | None:
    """Stop our server by its recorded pid, wait for it to exit and remove the state.

    Returns the state of the server that was stopped, or None if none of ours was running.
    A recorded pid that now belongs to another program (not a Prefect process on this
    home) is not signalled.
    """
    home = home.resolve()
    state = read_state(home) or _legacy_state(home)
    if state is None:
        return None
    running = runs_on_home(state.pid, home)
    if running:
        _stop_group(state.pid, wait)
    _state_path(home).unlink(missing_ok=True)
    (home / "server.pid").unlink(missing_ok=True)
    return state if running else None


def _legacy_state(home: Path) -> ServerState | None:
    """A server started before ``server.json`` existed left only ``server.pid``."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((home / "server.pid").read_text())
        return ServerState(pid=pid, port=DEFAULT_PORT, home=str(home), token="")
    return None
