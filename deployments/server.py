"""Find or start the Prefect server the CLI talks to.

If ``PREFECT_API_URL`` is set, that server is used. Otherwise a local ``prefect server``
is started (or reused) on 127.0.0.1 with its database under ``.pacsflow/prefect``. We do
not use Prefect's ephemeral in-process server: it loses task runs at process exit.

This module must not import prefect: Prefect reads its settings from the environment
when first imported, so the environment is set here first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 4200

#: Server settings pacsflow relies on; set them on any Prefect server it runs against.
#: A task waiting for a tag slot retries after the server's Retry-After, which is the
#: slots' average occupancy capped at this setting (default 10 s). Lanes hold a slot for
#: up to ``lane_seconds``, so without a low cap a freed slot would idle for seconds before
#: another project's lane took it over.
SERVER_SETTINGS = {"PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS": "1"}


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    started_here: bool
    pid: int | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _prefect_executable() -> str:
    beside = Path(sys.executable).parent / "prefect"
    found = str(beside) if beside.exists() else shutil.which("prefect")
    if not found:
        raise RuntimeError("the `prefect` command is not installed in this environment")
    return found


def ensure_server(
    home: Path = Path(".pacsflow/prefect"), port: int = DEFAULT_PORT, wait: float = 90.0
) -> PrefectServer:
    """Return the server to use, starting a local one if needed, and point Prefect at it."""
    if os.environ.get("PREFECT_API_URL"):
        return PrefectServer(os.environ["PREFECT_API_URL"].rstrip("/"), started_here=False)
    home = home.resolve()
    api_url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_HOME"] = str(home)
    if _healthy(api_url):
        os.environ["PREFECT_API_URL"] = api_url
        return PrefectServer(api_url, started_here=False)
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("ab")
    env = {
        **os.environ,
        **SERVER_SETTINGS,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
    }
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        [_prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # keeps serving after this command ends, for the UI
    )
    (home / "server.pid").write_text(str(process.pid))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the local Prefect server exited with code {process.returncode}; "
                f"see {home / 'server.log'} (is port {port} taken? set PREFECT_API_URL instead)"
            )
        if _healthy(api_url):
            os.environ["PREFECT_API_URL"] = api_url
            return PrefectServer(api_url, started_here=True, pid=process.pid)
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"the local Prefect server did not answer within {wait:.0f} s")


def stop_local_server(home: Path = Path(".pacsflow/prefect")) -> bool:
    """Stop the server ``ensure_server`` started, by the pid it recorded."""
    pid_file = home / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, 15)
    pid_file.unlink(missing_ok=True)
    return True
