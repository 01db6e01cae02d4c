"""Read an instance, and write a de-identified one atomically, in its own transfer syntax.

Why split from de-identification: the pipeline reads once, de-identifies in memory, runs
the PHI gate on the result, and only then writes; a file that fails the gate never
exists where an export could pick it up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

DEFER_SIZE = 64 * 1024
"""Values longer than this (pixel data, in practice) stay in the file until needed.

Why: a study's headers are read once and kept while the study is de-identified
(:mod:`pacsflow.deid.study`); its pixel data must not be. pydicom reads a deferred value
when something accesses it (the pixel inspection, the gate for a large binary value) or,
if nothing did, when ``save_as`` writes the instance."""


class SourceChanged(OSError):
    """The file a deferred value is still to be read from changed since it was read."""


def read_instance(src: str | Path) -> Dataset:
    """Read a DICOM file: header parsed, values over :data:`DEFER_SIZE` left in the file.

    Pixel data stays undecoded bytes until accessed; the file must not change until the
    instance is written (:func:`write_instance` checks that it did not).
    """
    return pydicom.dcmread(str(src), defer_size=DEFER_SIZE)


def write_instance(ds: Dataset, dst: str | Path) -> Path:
    """Write ``ds`` to ``dst`` in the transfer syntax it was read in; return ``dst``.

    The file is written under a temporary name in the same folder and renamed, so a crash
    never leaves a half-written file that a later export could take as finished.
    """
    _check_source(ds)
    # The 128-byte preamble (PS3.10 7.1) is free for application use; dual-format files
    # put a TIFF header there, which may carry identifiers. Write zeros instead.
    ds.preamble = None
    dst = Path(dst)
    tmp = os.path.join(os.path.dirname(dst), f".{dst.name}.part")
    try:
        try:
            ds.save_as(tmp, enforce_file_format=True)
        except FileNotFoundError:
            # The folder is missing (the first instance of a study): create it then, not
            # before every write, where the check costs as much as a small element.
            if os.path.isdir(os.path.dirname(tmp) or "."):
                raise
            dst.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


def _check_source(ds: Dataset) -> None:
    """Raise :class:`SourceChanged` if ``ds`` still has a deferred value and its file's
    modification time is not the one it was read with.

    Why: ``save_as`` reads such a value from the file; pydicom only warns when that file
    changed, and the instance written would be the header of one file with the pixel
    data of another.
    """
    path, stamp = getattr(ds, "filename", None), getattr(ds, "timestamp", None)
    if not isinstance(path, str) or stamp is None:
        return
    deferred = any(
        isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0
        for elem in ds._dict.values()  # as stored: iterating the Dataset would decode
    )
    if deferred and os.stat(path).st_mtime != stamp:
        raise SourceChanged(f"{path} changed since it was read; read it again")
