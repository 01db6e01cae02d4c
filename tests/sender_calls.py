"""Functions a test runs in sender processes (they must be importable by name there)."""

from __future__ import annotations

import os
import time

from pacsflow.errors import PermanentError


def pid_after(seconds: float) -> int:
    """This process's pid, after ``seconds`` (so that calls overlap)."""
    time.sleep(seconds)
    return os.getpid()


def refuse(message: str) -> None:
    raise PermanentError(message)


def die() -> None:
    os._exit(9)  # as a sender killed mid-transfer


def die_or_pid(dying: bool) -> int:
    """End this process at once when ``dying``, else answer its pid."""
    if dying:
        die()
    return os.getpid()
