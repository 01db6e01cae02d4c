"""The Basic Application Level Confidentiality Profile action table (PS3.15 Annex E).

Why a library: Table E.1-1 has ~650 rows and changes in most DICOM releases (2024b to
2026c added ~50 rows, e.g. Gender Identity and Pronoun attributes). Typing it in would
freeze our copy at whatever day it was typed. ``dicom-anonymizer`` (Kitware, BSD) ships
the table, scraped from the standard per release, as plain lists of tag tuples that
import with no side effects beyond importing its own package (no I/O, no logging setup).
We pin one release of the table (:data:`TABLE_VERSION`) so that a library upgrade cannot
silently change what an export contains; moving to a newer table is a one-line change
that the tests then exercise.

Compound codes are resolved here, once, to the choice that is safest and still conforms
(PS3.15 E.1.1 lets the de-identifier pick among the listed actions):

* ``X/Z``, ``X/D``, ``X/Z/D``: remove, unless the attribute is Type 1 or 2 in a common
  IOD, in which case zero (Type 2) or dummy (Type 1) so the output stays valid.
* ``Z/D``: dummy when the attribute is Type 1 in a common IOD, else zero.
* ``X/Z/U*`` and ``U``: remap UIDs (a sequence is kept and its items de-identified).
* ``C``: remove for now (cleaning descriptors is a later option, PS3.15 E.3.5).

Beyond the table (PS3.15 E.1.1 and E.3):

* every private attribute is removed (Table E.1-1, "Private attributes: X");
* curve data (50xx,xxxx) is removed, as are overlay data and comments (60xx,3000) and
  (60xx,4000). We remove the whole 60xx overlay group: an Overlay Plane without its
  Overlay Data is an invalid module, and the module is optional in every image IOD;
* every UI element that is not a class, transfer syntax or coding-scheme UID is remapped
  (see :data:`KEEP_UID_TAGS`), wherever it occurs, so no original instance UID survives.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import StrEnum

from pydicom.tag import BaseTag

TABLE_VERSION = "2026c"
"""DICOM release of Table E.1-1 used (PS3.15 2026c), as packaged by dicom-anonymizer."""

_TABLE_MODULE = f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{TABLE_VERSION}"


class Action(StrEnum):
    """What to do with one attribute; values are the PS3.15 Table E.1-1 action codes."""

    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


@dataclass(frozen=True, slots=True)
class RepeatingRule:
    """An action for a repeating group such as (60xx,3000): matches ``tag & mask == rule.tag``."""

    tag: int
    mask: int
    code: str
    action: Action

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.tag


# Library list name -> standard action code as written in Table E.1-1.
_LIST_CODES: dict[str, str] = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}

# Default resolution of each code; exceptions for Type 1/2 attributes follow.
_DEFAULT_ACTION: dict[str, Action] = {
    "D": Action.DUMMY,
    "Z": Action.ZERO,
    "X": Action.REMOVE,
    "K": Action.KEEP,
    "C": Action.REMOVE,  # cleaning comes later (PS3.15 E.3.5); removing is always allowed
    "U": Action.UID,
    "Z/D": Action.DUMMY,
    "X/Z": Action.REMOVE,
    "X/D": Action.REMOVE,
    "X/Z/D": Action.REMOVE,
    "X/Z/U*": Action.UID,
}

# Compound-code attributes that must stay present to keep common IODs valid (PS3.3).
_CONFORMANCE_OVERRIDES: dict[int, Action] = {
    # Z/D where Type 2 suffices, so zero leaks less than a made-up value.
    0x00700084: Action.ZERO,  # Content Creator's Name: Type 2, Presentation State Identification
    0x00180010: Action.ZERO,  # Contrast/Bolus Agent: Type 2, Contrast/Bolus Module (C.7.6.4)
    # X/Z, Type 2 or 2C.
    0x00400555: Action.ZERO,  # Acquisition Context Sequence: Type 2, Acquisition Context Module
    0x00102203: Action.ZERO,  # Patient's Sex Neutered: Type 2C, Patient Module (C.7.1.1)
    0x300E0008: Action.ZERO,  # Reviewer Name: Type 2C, Approval Module (C.8.8.16)
    0x300A00B2: Action.ZERO,  # Treatment Machine Name: Type 2, RT Beams Module (C.8.8.14)
    # X/D, Type 1C or 2: a dummy value is always valid.
    0x0040A032: Action.DUMMY,  # Observation DateTime: Type 1C, SR Document Content (C.17.3)
    0x300A0006: Action.DUMMY,  # RT Plan Date: Type 2, RT General Plan (C.8.8.9)
    0x300A0007: Action.DUMMY,  # RT Plan Time: Type 2, RT General Plan (C.8.8.9)
    0x30080250: Action.DUMMY,  # Treatment Date: Type 2, RT treatment records
    0x30080251: Action.DUMMY,  # Treatment Time: Type 2, RT treatment records
    # X/Z/D, Type 1 or 1C in the enhanced (multi-frame) CT/MR/PET IODs.
    0x00181000: Action.DUMMY,  # Device Serial Number: Type 1, Enhanced General Equipment
    0x0008002A: Action.DUMMY,  # Acquisition DateTime: Type 1C, Enhanced CT/MR Image Modules
}

# UI attributes whose value names a class, a syntax or a coding scheme, not an instance:
# they identify nobody and remapping them would make the object unreadable (PS3.15 E.1.1).
KEEP_UID_TAGS: frozenset[int] = frozenset(
    {
        0x00000002,  # Affected SOP Class UID
        0x00000003,  # Requested SOP Class UID
        0x00020002,  # Media Storage SOP Class UID
        0x00020010,  # Transfer Syntax UID
        0x00020012,  # Implementation Class UID
        0x00020032,  # RTV Communication SOP Class UID
        0x00041510,  # Referenced SOP Class UID in File
        0x00041512,  # Referenced Transfer Syntax UID in File
        0x0004151A,  # Referenced Related General SOP Class UID in File
        0x00080016,  # SOP Class UID
        0x0008001A,  # Related General SOP Class UID
        0x0008001B,  # Original Specialized SOP Class UID
        0x00080062,  # SOP Classes in Study
        0x0008010C,  # Coding Scheme UID
        0x00080117,  # Context UID
        0x00080118,  # Mapping Resource UID
        0x0008040E,  # Stored Instance Transfer Syntax UID
        0x00081150,  # Referenced SOP Class UID
        0x0008115A,  # SOP Classes Supported
        0x00083002,  # Available Transfer Syntax UID
        0x00340003,  # Flow Transfer Syntax UID
        0x04000010,  # MAC Calculation Transfer Syntax UID
        0x04000510,  # Encrypted Content Transfer Syntax UID
        0x30100052,  # Pertinent SOP Classes in Study
        0x30100053,  # Pertinent SOP Classes in Series
    }
)

STANDARD_UID_ROOT = "1.2.840.10008."
"""UIDs under the DICOM root are defined by the standard (PS3.6 Annex A), never patients'."""


