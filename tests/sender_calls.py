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


def write_pid_and_sleep(path: str, seconds: float) -> None:
    """Say which process runs this call (in ``path``), then take ``seconds``."""
    with open(path + ".part", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(path + ".part", path)
    time.sleep(seconds)


class OddError(Exception):
    """An exception whose constructor does not take its own args: it does not unpickle."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def raise_odd() -> None:
    raise OddError(7, "odd")
