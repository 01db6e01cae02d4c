"""Apply the Basic Application Level Confidentiality Profile to a dataset or a file.

Why in place and lazily: this runs on every retrieved instance. pydicom keeps elements
as undecoded raw bytes until they are accessed, and writes untouched raw elements back
verbatim. So we only decode what the profile changes, UI values and sequences; pixel data
and every other kept attribute are never decoded or copied, and stay byte-identical.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from pacsflow.deid.basic_profile import (
    KEEP_UID_TAGS,
    STANDARD_UID_ROOT,
    TABLE_VERSION,
    Action,
    action_for,
)
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.errors import ConfigError

PROFILE_NAMES = frozenset({"basic"})
"""De-identification profiles this version implements."""

DEIDENTIFICATION_METHOD = f"pacsflow basic profile (PS3.15 E.1.1, table {TABLE_VERSION})"
"""Value of (0012,0063) De-identification Method; LO, so at most 64 characters."""

# PS3.16 CID 7050 "De-identification Method": the code for the Basic Profile.
_BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

# File Meta Information kept (PS3.10 7.1); pydicom regenerates the group length, version
# and implementation fields. Source/sending/receiving AE titles and presentation addresses
# (0002,0016)-(0002,0028) name the hospital's systems; private information (0002,0100)
# and (0002,0102) is vendor data: all dropped.
_FILE_META_KEEP = frozenset({0x00020002, 0x00020003, 0x00020010})

# Dummy values valid for each VR (PS3.5 Table 6.2-1), for action D.
_DUMMY_BY_VR: dict[str, object] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMOUS",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMOUS",
    "LT": "ANONYMOUS",
    "PN": "ANONYMOUS",
    "SH": "ANONYMOUS",
    "ST": "ANONYMOUS",
    "TM": "000000",
    "UC": "ANONYMOUS",
    "UR": "ANONYMOUS",
    "UT": "ANONYMOUS",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}


def check_profile(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a profile this version implements."""
    if name not in PROFILE_NAMES:
        known = ", ".join(sorted(PROFILE_NAMES))
        raise ConfigError(f"unknown de-identification profile {name!r}; known profiles: {known}")


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    """The VR the data dictionary gives ``tag``, or "UN" for a tag it does not know."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _vr_of(ds: Dataset, tag: int) -> str:
    """VR of an element without decoding its value (implicit VR files store none)."""
    vr = ds.get_item(tag).VR
    if vr is None or vr == "UN":
        # Implicit VR, or explicit UN written by a system that did not know the tag:
        # pydicom decodes it with the dictionary VR (config replace_un_with_known_vr).
        return _dictionary_vr(tag)
    return vr


def _new_uid(value: str, pseudonymizer: Pseudonymizer) -> str:
    value = value.strip("\x00 ")
    if not value or value.startswith(STANDARD_UID_ROOT):
        return value  # empty, or a well-known UID from PS3.6 Annex A: identifies nobody
    return pseudonymizer.uid(value)


def _remap_uid_element(elem: DataElement, pseudonymizer: Pseudonymizer) -> None:
    value = elem.value
    if isinstance(value, str):
        elem.value = _new_uid(value, pseudonymizer)
    elif isinstance(value, MultiValue | list):  # e.g. Failed SOP Instance UID List
        elem.value = [_new_uid(v, pseudonymizer) for v in value]


def _dummy(elem: DataElement, pseudonymizer: Pseudonymizer) -> None:
    if elem.VR == "UI":
        _remap_uid_element(elem, pseudonymizer)
        return
    dummy = _DUMMY_BY_VR.get(elem.VR.split(" ")[0])  # "US or SS" -> "US"
    if dummy is None:
        elem.value = empty_value_for_VR(elem.VR)
    elif elem.VM > 1 and not isinstance(dummy, bytes):
        elem.value = [dummy] * elem.VM  # keep the multiplicity the IOD may require
    else:
        elem.value = dummy


def _deidentify_items(ds: Dataset, pseudonymizer: Pseudonymizer) -> None:
    """Apply the profile to one dataset (top level or a sequence item), in place."""
    for tag in list(ds.keys()):
        action = action_for(tag)
        if action is None:
            if not tag & 0xFFFF:
                # Group Length (gggg,0000) is retired (PS3.5 7.2) and would be wrong now.
                del ds[tag]
                continue
            vr = _vr_of(ds, tag)
            if vr == "UI":
                if tag not in KEEP_UID_TAGS:
                    _remap_uid_element(ds[tag], pseudonymizer)
            elif vr == "SQ":
                for item in ds[tag].value:
                    _deidentify_items(item, pseudonymizer)
            elif vr == "UN":
                # A public tag no dictionary knows: we cannot tell what it holds.
                del ds[tag]
            continue
        if action is Action.REMOVE or action is Action.CLEAN:
            del ds[tag]
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            if action is Action.ZERO:
                elem.value = Sequence()
            else:  # D, U, K on a sequence: keep it, de-identify what is inside
                for item in elem.value:
                    _deidentify_items(item, pseudonymizer)
        elif action is Action.ZERO:
            elem.value = empty_value_for_VR(elem.VR)
        elif action is Action.DUMMY:
            _dummy(elem, pseudonymizer)
        elif action is Action.UID:
            _remap_uid_element(elem, pseudonymizer)
        # Action.KEEP: nothing to do.


def _deidentify_file_meta(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in list(meta.keys()):
        if tag not in _FILE_META_KEEP:
            del meta[tag]
    if "SOPInstanceUID" in ds:
        # PS3.10 7.1: must equal the SOP Instance UID of the dataset it describes.
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def deidentify_dataset(
    ds: Dataset, pseudonymizer: Pseudonymizer, patient_pseudonym: str
) -> Dataset:
    """De-identify ``ds`` in place with the Basic Profile and return it.

    Patient ID and Patient's Name become ``patient_pseudonym``; every instance UID becomes
    ``pseudonymizer.uid(original)``, so references between the instances of a study (and
    across studies of the same project key) stay consistent.
    """
    _deidentify_items(ds, pseudonymizer)
    # Patient Module (PS3.3 C.7.1.1): Patient's Name and Patient ID are Type 2; we give
    # the research pseudonym rather than the table's Z so exports can be linked per patient.
    ds.PatientName = patient_pseudonym
    ds.PatientID = patient_pseudonym
    # SOP Common Module (PS3.3 C.12.1.1.4): record that and how the instance was
    # de-identified; PS3.15 E.1.1 requires Patient Identity Removed = YES.
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    _deidentify_file_meta(ds)
    return ds


def deidentify_file(
    src: Path, dst: Path, pseudonymizer: Pseudonymizer, patient_pseudonym: str
) -> None:
    """Read ``src``, de-identify it and write it to ``dst`` in the same transfer syntax.

    The file is written under a temporary name and renamed, so a crash never leaves a
    half-written file that a later export could pick up as finished.
    """
    ds = pydicom.dcmread(src)
    deidentify_dataset(ds, pseudonymizer, patient_pseudonym)
    # The 128-byte preamble (PS3.10 7.1) is free for application use; dual-format files
    # put a TIFF header there, which may carry identifiers. Write zeros instead.
    ds.preamble = None
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
