"""Reading element values the cheap way: VR without decoding, bulk data never touched.

Shared by the identifier collector (on the original) and the walk (on the output).
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsflow.deid.dictionary import dictionary_vr


def tags(*keywords: str) -> frozenset[int]:
    tags = {tag_for_keyword(k) for k in keywords}
    if None in tags:  # a typo here would silently stop collecting an identifier
        raise RuntimeError(f"unknown DICOM keyword in {keywords}")
    return frozenset(t for t in tags if t is not None)


# Bulk data never decoded (pixels, overlays, waveforms, spectra): see module docstring.
BULK_TAGS = tags(
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "WaveformData",
    "SpectroscopyData",
)
OVERLAY_DATA_MASK, OVERLAY_DATA = 0xFF00FFFF, 0x60003000  # (60xx,3000), PS3.3 C.9.2

# Character string VRs (PS3.5 Table 6.2-1).
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
# Text VRs whose values use the Specific Character Set (PS3.5 6.1.2.3); others are ASCII.
CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
BINARY_VRS = frozenset({"OB", "OW", "UN", "OB or OW"})
# Bytes that occur in text (printable ASCII, tab/CR/LF/FF, ESC of ISO 2022, 8-bit
# characters); a byte string with nothing else, once NUL/space padding is stripped, is
# treated as text.
TEXT_BYTES = bytes([9, 10, 12, 13, 27, *range(0x20, 0x7F), *range(0x80, 0x100)])


def is_bulk(tag: int) -> bool:
    return tag in BULK_TAGS or tag & OVERLAY_DATA_MASK == OVERLAY_DATA


def raw_vr(ds: Dataset, tag: int) -> str:
    """VR of an element without decoding it; "UN" when unknown (implicit VR, private)."""
    vr = ds.get_item(tag, keep_deferred=True).VR  # a deferred value stays in its file
    if vr is None or vr == "UN":
        return dictionary_vr(tag)
    return vr


def decoded(ds: Dataset, tag: int) -> DataElement:
    """The element at ``tag`` decoded, as ``ds[tag]`` decodes it, but not stored in ``ds``.

    Why not ``ds[tag]``: that replaces the raw element, which is then written re-encoded
    instead of as the bytes it was read as. The collector reads original datasets that
    are de-identified and written afterwards; what it looks at must leave them as read.
    """
    elem = ds.get_item(tag, keep_deferred=True)
    if not isinstance(elem, RawDataElement) or elem.value is None:
        return ds[tag]  # decoded already, or deferred or empty: pydicom's own path
    if tag == 0x00080005:
        charset: str | list[str] = "iso8859"  # Specific Character Set names the others
    else:  # the choice Dataset.__getitem__ makes
        charset = ds.original_character_set or ds._character_set
    return convert_raw_data_element(elem, encoding=charset, ds=ds)


def value_strings(value: object) -> list[str]:
    """Each value of an element as a string (PN, DS, IS, dates via their str())."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v is not None and str(v)]
    return [str(value)]