def _load_table() -> tuple[dict[BaseTag, str], tuple[RepeatingRule, ...]]:
    """Read Table E.1-1 from dicom-anonymizer's pinned release, as tag -> action code."""
    module = importlib.import_module(_TABLE_MODULE)
    codes: dict[BaseTag, str] = {}
    repeating: list[RepeatingRule] = []
    for list_name, code in _LIST_CODES.items():
        for entry in getattr(module, list_name):
            if len(entry) == 2:
                group, element = entry
                tag = BaseTag(group << 16 | element)
                if tag in codes:  # the standard has one row per tag; guard a bad release
                    raise RuntimeError(f"Table E.1-1 lists {tag} twice ({codes[tag]}, {code})")
                codes[tag] = code
            else:  # (group, element, group mask, element mask), e.g. (60xx,3000)
                group, element, group_mask, element_mask = entry
                mask = group_mask << 16 | element_mask
                repeating.append(
                    RepeatingRule(group << 16 | element, mask, code, _DEFAULT_ACTION[code])
                )
    return codes, tuple(repeating)


BASIC_PROFILE_CODES, _TABLE_REPEATING = _load_table()
"""Tag -> action code exactly as Table E.1-1 states it (e.g. ``"X/Z/D"``), for audits."""

# Attributes the table does not list but that carry identifiers in practice. PS3.15 E.1.1
# requires removing all information that could identify the patient, not only the rows of
# Table E.1-1, so these are removed as well.
SUPPLEMENTARY_ACTIONS: dict[BaseTag, Action] = {
    BaseTag(0x00081190): Action.REMOVE,  # Retrieve URL: PACS host name and original UIDs
    BaseTag(0x0040E010): Action.REMOVE,  # Retrieve URI: same
}

BASIC_PROFILE: dict[BaseTag, Action] = {
    **{
        tag: _CONFORMANCE_OVERRIDES.get(int(tag), _DEFAULT_ACTION[code])
        for tag, code in BASIC_PROFILE_CODES.items()
    },
    **SUPPLEMENTARY_ACTIONS,
}
"""Tag -> resolved action, the base table that :mod:`pacsflow.deid.profile` layers on."""

REPEATING_RULES: tuple[RepeatingRule, ...] = (
    *_TABLE_REPEATING,
    # Whole overlay group (see module docstring); the table rows above are a subset.
    RepeatingRule(0x60000000, 0xFF010000, "X", Action.REMOVE),
)
"""Rules for repeating groups: curve data (50xx,xxxx) and overlays (60xx,xxxx)."""


def action_for(tag: int) -> Action | None:
    """Return the action for ``tag``, or ``None`` when the table says nothing about it.

    ``None`` still means the caller must remap a UI value and recurse into a sequence.
    """
    action = BASIC_PROFILE.get(tag)  # type: ignore[call-overload]  # BaseTag hashes as int
    if action is not None:
        return action
    if tag >> 16 & 1:  # odd group: private attribute (PS3.5 7.8), removed by E.1.1
        return Action.REMOVE
    if tag >> 24 in (0x50, 0x60):
        for rule in REPEATING_RULES:
            if rule.matches(tag):
                return rule.action
    return None
