"""One zip per study, written by the standard library's :mod:`zipfile` as it is sent.

Entries are stored (DICOM pixel data hardly compresses, and storing is ~free) in name
order, each with the same fixed timestamp and mode, so the same files give the same
bytes every time. That is what resuming an upload needs: a retry writes the zip again,
drops the bytes the server already holds and sends the rest. :func:`study_digest` names
one build of a study (names, sizes and modification times of its files, as ``make`` and
``rsync`` tell a changed file), so a partial upload of another build is recognised and
discarded rather than continued with bytes that do not match it.

Nothing is written to local disk on the way to a server (that copy cost more than the
upload): :func:`write_study_zip` writes into any object with a ``write`` method; on one
that cannot seek, such as a data connection, :mod:`zipfile` follows each entry with a
data descriptor instead of going back to its header.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pacsflow.errors import RetriableError

#: The earliest time a zip can hold (MS-DOS dates start in 1980): every entry gets it.
_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
_MODE = 0o100644 << 16  # a regular file, rw-r--r--, in a Unix zip's external attributes
_CHUNK = 1 << 20
#: Part of the digest: a layout change must not resume a partial upload of the old one.
_LAYOUT = "pacsflow-stored-zip/3"


class StudyChanged(RetriableError):
    """A file of the study changed size while its zip was being written."""


def study_digest(files: Sequence[Path]) -> str:
    """A short name for the zip these files make now: changes when any of them changes."""
    lines = [_LAYOUT]
    for path in sorted(files, key=lambda p: p.name):
        stat = path.stat()
        lines.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


class Writable(Protocol):
    """Where a zip can be written: a file open for writing, or a :class:`SkippingWriter`."""

    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


def write_study_zip(files: Sequence[Path], sink: Writable | Path) -> int:
    """Write ``files`` (flat, by name) as a stored zip into ``sink``; returns the entry count.

    ``sink`` is a path to create or an open binary stream (which stays open).
    """
    if isinstance(sink, Path):
        with sink.open("wb") as handle:
            return write_study_zip(files, handle)
    ordered = sorted(files, key=lambda p: p.name)
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in ordered:
            _add(archive, path)
    return len(ordered)


def _add(archive: zipfile.ZipFile, path: Path) -> None:
    info = zipfile.ZipInfo(path.name, date_time=_TIMESTAMP)
    info.external_attr = _MODE
    with path.open("rb") as source:
        # Declared up front so that zipfile chooses Zip64 headers for a file of 4 GiB or more.
        info.file_size = size = source.seek(0, 2)
        source.seek(0)
        with archive.open(info, "w") as entry:
            shutil.copyfileobj(source, entry, _CHUNK)
    if info.file_size != size:
        raise StudyChanged(
            f"{path.name} changed size while its study's zip was written; the next "
            "attempt writes it again"
        )


class SkippingWriter:
    """A write-only stream that drops its first ``skip`` bytes and passes on the rest.

    Resuming an upload: the zip is written again from its start and only what the
    server does not hold yet goes out. It cannot seek, so :mod:`zipfile` streams into it;
    writes are gathered into blocks of ``block`` bytes before they are sent.
    """

    def __init__(self, send: Callable[[bytes], object], skip: int = 0, block: int = _CHUNK):
        self._send = send
        self._skip = skip
        self._block = block
        self._buffer = bytearray()
        self.written = 0  # bytes of the zip seen, skipped ones included

    def write(self, data: bytes) -> int:
        start, self.written = self.written, self.written + len(data)
        if self.written > self._skip:
            self._buffer += memoryview(data)[max(0, self._skip - start) :]
            if len(self._buffer) >= self._block:
                self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._send(bytes(self._buffer))
            self._buffer.clear()

    @property
    def sent(self) -> int:
        """Bytes passed on (after :meth:`flush`): the zip's size minus the skipped part."""
        return max(0, self.written - self._skip)


def count_entries(path: Path) -> int:
    """Entries in a complete local zip (raises ``zipfile.BadZipFile`` if it is not one)."""
    with zipfile.ZipFile(path) as zf:
        return len(zf.infolist())


#: Bytes from the end of a zip that hold its entry count (EOCD, Zip64 locator and record).
TAIL_BYTES = 22 + 20 + 56
_EOCD = b"PK\x05\x06"
_ZIP64_EOCD = b"PK\x06\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"


def entries_from_tail(tail: bytes) -> int | None:
    """The entry count a zip's last :data:`TAIL_BYTES` bytes declare, None if not a zip end.

    Lets a remote zip be counted without downloading it. Our zips have no comment, so the
    End of Central Directory record (PKWARE APPNOTE 4.3.16) is the last 22 bytes; when
    its count is 0xFFFF the real one is in the Zip64 record (4.3.14) before the locator.
    """
    if len(tail) < 22 or tail[-22:-18] != _EOCD:
        return None
    (total,) = struct.unpack("<H", tail[-12:-10])
    if total != 0xFFFF:
        return total
    record = tail[-22 - 20 - 56 : -22 - 20]
    if len(record) != 56 or record[:4] != _ZIP64_EOCD:
        return None
    (total64,) = struct.unpack("<Q", record[32:40])
    return total64


def ends_whole(tail: bytes, size: int) -> bool:
    """Whether a zip of ``size`` bytes whose last bytes are ``tail`` ends right there.

    True when its end records place the central directory so that it reaches exactly
    to them (APPNOTE 4.3.16; 4.3.14 when the Zip64 locator is there). An upload cut off
    at any other point fails this, even one whose last bytes happen to look like an end
    record.
    """
    if len(tail) < 22 or tail[-22:-18] != _EOCD:
        return False
    cd_size, cd_offset = struct.unpack("<II", tail[-10:-2])
    records = 22
    if len(tail) >= TAIL_BYTES and tail[-42:-38] == _ZIP64_LOCATOR:
        record = tail[-TAIL_BYTES:-42]
        if record[:4] != _ZIP64_EOCD:
            return False
        cd_size, cd_offset = struct.unpack("<QQ", record[40:56])
        records = TAIL_BYTES
    return cd_offset + cd_size + records == size
