"""What a profile does to one attribute: the :class:`Operation` and the :class:`Rule`.

Why a closed set of operations: a data-protection officer must be able to read a profile
and know what leaves the hospital. Each operation maps to an action of PS3.15 Table
E.1-1 (``remove`` X, ``blank`` Z, ``dummy`` D, ``keep`` K, ``clean`` C, ``uid`` U) or to
one of the option behaviours (``shift_date`` for E.3.6 modified dates, ``hash`` and
``replace`` for project pseudonyms), and nothing else can happen to an attribute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from pydicom.datadict import keyword_for_tag


class Operation(StrEnum):
    """What to do with one attribute; the values are the words used in profile files."""

    KEEP = "keep"  # K: leave as is (a sequence is kept and its items de-identified)
    REMOVE = "remove"  # X: delete the attribute
    BLANK = "blank"  # Z: zero length (an empty sequence for SQ)
    DUMMY = "dummy"  # D: a value valid for the VR that identifies nobody
    REPLACE = "replace"  # a fixed value from the profile
    HASH = "hash"  # keyed 16-character pseudonym of the value (IDs)
    UID = "uid"  # U: keyed UID remap, consistent across instances and runs
    SHIFT_DATE = "shift_date"  # DA/DT moved by the patient's offset (PS3.15 E.3.6)
    CLEAN = "clean"  # C: keep the text, strip identifiers (see pacsflow.deid.clean)


TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
"""Free-text VRs that ``clean`` can work on (PS3.5 Table 6.2-1)."""

FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC"})
"""VRs that hold free text whatever the attribute (PS3.5 Table 6.2-1)."""

_FREE_TEXT_KEYWORD = re.compile(
    r"Description|Comment|Note|Narrative|Reason|History|Impression|Remark|Text|Title"
    r"|Diagnos|Finding|Interpretation|Alert|Allerg|Occupation"
)


@lru_cache(maxsize=8192)
def is_free_text_keyword(tag: int) -> bool:
    """Whether an LO or SH attribute holds free text (a description, a comment, a reason)
    rather than a term of a vocabulary (Convolution Kernel, Code Meaning, Manufacturer).

    Private attributes count as free text: vendors put anything there.
    """
    return bool(tag >> 16 & 1) or bool(_FREE_TEXT_KEYWORD.search(keyword_for_tag(tag) or ""))


HASHABLE_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
"""VRs that hold a 16-character base32 pseudonym (A-Z, 2-7) without breaking the VR."""

DATE_VRS = frozenset({"DA", "DT"})
"""VRs that ``shift_date`` moves. TM is kept as is: a shift by whole days leaves it alone."""

SHIFTABLE_VRS = DATE_VRS | {"TM"}

# Which VRs (as the data dictionary gives them) each operation accepts. SQ is accepted
# wherever the operation means "keep the sequence and de-identify its items".
ACCEPTED_VRS: dict[Operation, frozenset[str] | None] = {
    Operation.KEEP: None,  # any
    Operation.REMOVE: None,
    Operation.BLANK: None,
    Operation.DUMMY: None,
    Operation.REPLACE: None,
    Operation.HASH: HASHABLE_VRS,
    Operation.UID: frozenset({"UI", "SQ"}),
    Operation.SHIFT_DATE: SHIFTABLE_VRS | {"SQ"},
    Operation.CLEAN: TEXT_VRS | {"SQ"},
}


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A private attribute addressed the way PS3.5 7.8.1 defines it: group, creator, element.

    ``element`` is the low byte (0x00-0xFF) within the creator's block; the block number
    (the xx of (gggg,xxee)) is chosen per file by whoever wrote it, so it is not part of
    the key and is resolved per dataset from the Private Creator elements.
    """

    group: int
    creator: str
    element: int

    def __str__(self) -> str:
        return f"({self.group:04X},xx{self.element:02X}) of {self.creator!r}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One operation on one attribute, and where it came from (for audits).

    ``source`` names the layer (``PS3.15 E.1-1 X/Z/D``, an option, ``file.yaml tags[3]``);
    it is left out of equality and of :attr:`Profile.fingerprint`, so moving a rule to
    another file does not change what the profile does or its fingerprint.
    """

    op: Operation
    value: str | int | float | tuple[str | int | float, ...] | None = None
    source: str = field(default="", compare=False)

    def canonical(self) -> str:
        """A stable text form of what the rule does, for the profile fingerprint."""
        return f"{self.op.value}={self.value!r}" if self.op is Operation.REPLACE else self.op.value
