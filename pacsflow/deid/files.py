"""Read an instance, and write a de-identified one atomically, in its own transfer syntax.

Why split from de-identification: the pipeline reads once, de-identifies in memory, runs
the PHI gate on the result, and only then writes; a file that fails the gate never
exists where an export could pick it up.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_offset_to_value
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.hooks import hooks

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
    never leaves a half-written file that a later export could take as finished. Values
    still in the source file are copied from it into the output as it is written, and
    stay in the file afterwards (``ds`` is left as it was).
    """
    with _deferred_streamed(ds):
        # The 128-byte preamble (PS3.10 7.1) is free for application use; dual-format
        # files put a TIFF header there, which may carry identifiers. Write zeros instead.
        ds.preamble = None
        dst = Path(dst)
        tmp = os.path.join(os.path.dirname(dst), f".{dst.name}.part")
        try:
            try:
                ds.save_as(tmp, enforce_file_format=True)
            except FileNotFoundError:
                # The folder is missing (the first instance of a study): create it then,
                # not before every write, where the check costs as much as a small element.
                if os.path.isdir(os.path.dirname(tmp) or "."):
                    raise
                dst.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return dst


_PREAD = getattr(os, "pread", None)  # POSIX; elsewhere seek and read

STREAM_CHUNK = 1024 * 1024
"""Bytes pydicom copies at a time from a streamed value into the output, at least.

pydicom copies a buffered value in chunks of ``config.settings.buffered_read_size``,
8 KiB by default: 64 reads and 64 writes for a CT slice's 512 KB of pixel data, about a
quarter of the whole write of such an instance (3.9-5.1 ms against 2.8-3.4 ms with 1 MiB
chunks, measured). The setting is pydicom's, process-wide, and used for nothing else
than copying buffered values (pydicom 3.0); it is raised, never lowered."""


class _FileRange(io.BufferedIOBase):
    """Bytes ``[start, start + length)`` of an open file, as a readable, seekable buffer.

    Why: pydicom writes an element whose value is a buffer chunk by chunk into the output
    ("buffered" values, pydicom 3); a value read into memory first (512 KB of pixel data
    for a CT slice) is copied three more times on its way out, which costs about a tenth
    of the whole de-identification of such an instance.
    """

    def __init__(self, file: BinaryIO, start: int, length: int) -> None:
        super().__init__()
        self._file, self._start, self._length, self._position = file, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}
        self._position = max(0, base[whence] + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._position
        count = remaining if size is None or size < 0 else min(size, remaining)
        if count <= 0:
            return b""
        offset = self._start + self._position
        if _PREAD is not None:  # one call, and no file position shared with the header check
            data = _PREAD(self._file.fileno(), count, offset)
        else:
            self._file.seek(offset)
            data = self._file.read(count)
        if len(data) != count:  # the file is shorter than when it was read
            raise SourceChanged("a value deferred to the write is missing from its file")
        self._position += count
        return data


@contextmanager
def _deferred_streamed(ds: Dataset) -> Iterator[None]:
    """For the write: check that the source file of ``ds``'s deferred values has not
    changed (:class:`SourceChanged` if it has), and let pydicom copy OB and OW values
    from it as it writes them; afterwards ``ds`` holds its deferred elements again.

    Why check: ``save_as`` reads a deferred value from the file; pydicom only warns when
    that file changed, and the instance written would be the header of one file with the
    pixel data of another. The modification time is checked on the file opened for the
    copy, so the file checked is the file read. A value streamed is first checked, as
    pydicom checks it, to start with the element (tag and VR) it was read as; any other
    deferred value is read by pydicom, from the same unchanged file.
    """
    path, stamp = getattr(ds, "filename", None), getattr(ds, "timestamp", None)
    stored = ds._dict
    deferred = [
        elem
        for elem in stored.values()  # as stored: iterating the Dataset would decode
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0
    ]
    if not deferred or not isinstance(path, str) or stamp is None:
        yield  # nothing deferred, or read from a buffer: pydicom's own path
        return
    buffer = getattr(ds, "buffer", None)
    if buffer is not None and not getattr(buffer, "closed", False):
        # pydicom reads the values from the buffer it keeps (a deflated file, inflated
        # in memory: offsets are not the file's), as Dataset.__getitem__ chooses.
        if os.stat(path).st_mtime != stamp:
            raise SourceChanged(f"{path} changed since it was read; read it again")
        yield
        return
    if config.settings.buffered_read_size < STREAM_CHUNK:
        config.settings.buffered_read_size = STREAM_CHUNK
    with open(path, "rb") as source:
        if os.fstat(source.fileno()).st_mtime != stamp:
            raise SourceChanged(f"{path} changed since it was read; read it again")
        streamed: list[RawDataElement] = []
        try:
            for raw in deferred:
                elem = _streamed_element(ds, raw, source)
                if elem is not None:
                    stored[raw.tag] = elem
                    streamed.append(raw)
            yield
        finally:
            for raw in streamed:
                stored[raw.tag] = raw


def _streamed_element(ds: Dataset, raw: RawDataElement, source: BinaryIO) -> DataElement | None:
    """The element pydicom would decode ``raw`` as, its value a :class:`_FileRange` of
    ``source``; None when pydicom should read it (not OB or OW, explicit VR UN, undefined
    or odd length, a conversion callback)."""
    if raw.length == 0xFFFFFFFF or raw.length % 2 or config.data_element_callback:
        return None  # pydicom pads an odd buffered value after writing its odd length
    if raw.VR in ("OB", "OW"):
        vr = raw.VR
    elif raw.VR is None:  # implicit VR: pydicom's own VR lookup, then its correction
        found: dict[str, Any] = {}
        hooks.raw_element_vr(raw, found, encoding=None, ds=ds, **hooks.raw_element_kwargs)
        vr = found["VR"]
        if vr not in ("OB", "OW", "OB or OW"):
            return None
    else:
        return None  # explicit UN stays UN or not depending on the value's length
    offset = data_element_offset_to_value(raw.is_implicit_VR, raw.VR)
    source.seek(raw.value_tell - offset)
    header = source.read(offset)
    group, element = struct.unpack("<HH" if raw.is_little_endian else ">HH", header[:4])
    if (group << 16 | element) != raw.tag or (
        raw.VR is not None and header[4:6] != raw.VR.encode()
    ):
        raise ValueError(f"Deferred read tag or VR does not match original {raw.tag!r}")
    elem = DataElement(raw.tag, vr, _FileRange(source, raw.value_tell, raw.length), raw.value_tell)
    if vr == "OB or OW":
        elem = correct_ambiguous_vr_element(elem, ds, raw.is_little_endian)
        if elem.VR not in ("OB", "OW"):
            return None
    return elem
