"""Pixel data as the 8-bit grayscale pictures OCR reads.

OCR needs a picture, not a stored value: signed 16-bit CT, MONOCHROME1 (white is 0),
colour, multi-frame cine. Each frame is scaled to 0-255 over its own range (burned-in
text is drawn at or near the brightest value, so no window setting is needed to see it),
MONOCHROME1 is inverted, and colour is converted to luminance.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def sample_indices(frames: int, most: int) -> list[int]:
    """Up to ``most`` frame indices, evenly spaced, always with the first and the last."""
    if frames <= most:
        return list(range(frames))
    if most == 1:
        return [0]
    step = (frames - 1) / (most - 1)
    return sorted({round(i * step) for i in range(most)})


def to_uint8(frame: np.ndarray, photometric: str) -> np.ndarray:
    """One decoded frame as a 2-D uint8 array, white text on whatever background."""
    if frame.ndim == 3:  # rows x columns x samples: luminance (ITU-R BT.601)
        frame = frame[..., :3] @ np.array([0.299, 0.587, 0.114])
    values = frame.astype(np.float64, copy=False)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        scaled = np.zeros(values.shape, dtype=np.uint8)
    else:
        scaled = ((values - low) * (255.0 / (high - low))).astype(np.uint8)
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled


def frames_for_ocr(ds: Dataset, most: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame index, uint8 picture)`` for up to ``most`` frames of ``ds``.

    Decoding goes through pydicom's pixel handlers (Pillow decodes baseline JPEG); a
    transfer syntax no installed handler can decode raises, and the caller quarantines.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    indices = sample_indices(frame_count(ds), most)
    frames = iter_pixels(ds, indices=indices) if frame_count(ds) > 1 else iter_pixels(ds)
    for index, frame in zip(indices, frames, strict=False):
        yield index, to_uint8(frame, photometric)
