"""Clean a free-text attribute: keep the text, strip what identifies the patient.

Why the gate's own matcher: PS3.15 E.3.5 (Clean Descriptors) asks that descriptions be
kept with identifying information removed, and the PHI gate then checks the result. If
the two disagreed, every cleaned description would either leak or be quarantined. So the
cleaner removes exactly what the gate looks for in free text (the study's names, IDs,
issuers, institutions, addresses, stations, dates and UIDs, on normalised text, with the
same shortest word, :data:`pacsflow.deid.text.MIN_WORD_LENGTH`), gathered over the whole
study (:class:`~pacsflow.deid.phi_gate.OriginalIdentifiers`), and on top of that:

* any other numeric date (``d/m/yyyy``, ``yyyy-mm-dd`` and the like);
* any token holding a run of five or more digits (``MRN1234567``, a phone number).

Every hit is replaced by ``*``, so a cleaned value is never longer than the original and
stays valid for its VR.

What is not caught: names and IDs the study does not carry (a relative's name, an ID from
another system), misspellings and initials, free-text dates in words only ("on Christmas
Day"), and anything in pixel data. Projects that cannot accept that should ``remove``
the attribute instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pacsflow.deid.phi_gate.identifiers import OriginalIdentifiers, identifiers_from
from pacsflow.deid.phi_gate.matching import Matcher, matcher_for

_GENERIC = re.compile(
    r"(?<![A-Za-z0-9])(?:\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}[./-]\d{1,2}[./-]\d{1,2}"
    r"|[A-Za-z]*\d{5,}[A-Za-z0-9]*)(?![A-Za-z0-9])"
)


@dataclass(frozen=True)
class Cleaner:
    """Removes a study's identifiers from free text (see the module docstring)."""

    matcher: Matcher

    @classmethod
    def for_study(cls, ids: OriginalIdentifiers) -> Cleaner:
        return cls(matcher_for(ids))

    def clean(self, text: str) -> str:
        """``text`` with every identifier replaced by ``*``."""
        spans = self.matcher.spans(text)
        spans += [m.span() for m in _GENERIC.finditer(text)]
        if not spans:
            return text
        out = []
        position = 0
        for start, end in sorted(spans):
            if end <= position:
                continue
            out.append(text[position : max(start, position)])
            out.append("*")
            position = end
        out.append(text[position:])
        return "".join(out)


class IdentifierPattern(Cleaner):
    """A :class:`Cleaner` for one instance on its own, from its own identifiers."""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> IdentifierPattern:
        """Collect the identifiers of ``ds`` (before it is de-identified)."""
        return cls(Matcher(identifiers_from(ds)))
