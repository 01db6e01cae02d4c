"""Pixel PHI: burned-in text, overlays, waveforms and JPEG metadata, per instance.

The entry point is :func:`inspect_instance`, called on every original instance before the
de-identification profile. One module per concept: :mod:`.risk` (what the header says),
:mod:`.bulk` (overlays, curves, waveforms, icons), :mod:`.segments` (COM/APPn in
encapsulated frames), :mod:`.images` and :mod:`.ocr` (finding text), :mod:`.masking`
(deid's recipes and cleaner), :mod:`.policy` and :mod:`.verdict`.
"""

from pacsflow.deid.pixels.inspection import inspect_instance
from pacsflow.deid.pixels.policy import PixelPolicy
from pacsflow.deid.pixels.verdict import PixelOutcome, PixelVerdict

__all__ = ["PixelOutcome", "PixelPolicy", "PixelVerdict", "inspect_instance"]
