"""One zip per study, byte for byte the same every time it is built from the same files.

Same bytes matter for resuming an upload: a retry that rebuilds the zip can continue a
half-uploaded copy only if the first part it would send is what is already there.
Entries are stored (DICOM pixel data hardly compresses, and storing is ~free) with a
fixed timestamp, in name order. :attr:`StudyZip.digest` names one such build, so a
partial upload of another build is recognised and discarded rather than resumed.

A :class:`StudyZip` is never written out to be sent: a stored zip is the files' bytes
between headers that depend only on names, sizes and CRCs, so one pass computes the
CRCs and :meth:`StudyZip.open` then reads the zip, from any offset, straight out of the
study's files. An upload thus reads each file twice from the page cache instead of
writing, and reading back, a second copy of the study on disk. The layout follows
PKWARE's APPNOTE (sections cited below), Zip64 only where a size or offset needs it.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pacsflow.errors import RetriableError

_CHUNK = 1 << 20
# The earliest time a zip can hold (APPNOTE 4.4.6: MS-DOS date, from 1980): 1980-01-01.
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1
_VERSION = 45  # 4.5: Zip64 (APPNOTE 4.4.3)
_MADE_BY = (3 << 8) | _VERSION  # 3: Unix, so external_attr holds the mode (4.4.2)
_EXTERNAL_ATTR = 0o100644 << 16  # a regular file, rw-r--r--
_UTF8_NAME = 1 << 11  # general purpose flag bit 11 (4.4.4)
# A size, offset or count from these limits on moves to a Zip64 extra field or record,
# leaving the classic field at its maximum (4.4.8: "see Zip64").
_ZIP64_LIMIT = 0xFFFFFFFF
_COUNT_LIMIT = 0xFFFF


def _field32(value: int) -> int:
    return value if value < _ZIP64_LIMIT else 0xFFFFFFFF


def _field16(value: int) -> int:
    return value if value < _COUNT_LIMIT else 0xFFFF


#: Part of the digest: a layout change must not resume a partial upload of the old one.
_LAYOUT = "pacsflow-stored-zip/2"


class StudyChanged(RetriableError):
    """A file of the study changed while its zip was being read (size or CRC differ)."""


@dataclass(frozen=True)
class _Entry:
    path: Path
    name: bytes
    size: int
    crc: int
    offset: int  # of its local header in the zip

    @property
    def flags(self) -> int:
        return 0 if self.name.isascii() else _UTF8_NAME

    def local_header(self) -> bytes:
        """Local file header (APPNOTE 4.3.7), sizes in a Zip64 extra field if large."""
        extra, size32 = b"", _field32(self.size)
        if self.size >= _ZIP64_LIMIT:
            extra = struct.pack("<HHQQ", 1, 16, self.size, self.size)
        fixed = struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            _VERSION,
            self.flags,
            zipfile.ZIP_STORED,
            _DOS_TIME,
            _DOS_DATE,
            self.crc,
            size32,
            size32,
            len(self.name),
            len(extra),
        )
        return fixed + self.name + extra

    def central_header(self) -> bytes:
        """Central directory header (APPNOTE 4.3.12), with a Zip64 extra field if needed."""
        large = [self.size, self.size] if self.size >= _ZIP64_LIMIT else []
        if self.offset >= _ZIP64_LIMIT:
            large.append(self.offset)
        extra = struct.pack(f"<HH{len(large)}Q", 1, 8 * len(large), *large) if large else b""
        size32 = _field32(self.size)
        fixed = struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            _MADE_BY,
            _VERSION,
            self.flags,
            zipfile.ZIP_STORED,
            _DOS_TIME,
            _DOS_DATE,
            self.crc,
            size32,
            size32,
            len(self.name),
            len(extra),
            0,  # comment length
            0,  # disk number start
            0,  # internal attributes
            _EXTERNAL_ATTR,
            _field32(self.offset),
        )
        return fixed + self.name + extra


def _end_records(count: int, directory_offset: int, directory_size: int) -> bytes:
    """End of central directory (4.3.16), after the Zip64 record and locator if needed."""
    records = b""
    if count >= _COUNT_LIMIT or directory_offset >= _ZIP64_LIMIT or directory_size >= _ZIP64_LIMIT:
        zip64_offset = directory_offset + directory_size
        records += struct.pack(
            "<4sQHHIIQQQQ",
            b"PK\x06\x06",  # Zip64 end of central directory record (4.3.14)
            44,  # size of the rest of this record
            _MADE_BY,
            _VERSION,
            0,
            0,
            count,
            count,
            directory_size,
            directory_offset,
        )
        records += struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_offset, 1)  # locator, 4.3.15
    records += struct.pack(
        "<4sHHHHIIH",
        b"PK\x05\x06",
        0,
        0,
        _field16(count),
        _field16(count),
        _field32(directory_size),
        _field32(directory_offset),
        0,  # comment length
    )
    return records


def _directory_and_end(entries: Sequence[_Entry], data_end: int) -> bytes:
    """The central directory of ``entries``, starting at ``data_end``, and the end records."""
    directory = b"".join(e.central_header() for e in entries)
    return directory + _end_records(len(entries), data_end, len(directory))


def _crc_and_size(path: Path) -> tuple[int, int]:
    crc, size = 0, 0
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


def _digest(listing: Sequence[tuple[str, int, int]]) -> str:
    lines = [_LAYOUT] + [f"{name}:{crc:08x}:{size}" for name, crc, size in listing]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


class StudyZip:
    """The zip of a study's files (flat, by name), read from the files on demand.

    Building it reads every file once, for its CRC; nothing is written. ``data_end`` is
    where the central directory starts, ``tail`` the directory and end records.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self.entries: list[_Entry] = []
        offset = 0
        for path in sorted(files, key=lambda p: p.name):
            crc, size = _crc_and_size(path)
            entry = _Entry(path, path.name.encode("utf-8"), size, crc, offset)
            self.entries.append(entry)
            offset += len(entry.local_header()) + size
        self.tail = _directory_and_end(self.entries, offset)
        self.data_end = offset
        self.size = offset + len(self.tail)

    @property
    def digest(self) -> str:
        """A short name for this build: a hash of its names, CRCs and sizes."""
        return _digest([(e.name.decode("utf-8"), e.crc, e.size) for e in self.entries])

    def open(self) -> io.RawIOBase:
        """A seekable reader of the zip's bytes (its files must not change meanwhile)."""
        return _StudyZipReader(self)


