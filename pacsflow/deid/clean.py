"""Clean a free-text attribute: keep the text, strip what identifies the patient.

Why concrete rather than clever: PS3.15 E.3.5 (Clean Descriptors) asks that descriptions
be kept with identifying information removed. No text filter finds every identifier, so
this one removes what a description is known to pick up in practice, and says what it
misses. Every hit is replaced by ``*``, so a cleaned value is never longer than the
original and stays valid for its VR.

What is removed, case-insensitively:

* the words of the person names in the instance itself (Patient's Name, Other Patient
  Names, Patient's Birth Name, Mother's Birth Name, Referring, Performing, Reading and
  Requesting Physicians, Operators), each word of three or more characters;
* the instance's own identifiers: Patient ID, Other Patient IDs (and the IDs in Other
  Patient IDs Sequence), Issuer of Patient ID, Accession Number, Study ID, Institution
  Name, matched anywhere in the text;
* the instance's own dates (birth date, study, series, acquisition and content dates) in
  the usual written forms (20240102, 2024-01-02, 02/01/2024, 02.01.2024, 2 Jan 2024);
* any other numeric date (``d/m/yyyy``, ``yyyy-mm-dd`` and the like);
* any token holding a run of five or more digits (``MRN1234567``, ``0151 555 0199`` is
  not: see below).

What is not caught: names and IDs that the instance does not carry (a relative's name,
an ID from another system), name words shorter than three characters, misspellings and
initials, identifiers split by spaces (a phone number written in groups of four digits),
addresses, free-text dates in words only ("on Christmas Day"), and anything in pixel
data. Projects that cannot accept that should ``remove`` the attribute instead.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_NAME_KEYWORDS = (
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "OperatorsName",
)
_ID_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
)
_DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")

# Words that occur in person names and in ordinary descriptions alike.
_NOT_NAMES = frozenset({"THE", "AND", "MRS", "MISS", "PROF", "PHD"})

_GENERIC_DATE = r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}[./-]\d{1,2}[./-]\d{1,2}"
_DIGIT_RUN = r"[A-Za-z]*\d{5,}[A-Za-z0-9]*"
_BOUNDARY_BEFORE = r"(?<![A-Za-z0-9])"
_BOUNDARY_AFTER = r"(?![A-Za-z0-9])"


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]  # str, PersonName, numbers


def _date_forms(value: str) -> list[str]:
    try:
        day = datetime.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return []
    formats = ("%Y%m%d", "%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d %b %Y", "%d %B %Y")
    forms = {day.strftime(f) for f in formats}
    forms.add(f"{day.day}/{day.month}/{day.year}")
    forms.add(f"{day.month}/{day.day}/{day.year}")
    return sorted(forms)


@dataclass(frozen=True)
class IdentifierPattern:
    """The identifiers of one instance, compiled into one regular expression."""

    pattern: re.Pattern[str]

    @classmethod
    def from_dataset(cls, ds: Dataset) -> IdentifierPattern:
        """Collect the identifiers of ``ds`` (top level, before it is de-identified)."""
        words: set[str] = set()
        for keyword in _NAME_KEYWORDS:
            for name in _values(ds, keyword):
                for word in re.split(r"[\^=,\s]+", name):
                    if len(word) >= 3 and word.upper() not in _NOT_NAMES:
                        words.add(word)
        literals: set[str] = set()
        for keyword in _ID_KEYWORDS:
            literals.update(v.strip() for v in _values(ds, keyword) if len(v.strip()) >= 3)
        for item in ds.get("OtherPatientIDsSequence") or []:
            literals.update(v.strip() for v in _values(item, "PatientID") if len(v.strip()) >= 3)
        for keyword in _DATE_KEYWORDS:
            for value in _values(ds, keyword):
                literals.update(_date_forms(value))
        parts = [re.escape(s) for s in sorted(literals, key=len, reverse=True)]
        names = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        if names:
            parts.append(f"{_BOUNDARY_BEFORE}(?:{names}){_BOUNDARY_AFTER}")
        parts.append(f"{_BOUNDARY_BEFORE}(?:{_GENERIC_DATE}|{_DIGIT_RUN}){_BOUNDARY_AFTER}")
        return cls(re.compile("|".join(parts), re.IGNORECASE))

    def clean(self, text: str) -> str:
        """``text`` with every identifier replaced by ``*``."""
        return self.pattern.sub("*", text)
