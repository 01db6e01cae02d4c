"""Risk rules: what the header says about burned-in text, and how far to believe it.

``BurnedInAnnotation`` (0028,0301), PS3.3 C.7.6.1.1.9 (General Image Module), says
whether an image "contains sufficient burned in annotation to identify the patient and
date the image was acquired". It is Type 3 in most image IODs, so it is often absent,
and a device that writes it does not always tell the truth.

Which images are prone to burned-in text (the lists below), and why:

* Ultrasound, angiography and fluoroscopy (US, XA, RF), projection radiography (CR, DX,
  MG, IO, PX), visible-light imaging (ES, XC, GM, SM, OP) and "other" (OT, DOC): these
  devices write the patient's name, ID and date into the image itself, or the image is a
  photograph or a scan of paper. The CTP-derived filter list that the ``deid`` library
  ships (``deid/data/deid.dicom``, from CTP's DicomPixelAnonymizer script) holds 73
  ultrasound entries against 21 for CT, and flags "Any Scanned Document or Secondary
  Save" (OT) and NM screen saves; PS3.15 Annex E's Clean Pixel Data Option (E.3.1)
  exists because such text cannot be removed by changing attributes.
* Secondary capture SOP classes (PS3.4 B.5: 1.2.840.10008.5.1.4.1.1.7 and .7.1-.7.4),
  whatever their Modality: a screen shot of anything, from a device that cannot know what
  the pixels show. Their ``BurnedInAnnotation`` NO is therefore not credible; nor is it
  on an image whose ImageType says it is a screen save or capture (the deid list's
  "Burned In Annotation" entry flags ImageType SAVE for the same reason).
* Video and visible-light photographic classes (PS3.4 B.5, 1.2.840.10008.5.1.4.1.1.77.*).

Encapsulated documents (PDF, CDA, 3D models; 1.2.840.10008.5.1.4.1.1.104.*) are not
images: nothing here can inspect them, so they are never exported unseen.

Where the header says NO and the class is prone but NO is credible, the claim is checked
by OCR rather than believed or rejected outright: rejecting it would quarantine every
ultrasound study, which is the kind of false alarm that gets a gate switched off.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pydicom.dataset import Dataset

PRONE_MODALITIES = frozenset(
    {"US", "XA", "RF", "CR", "DX", "MG", "IO", "PX", "ES", "XC", "GM", "SM", "OP", "OT", "DOC"}
)
"""Modalities whose devices commonly burn identifiers into the pixels (see the module doc)."""

SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    }
)

PRONE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
    }
)
"""SOP classes prone to burned-in text whatever Modality they carry."""

_VISIBLE_LIGHT_PREFIX = "1.2.840.10008.5.1.4.1.1.77."
_DOCUMENT_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
_CAPTURE_IMAGE_TYPES = ("SCREEN", "SAVE", "CAPTURE", "REPORT", "DEMOGRAPHIC")
"""ImageType words (any value) that mean a picture of a screen or a form, not an acquisition."""


class RiskLevel(IntEnum):
    """How likely burned-in text is, from the header alone; ordered, higher is worse."""

    NONE = 0
    """Nothing in the header suggests text; OCR only if the policy asks for every image."""
    CLAIMED_NONE = 1
    """A prone class says NO, credibly: OCR checks the claim."""
    LIKELY = 2
    """A prone class without the attribute, or whose NO is not credible."""
    STATED = 3
    """BurnedInAnnotation is YES."""
    UNINSPECTABLE = 4
    """Not an image we can look at (an encapsulated document): never exported unseen."""


@dataclass(frozen=True)
class Risk:
    level: RiskLevel
    reason: str | None = None
    """Why, naming attributes and classes only; None when the level is NONE."""


def _is_capture(ds: Dataset, sop_class: str) -> str | None:
    """Why this instance is a capture whose NO means nothing, or None."""
    if sop_class in SECONDARY_CAPTURE_CLASSES:
        return "secondary capture SOP class"
    image_type = [str(value).upper() for value in _values(ds.get("ImageType"))]
    if any(word in value for value in image_type for word in _CAPTURE_IMAGE_TYPES):
        return "ImageType says screen save or capture"
    return None


def _values(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)  # MultiValue
    except TypeError:
        return [value]


def _prone(ds: Dataset, sop_class: str) -> str | None:
    """Why this instance's class is prone to burned-in text, or None."""
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality in PRONE_MODALITIES:
        return f"Modality {modality}"
    if sop_class in PRONE_CLASSES or sop_class.startswith(_VISIBLE_LIGHT_PREFIX):
        return f"SOP class {sop_class}"
    return None


def assess(ds: Dataset) -> Risk:
    """Classify one instance by its header. Reads a few attributes; never the pixels."""
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    if sop_class.startswith(_DOCUMENT_PREFIX) or "EncapsulatedDocument" in ds:
        return Risk(RiskLevel.UNINSPECTABLE, "EncapsulatedDocument is not inspected")
    claim = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if claim == "YES":
        return Risk(RiskLevel.STATED, "BurnedInAnnotation is YES")
    said = {"NO": "NO is not credible", "": "is absent"}.get(claim, "is neither YES nor NO")
    capture = _is_capture(ds, sop_class)
    if capture:
        return Risk(RiskLevel.LIKELY, f"{capture}: BurnedInAnnotation {said}")
    prone = _prone(ds, sop_class)
    if prone is None:
        return Risk(RiskLevel.NONE)
    if claim == "NO":
        return Risk(RiskLevel.CLAIMED_NONE, f"{prone} claims BurnedInAnnotation NO")
    return Risk(
        RiskLevel.LIKELY, f"{prone} is prone to burned-in text and BurnedInAnnotation {said}"
    )
