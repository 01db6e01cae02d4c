"""``inspect_instance``: one original instance's pixels and bulk data, against the policy.

Runs on each instance as retrieved, before the de-identification profile, because what
it looks at (BurnedInAnnotation, Modality, ImageType, the SOP class, JPEG segments) must
be seen as the device wrote it. The order of the steps:

1. The header's risk (:mod:`.risk`). An encapsulated document is quarantined at once.
2. Bulk data (:mod:`.bulk`): icons always go; overlays, curves and waveforms go unless
   the project keeps them, and what is kept is scanned.
3. COM/APPn segments are stripped from encapsulated frames (:mod:`.segments`); a
   compressed stream we cannot parse is quarantined.
4. The pixels, by policy:

   ``quarantine``
       BurnedInAnnotation YES, or a prone class without a credible NO: quarantined,
       without OCR (it would not change the outcome). A prone class with a credible
       NO, and every image if ``ocr_every_image``: OCR, and quarantined if it finds text.
   ``clean``
       Every image the risk rules flag (and every image if ``ocr_every_image``) has the
       regions its deid recipe knows masked (:mod:`.masking`), then is OCR'd; text still
       found quarantines it. So does YES with no known region to mask: the header says
       there is text and OCR missing it is no proof that it is gone.

Images no rule flags (CT, MR, PT without screen-capture signs) are not OCR'd by default:
OCR costs ~0.2-0.5 s per image, 100x the rest of de-identification.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from pacsflow.config import PixelPolicyMode
from pacsflow.deid.pixels.bulk import handle_bulk
from pacsflow.deid.pixels.images import frames_for_ocr
from pacsflow.deid.pixels.ocr import OcrUnavailable, find_text
from pacsflow.deid.pixels.policy import PixelPolicy
from pacsflow.deid.pixels.risk import Risk, RiskLevel, assess
from pacsflow.deid.pixels.segments import strip_encapsulated
from pacsflow.deid.pixels.verdict import PixelOutcome, PixelVerdict


class _Inspection:
    """Collects reasons, actions and OCR cost while the steps run."""

    def __init__(self, policy: PixelPolicy) -> None:
        self.policy = policy
        self.reasons: list[str] = []
        self.actions: list[str] = []
        self.ocr_images = 0
        self.ocr_seconds = 0.0

    def ocr(self, picture, where: str) -> bool:
        """OCR one picture; True (and a reason) when it has text or cannot be read."""
        try:
            found = find_text(picture, self.policy.settings.ocr_min_confidence)
        except OcrUnavailable as exc:  # held, not exported unseen; the reason says the fix
            self.reasons.append(str(exc))
            return True
        self.ocr_images += 1
        self.ocr_seconds += found.seconds
        if found.words:
            self.reasons.append(f"OCR found text in {where}")
        return bool(found.words)

    def ocr_pixels(self, ds: Dataset) -> None:
        try:
            for index, picture in frames_for_ocr(ds, self.policy.settings.ocr_max_frames):
                frame = f" frame {index + 1}" if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ""
                if self.ocr(picture, f"PixelData{frame}"):
                    return
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "not inspected"
            meta = getattr(ds, "file_meta", None) or {}
            syntax = meta.get("TransferSyntaxUID", "unknown transfer syntax")
            self.reasons.append(
                f"PixelData could not be decoded for OCR ({type(exc).__name__} on "
                f"{getattr(syntax, 'name', syntax)}): install a pydicom decoder for it"
            )

    def verdict(self) -> PixelVerdict:
        if self.reasons:
            outcome = PixelOutcome.QUARANTINE
        elif self.actions:
            outcome = PixelOutcome.CLEANED
        else:
            outcome = PixelOutcome.PASSED
        return PixelVerdict(
            outcome,
            tuple(self.reasons),
            tuple(self.actions),
            self.ocr_images,
            self.ocr_seconds,
        )


def _needs_pixels(risk: Risk, policy: PixelPolicy) -> bool:
    return risk.level > RiskLevel.NONE or policy.settings.ocr_every_image


def _quarantine_policy(ds: Dataset, risk: Risk, run: _Inspection) -> None:
    if risk.level >= RiskLevel.LIKELY:
        run.reasons.append(risk.reason or "pixels at risk")
    elif _needs_pixels(risk, run.policy):
        run.ocr_pixels(ds)


def _clean_policy(ds: Dataset, risk: Risk, run: _Inspection) -> None:
    from pacsflow.deid.pixels.masking import mask_known_regions

    if not _needs_pixels(risk, run.policy):
        return
    try:
        masked = mask_known_regions(ds, run.policy.recipe_files)
    except Exception as exc:  # noqa: BLE001 - a pixel decoder or deid failure: not cleaned
        run.reasons.append(f"PixelData could not be masked ({type(exc).__name__})")
        return
    if masked.regions:
        run.actions.append(
            f"masked {masked.regions} region(s) of PixelData with deid recipe "
            + ", ".join(masked.recipes)
        )
    elif risk.level is RiskLevel.STATED:
        run.reasons.append("BurnedInAnnotation is YES and no deid recipe knows where to mask")
        return
    run.ocr_pixels(ds)


def inspect_instance(ds: Dataset, policy: PixelPolicy) -> PixelVerdict:
    """Inspect (and where the policy says, clean) one ORIGINAL instance, in place.

    Returns a verdict whose reasons and actions name rules and attributes only. Call it
    before the de-identification profile; quarantine the study when any instance's
    verdict is ``quarantine``.
    """
    run = _Inspection(policy)
    risk = assess(ds)
    if risk.level is RiskLevel.UNINSPECTABLE:
        run.reasons.append(risk.reason or "not inspectable")
        return run.verdict()

    settings = policy.settings
    bulk = handle_bulk(
        ds,
        keep_overlays=settings.keep_overlays,
        keep_curves=settings.keep_curves,
        keep_waveforms=settings.keep_waveforms,
    )
    run.actions += [f"removed {name}" for name in bulk.removed]
    run.reasons += bulk.suspicious
    for number, bitmap in enumerate(bulk.overlays):
        run.ocr(bitmap, f"kept overlay {number + 1}")

    stripped = strip_encapsulated(ds)
    if stripped.not_inspectable:
        run.reasons.append(stripped.not_inspectable)
    if stripped.segments:
        run.actions.append(f"stripped {stripped.segments} COM/APPn segment(s) from PixelData")

    if "PixelData" not in ds or run.reasons:
        return run.verdict()
    if policy.mode is PixelPolicyMode.CLEAN:
        _clean_policy(ds, risk, run)
    else:
        _quarantine_policy(ds, risk, run)
    return run.verdict()
