"""The demo's deployments, served in the background so the Prefect UI can start pulls.

``pacsflow demo`` ends by starting ``pacsflow serve --sandbox FOLDER`` as a process of its
own: it hosts the demo's two sandbox PACS and a C-MOVE receiver again (a served run needs
its sources) and serves extract-project, check-project and process-studies against the
server the demo used. Its pid is recorded in ``.pacsflow/prefect/served.json``, beside the
local server's ``server.json``, with a random token that is also put in the process's
environment (``PACSFLOW_SERVED``): a recorded pid is signalled only while it is that
process, never a process that took the number later.

There is one such process per checkout: a new demo stops the last one first (its sandbox
is about to be rebuilt), and ``pacsflow server stop`` stops it before the server.

Like :mod:`deployments.server`, this module does not import prefect.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from deployments.server import DEFAULT_HOME, _api, _stop_group, pid_alive

STATE_FILE = "served.json"
#: The environment variable that marks the served process with its token.
MARK = "PACSFLOW_SERVED"
#: The deployment a user runs from the UI.
DEPLOYMENT = "extract-project/extract-project"


@dataclass(frozen=True)
class ServedState:
    """What ``served.json`` records about the demo's served process."""

    pid: int
    token: str
    folder: str
    api_url: str
    log: str
    #: When it was started (ISO 8601, UTC): it is serving once it polled after that.
    started: str


def _state_path(home: Path) -> Path:
    return home / STATE_FILE


def read_served(home: Path = DEFAULT_HOME) -> ServedState | None:
    try:
        return ServedState(**json.loads(_state_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def is_running(state: ServedState | None) -> bool:
    """The recorded process is alive and is the one we started (it carries our token)."""
    if state is None or not pid_alive(state.pid):
        return False
    try:
        environ = Path(f"/proc/{state.pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARK}={state.token}".encode() in environ


def stop_served(home: Path = DEFAULT_HOME, wait: float = 20.0) -> ServedState | None:
    """Stop the served process (and the flow runs it started) by its recorded pid, wait
    for it to exit and forget it. Returns its state, or None if none was running."""
    home = home.resolve()
    state = read_served(home)
    if state is None:
        return None
    running = is_running(state)
    if running:
        # Prefect may start a flow run in a session of its own, out of the group's reach.
        runs = _descendants(state.pid)
        _stop_group(state.pid, wait)
        for pid in runs:
            _stop_process(pid, wait)
    _state_path(home).unlink(missing_ok=True)
    return state if running else None


def _descendants(pid: int) -> list[int]:
    """Every process started under ``pid``, however deep (from /proc)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found.extend(children)
                pending.extend(children)
    return found


def _stop_process(pid: int, wait: float) -> None:
    """SIGTERM one process left after its group was stopped; SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)


def start_served(folder: Path, api_url: str, home: Path = DEFAULT_HOME) -> ServedState:
    """Start ``pacsflow serve --sandbox folder`` in its own session and record it.

    Any served process recorded before is stopped first, so there is never a second one.
    """
    home = home.resolve()
    stop_served(home)
    home.mkdir(parents=True, exist_ok=True)
    folder = Path(folder).resolve()
    log_path = folder / "serve.log"
    token = secrets.token_hex(16)
    started = datetime.now(UTC).isoformat()
    env = {**os.environ, MARK: token, "PREFECT_API_URL": api_url}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "deployments.cli", "serve", "--sandbox", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # outlives the demo; stopped as a group
        )
    state = ServedState(process.pid, token, str(folder), api_url, str(log_path), started)
    path = _state_path(home)
    path.write_text(json.dumps(asdict(state), indent=2))
    path.chmod(0o600)
    return state


def wait_until_served(state: ServedState, wait: float = 120.0) -> str | None:
    """Wait until the served process polls for extract-project runs; the deployment's id.

    None if the process exited or did not get there within ``wait`` seconds.
    """
    since = datetime.fromisoformat(state.started)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and is_running(state):
        found = _api(state.api_url, "GET", f"/deployments/name/{DEPLOYMENT}")
        polled = found.get("last_polled") if isinstance(found, dict) else None
        if polled:
            with contextlib.suppress(ValueError):
                if datetime.fromisoformat(polled) >= since:
                    return found["id"]
        time.sleep(0.5)
    return None
