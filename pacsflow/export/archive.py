"""One zip per study, byte for byte the same every time it is built from the same files.

Same bytes matter for resuming an upload: a retry that rebuilds the zip can continue a
half-uploaded copy only if the first part it would send is what is already there.
Entries are stored (DICOM pixel data hardly compresses, and storing is ~free) with a
fixed timestamp, in name order. :func:`zip_digest` names one such build, so a partial
upload of another build is recognised and discarded rather than resumed.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

# The earliest time a zip can hold (PKWARE APPNOTE 4.4.6: MS-DOS date, from 1980).
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


def write_study_zip(files: Sequence[Path], target: Path) -> int:
    """Write ``files`` (flat, by name) into the zip ``target``; returns the entry count."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(files, key=lambda p: p.name):
            info = zipfile.ZipInfo(path.name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            with path.open("rb") as source, zf.open(info, "w", force_zip64=True) as entry:
                while chunk := source.read(_CHUNK):
                    entry.write(chunk)
    return len(files)


def zip_digest(path: Path) -> str:
    """A short name for a build: a hash of its central directory (names, CRCs, sizes)."""
    with zipfile.ZipFile(path) as zf:
        listing = "\n".join(f"{i.filename}:{i.CRC:08x}:{i.file_size}" for i in zf.infolist())
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


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
