"""Where the C-MOVE receiver puts a study: routes shared by every process on the host.

A C-MOVE tells the source to send a study to our AE title; the instances then arrive on
an association the source opens, which says nothing about which project asked. Before a
move, the requester writes a route, ``<staging>/routes/<hash of study UID>.json``, naming
the folder the study must land in; the receiver, whichever process runs it, reads it for
every instance. A route is created exclusively, so it is also the lock that keeps two
projects from moving the same study at once (the second waits). A route left by a killed
process is removed by the next one that needs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pacsflow.errors import RetriableError
from pacsflow.processes import process_is_gone, this_process

#: A route older than this is stale whoever holds it (a move that hangs this long has
#: timed out on the network long before).
MAX_ROUTE_AGE = 6 * 3600.0


def route_file(staging: Path, study_uid: str) -> Path:
    digest = hashlib.sha256(study_uid.encode()).hexdigest()[:32]
    return Path(staging) / "routes" / f"{digest}.json"


def lookup(staging: Path, study_uid: str) -> Path | None:
    """The folder an arriving instance of ``study_uid`` goes to; None if nobody asked."""
    try:
        return Path(json.loads(route_file(staging, study_uid).read_text())["folder"])
    except (OSError, ValueError, KeyError):
        return None


def _stale(path: Path) -> bool:
    try:
        route = json.loads(path.read_text())
        age = time.time() - float(route["created"])
        return process_is_gone(str(route["owner"])) or age > MAX_ROUTE_AGE
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError):
        return True  # half-written by a process killed mid-write


def _try_create(path: Path, folder: Path) -> bool:
    body = json.dumps({"folder": str(folder), "owner": this_process(), "created": time.time()})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    return True


@contextlib.contextmanager
def expect_study(
    staging: Path, study_uid: str, folder: Path, wait: float = 600.0, poll: float = 0.05
) -> Iterator[None]:
    """Route arriving instances of ``study_uid`` to ``folder`` while the block runs.

    Waits while another move of the same study (another project's) is under way, up to
    ``wait`` seconds, then raises RetriableError so the study is tried again later.
    """
    path = route_file(staging, study_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while not _try_create(path, folder):
        if _stale(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        if time.monotonic() > deadline:
            raise RetriableError(
                f"another retrieval of the same study has been under way for {wait:.0f} s; "
                "this one will be tried again"
            )
        time.sleep(poll)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
