"""Naming a process so that others can tell whether it still runs.

Claims in the ledger and C-MOVE routes in staging are held by a process. A name made of
host, pid and the kernel's start time of that pid lets another process on the same host
see at once that the holder is gone (pids are reused; start times are not). A holder on
another host is never judged from here: its lease runs out instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot); "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


_names: dict[int, str] = {}


def this_process() -> str:
    """This process's name: ``host:pid:start`` (read once per pid: a forked child has its own)."""
    pid = os.getpid()
    if pid not in _names:
        _names[pid] = f"{socket.gethostname()}:{pid}:{_start_time(pid)}"
    return _names[pid]


def process_is_gone(name: str) -> bool:
    """True when ``name`` was a process on this host that no longer runs."""
    host, _, rest = name.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return _start_time(int(pid_text)) != started
