"""Where retrieved instances land: one raw staging folder per project and study.

Two projects may ask for the same study at once (in one process or in two), so the
folder is keyed by both: neither can fill or clear the other's. Used by our C-MOVE
receiver (which finds the folder through :mod:`pacsflow.dicom.routes`) and by C-GET.
The handler only writes the bytes it was sent (a slow ``EVT_C_STORE`` handler throttles
the sender) and returns a status (PS3.4 Annex B.2.3).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from pynetdicom import evt

LOGGER = logging.getLogger(__name__)

_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000
_PROCESSING_FAILURE = 0x0110


def study_dir(staging: Path, project: str, study_uid: str) -> Path:
    """The raw folder for one project's copy of a study; a hash, so paths carry no UID."""
    digest = hashlib.sha256(f"{project}|{study_uid}".encode()).hexdigest()[:32]
    return Path(staging) / "incoming" / digest


def instance_file_name(sop_uid: str) -> str:
    """The staged file of one instance: a hash, so names carry no UID, and the same for
    every copy, so an instance received twice is held once."""
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:32] + ".dcm"


def handle_store(event: evt.Event, folder_for: Callable[[str], Path | None]) -> int:
    """Write one received instance, atomically, to the folder ``folder_for(study UID)``.

    An instance of a study nobody asked for (no folder) is refused, not kept.
    """
    try:
        ds = event.dataset
        study_uid = str(ds.StudyInstanceUID)
        sop_uid = str(ds.SOPInstanceUID)
    except Exception:  # a dataset we cannot read: refuse it, keep serving others
        LOGGER.exception("received an instance without readable study/SOP UIDs")
        return _CANNOT_UNDERSTAND
    folder = folder_for(study_uid)
    if folder is None:
        LOGGER.warning("refused an instance of a study no retrieval is waiting for")
        return _PROCESSING_FAILURE
    name = instance_file_name(sop_uid)
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


def missing_instances(folder: Path, sop_uids: Iterable[str]) -> list[str]:
    """Those of ``sop_uids`` that ``folder`` does not hold, in the order given.

    Only complete files count: one being written is a hidden ``.part`` file until renamed.
    """
    held = {path.name for path in folder.glob("*.dcm")} if folder.is_dir() else set()
    return [uid for uid in sop_uids if instance_file_name(uid) not in held]


def clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
