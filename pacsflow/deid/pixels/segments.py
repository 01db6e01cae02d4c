"""Strip comment and application segments from encapsulated frames, without re-encoding.

A JPEG stream may carry COM segments (free text: "Patient DOE^JANE, scanned by ...") and
APPn segments (Exif with dates and device serials, XMP, ICC profiles, even a thumbnail of
the image with its burned-in text) next to the compressed picture (ITU-T T.81 B.2.4;
JPEG-LS, T.87, uses the same marker syntax). A JPEG 2000 codestream may carry COM
segments in its main and tile-part headers (ITU-T T.800 A.9.2). None of them is needed
to decode the picture, and the DICOM header, not the stream, says how to interpret it
(PS3.5 8.2.1), so they are dropped and the entropy-coded data is copied byte for byte:
no generation loss, no decoder needed.

Two small APP segments are kept because decoders read them and they have no room for
text: a JFIF APP0 without thumbnail (16 bytes) and an Adobe APP14 (14 bytes, its colour
transform flag).

Transfer syntaxes whose frames this module cannot parse (MPEG-2, H.264, HEVC, JPEG XL,
and any it does not know) are reported as not inspectable; the caller quarantines them.
RLE Lossless has no metadata segments, so it is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import RLELossless

_SOI, _SOS, _EOI, _COM = 0xD8, 0xDA, 0xD9, 0xFE
_SOF_LS = 0xF7  # JPEG-LS start of frame (T.87): different byte stuffing after SOS
_J2K_SOC = b"\xff\x4f\xff\x51"
_J2K_COM, _J2K_SOT, _J2K_SOD, _J2K_EOC = 0x64, 0x90, 0x93, 0xD9


class UnreadableStream(ValueError):
    """A frame is not the well-formed JPEG or JPEG 2000 stream its transfer syntax says."""


@dataclass(frozen=True)
class Stripped:
    segments: int = 0
    """COM/APPn segments removed over all frames."""
    not_inspectable: str | None = None
    """Why the frames could not be inspected (the caller quarantines), or None."""


def _keep_app(marker: int, segment: bytes) -> bool:
    payload = segment[4:]
    if marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(segment) == 18:
        return payload[12:14] == b"\x00\x00"  # thumbnail width and height both 0
    return marker == 0xEE and payload.startswith(b"Adobe") and len(segment) == 16


def _next_marker(data: bytes, start: int, jpeg_ls: bool) -> int:
    """Offset of the first marker after entropy-coded data that begins at ``start``."""
    i = start
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            raise UnreadableStream("entropy-coded data runs to the end without EOI")
        follower = data[i + 1]
        if jpeg_ls:
            is_marker = follower >= 0x80  # T.87 A.1: FF then a 0 bit is stuffing
        else:
            is_marker = follower not in (0x00, 0xFF) and not 0xD0 <= follower <= 0xD7
        if is_marker:
            return i
        i += 1


def strip_jpeg(data: bytes) -> tuple[bytes, int]:
    """Return ``data`` without COM/APPn segments (except the two kept), and how many went."""
    if data[:2] != b"\xff\xd8":
        raise UnreadableStream("frame does not start with a JPEG SOI marker")
    out, removed, i, jpeg_ls = bytearray(data[:2]), 0, 2, False
    while i < len(data):
        if data[i] != 0xFF or i + 1 >= len(data):
            raise UnreadableStream(f"expected a JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == _EOI:
            out += data[i:]
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        end = i + 2 + length
        if length < 2 or end > len(data):
            raise UnreadableStream(f"JPEG segment at byte {i} runs past the end of the frame")
        segment = data[i:end]
        jpeg_ls = jpeg_ls or marker == _SOF_LS
        if marker == _COM or (0xE0 <= marker <= 0xEF and not _keep_app(marker, segment)):
            removed += 1
        else:
            out += segment
        if marker == _SOS:  # copy the scan's entropy-coded data up to the next marker
            after = _next_marker(data, end, jpeg_ls)
            out += data[end:after]
            end = after
        i = end
    return bytes(out), removed


def _j2k_segments(data: bytes, start: int, stop_marker: int) -> tuple[bytearray, int, int]:
    """Copy marker segments from ``start`` up to ``stop_marker``, dropping COM."""
    out, removed, i = bytearray(), 0, start
    while True:
        if i + 4 > len(data) or data[i] != 0xFF:
            raise UnreadableStream(f"expected a JPEG 2000 marker at byte {i}")
        marker = data[i + 1]
        if marker == stop_marker:
            return out, removed, i
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == _J2K_COM:
            removed += 1
        else:
            out += data[i:end]
        i = end


def strip_j2k(data: bytes) -> tuple[bytes, int]:
    """Return a JPEG 2000 codestream without COM segments, with tile-part lengths fixed."""
    if not data.startswith(_J2K_SOC):
        raise UnreadableStream("frame does not start with a JPEG 2000 SOC and SIZ marker")
    header, removed, i = _j2k_segments(data, 2, _J2K_SOT)
    out = bytearray(data[:2]) + header
    while i + 1 < len(data) and data[i + 1] == _J2K_SOT:
        psot = int.from_bytes(data[i + 6 : i + 10], "big")
        tile_end = i + psot if psot else len(data) - 2
        tile_header, dropped, sod = _j2k_segments(data, i + 12, _J2K_SOD)
        removed += dropped
        new_psot = psot - (sod - (i + 12) - len(tile_header)) if psot else 0
        out += data[i : i + 6] + new_psot.to_bytes(4, "big") + data[i + 10 : i + 12]
        out += tile_header + data[sod:tile_end]
        i = tile_end
    out += data[i:]
    return bytes(out), removed


def _stripper(first_frame: bytes):
    if first_frame.startswith(b"\xff\xd8"):
        return strip_jpeg
    if first_frame.startswith(_J2K_SOC):
        return strip_j2k
    return None


def strip_encapsulated(ds: Dataset) -> Stripped:
    """Strip every frame of ``ds``'s encapsulated PixelData in place; report what went.

    Native (uncompressed) pixel data and RLE are left alone. The pixel data is rewritten
    only when a segment was removed, so an untouched instance keeps its exact bytes.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds or syntax is None or not syntax.is_encapsulated:
        return Stripped()
    if syntax == RLELossless:
        return Stripped()
    frames_wanted = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=frames_wanted))
    except (ValueError, TypeError) as exc:
        return Stripped(not_inspectable=f"PixelData fragments cannot be split into frames ({exc})")
    stripper = _stripper(frames[0]) if frames else None
    if stripper is None:
        return Stripped(
            not_inspectable=f"PixelData in {syntax.name} cannot be inspected for metadata"
        )
    try:
        results = [stripper(frame) for frame in frames]
    except UnreadableStream as exc:
        return Stripped(not_inspectable=f"PixelData in {syntax.name} is malformed: {exc}")
    removed = sum(count for _, count in results)
    if removed:
        cleaned = [frame for frame, _ in results]
        if "ExtendedOffsetTable" in ds:
            data, offsets, lengths = encapsulate_extended(cleaned)
            ds.PixelData, ds.ExtendedOffsetTable = data, offsets
            ds.ExtendedOffsetTableLengths = lengths
        else:
            ds.PixelData = encapsulate(cleaned, has_bot=len(cleaned) > 1)
    return Stripped(segments=removed)
