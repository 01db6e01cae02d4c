"""Overlays, curves, waveforms and icons: bulk data beside the pixels that can carry text.

* Overlay planes (60xx, PS3.3 C.9.2) are bitmaps drawn over the image: annotations,
  measurements, sometimes a name. Curves (50xx, retired PS3.3 2004 C.10.2) held graphs
  and text labels. A project that keeps overlays gets them OCR'd like the image.
* WaveformSequence (5400,0100; PS3.3 C.10.9) holds ECG and other signals; its samples
  are numbers, but a device may write text into them. Kept waveform data is scanned for
  runs of printable characters (what ``strings`` would show).
* IconImageSequence (0088,0200; PS3.3 C.7.6.1.1.6) is a thumbnail of the image, with
  the image's burned-in text in it; it is always removed (nothing needs it).

Overlays embedded in the unused high bits of the pixel data (retired; OverlayBitPosition
without OverlayData) cannot be removed without rewriting the pixels, so they are
reported and the caller quarantines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

ICON_IMAGE_SEQUENCE = 0x00880200
WAVEFORM_SEQUENCE = 0x54000100
_TEXT_RUN = re.compile(rb"[\x20-\x7e]{8,}")
"""Eight printable characters in a row: 16-bit signal samples almost never make one."""
_MIN_LETTERS_IN_RUN = 4


@dataclass
class BulkFindings:
    removed: list[str] = field(default_factory=list)
    """What was removed, as attribute or group names."""
    suspicious: list[str] = field(default_factory=list)
    """Kept bulk data that looks like text, or cannot be cleaned; the caller quarantines."""
    overlays: list[np.ndarray] = field(default_factory=list)
    """Kept overlay bitmaps (uint8, text white), for the caller to OCR."""


def _groups(present: set[int], base: int) -> list[int]:
    """Repeating groups among ``present``: base, base + 2, ... base + 0x1E (PS3.5 7.6)."""
    return [group for group in range(base, base + 0x20, 2) if group in present]


def _remove_group(ds: Dataset, group: int) -> None:
    for tag in [tag for tag in ds.keys() if tag.group == group]:  # noqa: SIM118
        del ds[tag]


def _overlay_bitmap(ds: Dataset, group: int) -> np.ndarray | None:
    """The first frame of overlay plane ``group`` as a 0/255 picture, or None if absent."""
    rows, cols = ds.get((group, 0x0010)), ds.get((group, 0x0011))
    data = ds.get((group, 0x3000))
    if rows is None or cols is None or data is None:
        return None
    height, width = int(rows.value), int(cols.value)
    bits = np.unpackbits(np.frombuffer(data.value, dtype=np.uint8), bitorder="little")
    if bits.size < height * width:
        return None
    return (bits[: height * width].reshape(height, width) * 255).astype(np.uint8)


def _looks_like_text(data: bytes) -> bool:
    for run in _TEXT_RUN.finditer(data):
        if sum(chr(b).isalpha() for b in run.group()) >= _MIN_LETTERS_IN_RUN:
            return True
    return False


def handle_overlays(ds: Dataset, keep: bool, findings: BulkFindings, groups: set[int]) -> None:
    for group in _groups(groups, 0x6000):
        name = f"overlay group {group:04X}"
        if (group, 0x3000) not in ds and (group, 0x0102) in ds:
            findings.suspicious.append(f"{name} is embedded in the PixelData high bits")
            continue
        if not keep:
            _remove_group(ds, group)
            findings.removed.append(name)
            continue
        bitmap = _overlay_bitmap(ds, group)
        if bitmap is not None:
            findings.overlays.append(bitmap)


def handle_curves(ds: Dataset, keep: bool, findings: BulkFindings, groups: set[int]) -> None:
    for group in _groups(groups, 0x5000):
        if keep:
            data = ds.get((group, 0x3000))
            if data is not None and _looks_like_text(bytes(data.value or b"")):
                findings.suspicious.append(f"curve group {group:04X} CurveData holds text")
            continue
        _remove_group(ds, group)
        findings.removed.append(f"curve group {group:04X}")


def handle_waveforms(ds: Dataset, keep: bool, findings: BulkFindings) -> None:
    if WAVEFORM_SEQUENCE not in ds:
        return
    if not keep:
        del ds[WAVEFORM_SEQUENCE]
        findings.removed.append("WaveformSequence")
        return
    for number, item in enumerate(ds.WaveformSequence):
        data = item.get("WaveformData")
        if data is not None and _looks_like_text(bytes(data or b"")):
            findings.suspicious.append(f"WaveformSequence[{number}].WaveformData holds text")


def handle_bulk(
    ds: Dataset, *, keep_overlays: bool, keep_curves: bool, keep_waveforms: bool
) -> BulkFindings:
    """Remove (or scan, where kept) every kind of bulk data above, in place."""
    findings = BulkFindings()
    if ICON_IMAGE_SEQUENCE in ds:
        del ds[ICON_IMAGE_SEQUENCE]
        findings.removed.append("IconImageSequence")
    groups = {tag.group for tag in ds.keys()}  # noqa: SIM118 - tags, without decoding
    handle_overlays(ds, keep_overlays, findings, groups)
    handle_curves(ds, keep_curves, findings, groups)
    handle_waveforms(ds, keep_waveforms, findings)
    return findings
