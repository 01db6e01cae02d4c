"""``pacsflow serve`` as the tests run it: started in a process group of its own, stopped
by that group's pid, and waited for until the server has its deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import pytest

PACSFLOW = str(Path(sys.executable).parent / "pacsflow")


def start_serving(env: Mapping[str, str], log: IO[str], *args: str) -> subprocess.Popen:
    """``pacsflow serve ARGS`` in the background, its output in ``log``."""
    return subprocess.Popen(
        [PACSFLOW, "serve", *args],
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_serving(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group (the served runs' subprocesses too), then SIGKILL."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def registered_deployment(client, name: str = "extract-project/extract-project", timeout=90):
    """The deployment ``name`` once the server has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # not registered yet
            time.sleep(1)
    pytest.fail(f"pacsflow serve never registered {name}")