class _StudyZipReader(io.RawIOBase):
    """Reads a :class:`StudyZip`: headers from memory, contents from the study's files.

    An entry read from its first byte to its last is checked against the size and CRC
    the zip declares for it, so a file changed since the CRC pass fails the transfer
    (:class:`StudyChanged`) instead of leaving a zip whose entry does not match its CRC.
    """

    def __init__(self, study_zip: StudyZip) -> None:
        self._zip = study_zip
        self._starts = [e.offset for e in study_zip.entries]
        self._position = 0
        self._open: tuple[_Entry, BinaryIO] | None = None
        self._crc: int | None = None  # running CRC of the open entry, if read from its start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._zip.size}
        self._position = max(0, base[whence] + offset)
        self._crc = None  # a jump: the open entry is no longer read in one sweep
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._position < self._zip.size:
            count = self._read_part(view[filled:])
            filled += count
            self._position += count
        return filled

    def close(self) -> None:
        self._close_entry()
        super().close()

    def _read_part(self, view: memoryview) -> int:
        """Fill ``view`` from the current position up to the end of one part of the zip."""
        if self._position >= self._zip.data_end:
            return _copy(self._zip.tail, self._position - self._zip.data_end, view)
        entry = self._zip.entries[bisect.bisect_right(self._starts, self._position) - 1]
        header = entry.local_header()
        within = self._position - entry.offset
        if within < len(header):
            return _copy(header, within, view)
        return self._read_content(entry, within - len(header), view)

    def _read_content(self, entry: _Entry, at: int, view: memoryview) -> int:
        handle = self._entry_file(entry, at)
        view = view[: entry.size - at]
        count = handle.readinto(view)
        if not count:
            raise StudyChanged(
                f"{entry.path.name} is shorter than when its study's zip was built; "
                "the next attempt builds it again"
            )
        if self._crc is not None:
            self._crc = zlib.crc32(view[:count], self._crc)
            if at + count == entry.size:
                self._check_end(entry, handle)
        return count

    def _entry_file(self, entry: _Entry, at: int) -> BinaryIO:
        """The open file of ``entry``, positioned at ``at`` (opening it if need be)."""
        if self._open is None or self._open[0] is not entry:
            self._close_entry()
            self._open = (entry, entry.path.open("rb"))
            self._crc = 0 if at == 0 else None
        handle = self._open[1]
        if handle.tell() != at:
            handle.seek(at)
            self._crc = None
        return handle

    def _check_end(self, entry: _Entry, handle: BinaryIO) -> None:
        if self._crc != entry.crc or handle.read(1):
            raise StudyChanged(
                f"{entry.path.name} changed after its study's zip was built (CRC or size "
                "differ); the next attempt builds it again"
            )

    def _close_entry(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def _copy(source: bytes, start: int, view: memoryview) -> int:
    piece = source[start : start + len(view)]
    view[: len(piece)] = piece
    return len(piece)


def write_study_zip(files: Sequence[Path], target: Path) -> int:
    """Write ``files`` (flat, by name) into the zip ``target``; returns the entry count.

    The bytes :meth:`StudyZip.open` reads, in one pass over the files instead of two: a
    local file can be patched, so each header is written before its file's CRC is known
    and corrected once the file is copied.
    """
    entries = []
    with target.open("wb") as sink:
        for path in sorted(files, key=lambda p: p.name):
            entries.append(_copy_entry(path, sink))
        sink.write(_directory_and_end(entries, sink.tell()))
    return len(entries)


_CRC_FIELD = 14  # where the CRC-32 is in a local file header (APPNOTE 4.3.7)


def _copy_entry(path: Path, sink: BinaryIO) -> _Entry:
    """Append ``path``'s header and bytes to ``sink``; its entry, CRC included."""
    offset = sink.tell()
    crc, copied = 0, 0
    with path.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        sink.write(_Entry(path, path.name.encode("utf-8"), size, 0, offset).local_header())
        while chunk := source.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            copied += len(chunk)
            sink.write(chunk)
    if copied != size:
        raise StudyChanged(f"{path.name} changed size while it was being zipped")
    end = sink.tell()
    sink.seek(offset + _CRC_FIELD)
    sink.write(struct.pack("<I", crc))
    sink.seek(end)
    return _Entry(path, path.name.encode("utf-8"), size, crc, offset)


def zip_digest(path: Path) -> str:
    """The :attr:`StudyZip.digest` of a zip on disk, from its central directory."""
    with zipfile.ZipFile(path) as zf:
        return _digest([(i.filename, i.CRC, i.file_size) for i in zf.infolist()])


def count_entries(path: Path) -> int:
    """Entries in a complete local zip (raises ``zipfile.BadZipFile`` if it is not one)."""
    with zipfile.ZipFile(path) as zf:
        return len(zf.infolist())


#: Bytes from the end of a zip that hold its entry count (EOCD, Zip64 locator and record).
TAIL_BYTES = 22 + 20 + 56
_EOCD = b"PK\x05\x06"
_ZIP64_EOCD = b"PK\x06\x06"


def entries_from_tail(tail: bytes) -> int | None:
    """The entry count a zip's last :data:`TAIL_BYTES` bytes declare, None if not a zip end.

    Lets a remote zip be counted without downloading it. Our zips have no comment, so the
    End of Central Directory record (APPNOTE 4.3.16) is the last 22 bytes; when its count
    is 0xFFFF the real one is in the Zip64 record (4.3.14) just before the locator.
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
