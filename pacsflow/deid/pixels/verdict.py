"""What :func:`~pacsflow.deid.pixels.inspect_instance` decided about one instance.

A verdict is safe to store in the ledger and to show in Prefect: its reasons and actions
are rule names and attribute names, never a value of the instance and never the text
that OCR read in the pixels (that text is what must not leave).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PixelOutcome(StrEnum):
    """The three ends of a pixel inspection."""

    PASSED = "passed"
    """Nothing needed changing: the instance goes on to de-identification as it is."""
    CLEANED = "cleaned"
    """Something was removed or masked (see ``actions``); what is left may be exported."""
    QUARANTINE = "quarantine"
    """The instance may carry identifiers in its pixels or bulk data: hold the study back."""


@dataclass(frozen=True)
class PixelVerdict:
    """The outcome, why, what was changed in the dataset, and what OCR cost.

    ``ocr_images`` and ``ocr_seconds`` are reported apart from everything else because
    OCR costs hundreds of milliseconds per image, two orders of magnitude more than the
    rest of de-identification; a project should see what its policy spends.
    """

    outcome: PixelOutcome
    reasons: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    ocr_images: int = 0
    ocr_seconds: float = 0.0

    @property
    def exportable(self) -> bool:
        return self.outcome is not PixelOutcome.QUARANTINE

    def summary(self) -> str:
        """One line for the ledger: the outcome and its reasons (no values)."""
        if not self.reasons:
            return f"pixels {self.outcome.value}"
        return f"pixels {self.outcome.value}: " + "; ".join(self.reasons)
