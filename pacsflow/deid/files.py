"""Read an instance, and write a de-identified one atomically, in its own transfer syntax.

Why split from de-identification: the pipeline reads once, de-identifies in memory, runs
the PHI gate on the result, and only then writes; a file that fails the gate never
exists where an export could pick it up.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


def read_instance(src: str | Path) -> Dataset:
    """Read a DICOM file whole (pixel data stays undecoded bytes until accessed)."""
    return pydicom.dcmread(src)


def write_instance(ds: Dataset, dst: str | Path) -> Path:
    """Write ``ds`` to ``dst`` in the transfer syntax it was read in; return ``dst``.

    The file is written under a temporary name in the same folder and renamed, so a crash
    never leaves a half-written file that a later export could take as finished.
    """
    # The 128-byte preamble (PS3.10 7.1) is free for application use; dual-format files
    # put a TIFF header there, which may carry identifiers. Write zeros instead.
    ds.preamble = None
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst
