"""Where retrieved instances land: one raw staging folder per study.

Used by our C-MOVE receiver and by C-GET alike. The handler only writes the bytes it
was sent (a slow ``EVT_C_STORE`` handler throttles the sender) and returns a status
(PS3.4 Annex B.2.3).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections import defaultdict
from pathlib import Path

from pynetdicom import evt

LOGGER = logging.getLogger(__name__)

_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000


def study_dir(staging: Path, study_uid: str) -> Path:
    """The raw folder for a study; named by a hash so paths carry no UID."""
    digest = hashlib.sha256(study_uid.encode()).hexdigest()[:32]
    return staging / "incoming" / digest


def handle_store(event: evt.Event, staging: Path) -> int:
    """Write one received instance to its study's folder, atomically."""
    try:
        ds = event.dataset
        study_uid = str(ds.StudyInstanceUID)
        sop_uid = str(ds.SOPInstanceUID)
    except Exception:  # a dataset we cannot read: refuse it, keep serving others
        LOGGER.exception("received an instance without readable study/SOP UIDs")
        return _CANNOT_UNDERSTAND
    folder = study_dir(staging, study_uid)
    name = hashlib.sha256(sop_uid.encode()).hexdigest()[:32] + ".dcm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.{threading.get_ident()}.part"
        with partial.open("wb") as handle:
            handle.write(event.encoded_dataset(include_meta=True))
        os.replace(partial, folder / name)
    except OSError:
        LOGGER.exception("could not write a received instance to staging")
        return _OUT_OF_RESOURCES
    return _SUCCESS


def count_instances(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.dcm")) if folder.is_dir() else 0


def clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class StudyLocks:
    """One lock per study UID, so two projects never fill or empty one folder at once."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    def for_study(self, study_uid: str) -> threading.Lock:
        with self._guard:
            return self._locks[study_uid]
