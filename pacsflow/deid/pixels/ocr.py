"""Find text in a picture with Tesseract (Debian ``tesseract-ocr``, via ``pytesseract``).

Only the fact that text was found leaves this module, with counts: the words themselves
are identifiers in the cases that matter, so they are never returned, logged or stored.

What counts as text (measured on synthetic ultrasound with speckle, see tests and
``bench/pixels.py``): a word of at least :data:`MIN_WORD_CHARACTERS` letters or digits
that Tesseract reads with at least the policy's confidence. Speckle yields one- and
two-character "words" at low confidence, and ultrasound depth scales print one- and
two-digit numbers, neither of which is an identifier. Pictures under
:data:`UPSCALE_BELOW` pixels on their long side are enlarged 2x first: text 10 pixels
high on a 640x480 frame is read at confidence ~20 at its own size and ~90 enlarged,
at about twice the cost.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

import numpy as np

MIN_WORD_CHARACTERS = 3
UPSCALE_BELOW = 1024


class OcrUnavailable(RuntimeError):
    """Tesseract is not installed; the message says how to install it."""


@dataclass(frozen=True)
class TextFound:
    words: int
    """Words that count as text (see the module doc); 0 means none."""
    seconds: float
    """Wall time the OCR took, reported separately from de-identification."""


def ensure_tesseract() -> None:
    """Fail early, and say how to fix it, when the ``tesseract`` program is missing."""
    if shutil.which("tesseract") is None:
        raise OcrUnavailable(
            "the pixel policy needs OCR but the tesseract program is not installed: "
            "install the Debian package tesseract-ocr (scripts/system-deps.sh does)"
        )


def _counts_as_text(word: str, confidence: float, min_confidence: int) -> bool:
    return confidence >= min_confidence and sum(ch.isalnum() for ch in word) >= (
        MIN_WORD_CHARACTERS
    )


def find_text(picture: np.ndarray, min_confidence: int) -> TextFound:
    """OCR one uint8 grayscale picture; count the words that look like real text."""
    import pytesseract  # imported here: projects that never OCR do not need it
    from PIL import Image

    ensure_tesseract()
    image = Image.fromarray(picture)
    if max(image.size) < UPSCALE_BELOW:
        image = image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
    start = time.perf_counter()
    data = pytesseract.image_to_data(image, output_type=pytesseract.Output.DICT)
    seconds = time.perf_counter() - start
    words = sum(
        _counts_as_text(word, float(conf), min_confidence)
        for word, conf in zip(data["text"], data["conf"], strict=True)
    )
    return TextFound(words=words, seconds=seconds)
