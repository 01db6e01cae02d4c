"""The PHI gate: the last check on a de-identified study before it may be exported.

Why a separate check at all: de-identification is driven by a profile (a table of
attributes and actions), and a profile only knows the attributes it lists. Identifiers
also turn up where no table looks: a surname typed into a description, an MRN in a
vendor's private block, an original UID inside a Retrieve URL, a birth date in an image
comment. The gate does not trust the profile. It takes the study's *original* identifiers
(collected from the files as retrieved, before de-identification) and searches every
value of every de-identified instance for them, including sequences, private elements,
binary private data and the File Meta Information. A study with any hit is quarantined
instead of exported, and the ledger records where the hit was (attribute paths), never
what it was.

Matching rules (deliberate trade-offs; a false positive quarantines a study, which is
safe, but a gate that quarantines everything gets switched off, which is not):

* Patient IDs, accession numbers and other visit identifiers: case-insensitive substring,
  ignoring separators (space, ``-``, ``_``, ``/``): ``MRN-001 234`` matches ``MRN001234``.
  An identifier whose first or last character is a digit must not be glued to further
  digits there, so the MRN ``1234567`` is not found inside ``91234567`` or a DS value.
  Identifiers shorter than :data:`MIN_ID_LENGTH` characters (after removing separators),
  and digits-only identifiers shorter than :data:`MIN_NUMERIC_ID_LENGTH`, are not
  searched: such short values occur by chance everywhere in a header (sizes, counts,
  times), so searching them would quarantine every study.
* Patient name parts: whole words, case-insensitive, in any text (PN components split on
  ``^`` and ``=``, parts split on spaces, commas and hyphens). Only the family, given and
  middle components are used: prefixes and suffixes are titles ("MR", "DR", "JR") that
  occur in ordinary text ("MR BRAIN"). Parts of one character are skipped. Parts with
  accents also match their unaccented spelling (MÜLLER finds MULLER). Parts written in
  scripts without spaces between words (CJK ideographs, kana) match as substrings.
* Birth dates: YYYYMMDD (also as the start of a DT value), YYYY-MM-DD, YYYY/MM/DD,
  YYYY.MM.DD, DD/MM/YYYY, DD.MM.YYYY, DD-MM-YYYY, MM/DD/YYYY, MM-DD-YYYY, MM.DD.YYYY,
  with or without leading zeros in day and month, and English month names: "12 March
  1961", "12th Mar 1961", "12-MAR-1961", "March 12, 1961", "Mar. 12 1961".
* UIDs: every UI value of the original that is not under the DICOM root
  ``1.2.840.10008.`` and does not name a class, syntax or coding scheme (see
  :data:`NON_INSTANCE_UID_KEYWORDS`). Found when it appears as a whole run of components
  in any dotted number of any value: exactly, inside a URL, or as the prefix of a longer
  UID derived from it (``<original>.1`` still carries the original).
* What is searched: the values of every string VR (AE AS CS DA DS DT IS LO LT PN SH ST
  TM UC UI UR UT, each value of a multi-valued element), and the bytes of OB, OW and UN
  elements decoded as text. Binary data that looks like text (no control characters, as
  private strings read as UN do) gets the text rules; other binary data gets every rule
  except name parts, because a short word like "LI" occurs by chance in kilobytes of
  binary. Pixel, overlay, waveform and spectroscopy data are never read: they are
  images and signals, and decoding them would cost more than the whole rest of the check.
  Numeric VRs (US SS UL SL FL FD AT OF OD OL OV SV UV) hold numbers, not text.

The optional ``allows(tag, private_creator)`` callback is the profile's own answer to
"may this attribute survive?": every element it refuses is reported, at any depth.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from functools import lru_cache

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from pacsflow.deid.dictionary import dictionary_vr

__all__ = [
    "MIN_ID_LENGTH",
    "MIN_NAME_PART_LENGTH",
    "MIN_NUMERIC_ID_LENGTH",
    "MIN_UID_LENGTH",
    "MAX_SUMMARY_CHARS",
    "NON_INSTANCE_UID_KEYWORDS",
    "STANDARD_UID_ROOT",
    "Allows",
    "GateResult",
    "IdentifierBuilder",
    "OriginalIdentifiers",
    "find_leaks",
    "gate",
    "identifiers_from",
    "merge",
]

MIN_ID_LENGTH = 3
"""Shortest ID/accession (separators removed) the gate searches for."""

MIN_NUMERIC_ID_LENGTH = 5
"""Shortest digits-only ID searched: 3-4 digit numbers are rows, counts, HU, times."""

MIN_NAME_PART_LENGTH = 2
"""Shortest name part searched: single letters are initials, found in any text."""

MIN_UID_LENGTH = 8
"""Shortest original UID searched: "1.2.3.4" style test roots are too generic.

Original UIDs must also have at least three components (every real instance UID has a
root and a suffix), so decimals such as DS values are never mistaken for UIDs."""

MAX_SUMMARY_CHARS = 1000
"""Upper bound on :meth:`GateResult.summary`, so a ledger row or a log line stays small."""

STANDARD_UID_ROOT = "1.2.840.10008."
"""UIDs under the DICOM root are defined by the standard (PS3.6 Annex A), never a patient's."""

#: UI attributes whose value names a class, syntax, coding scheme or software, shared by
#: every site: not identifiers (PS3.15 E.1.1 keeps them), so they are not collected.
#: Kept apart from the profile's ``KEEP_UID_TAGS`` on purpose: the gate checks the
#: engine, so a UID the engine wrongly keeps must not be excused by the same list.
NON_INSTANCE_UID_KEYWORDS = frozenset(
    {
        "AffectedSOPClassUID",
        "RequestedSOPClassUID",
        "MediaStorageSOPClassUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "RTVCommunicationSOPClassUID",
        "PrivateInformationCreatorUID",
        "ReferencedSOPClassUIDInFile",
        "ReferencedTransferSyntaxUIDInFile",
        "ReferencedRelatedGeneralSOPClassUIDInFile",
        "SOPClassUID",
        "RelatedGeneralSOPClassUID",
        "OriginalSpecializedSOPClassUID",
        "SOPClassesInStudy",
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "ContextUID",
        "MappingResourceUID",
        "StoredInstanceTransferSyntaxUID",
        "ReferencedSOPClassUID",
        "SOPClassesSupported",
        "AvailableTransferSyntaxUID",
        "CreatorVersionUID",
        "ManufacturerDeviceClassUID",
        "FlowTransferSyntaxUID",
        "MACCalculationTransferSyntaxUID",
        "EncryptedContentTransferSyntaxUID",
        "PertinentSOPClassesInStudy",
        "PertinentSOPClassesInSeries",
    }
)


def _tags(*keywords: str) -> frozenset[int]:
    tags = {tag_for_keyword(k) for k in keywords}
    if None in tags:  # a typo here would silently stop collecting an identifier
        raise RuntimeError(f"unknown DICOM keyword in {keywords}")
    return frozenset(t for t in tags if t is not None)


_NON_INSTANCE_UID_TAGS = _tags(*NON_INSTANCE_UID_KEYWORDS)
# Patient Identification (PS3.3 C.7.1.1 / C.2.2): the MRN and its aliases.
_PATIENT_ID_TAGS = _tags(
    "PatientID", "OtherPatientIDs", "MedicalRecordLocator", "PatientTelephoneNumbers"
)
_ACCESSION_TAGS = _tags("AccessionNumber")
# Visit and order identifiers (PS3.15 Table E.1-1 removes or zeroes each of them).
_OTHER_ID_TAGS = _tags(
    "StudyID",
    "AdmissionID",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberProcedure",
    "FillerOrderNumberProcedure",
)
# Names of the patient and of people who identify the patient (PS3.3 C.7.1.1, C.2.3).
_PATIENT_NAME_TAGS = _tags(
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ResponsiblePerson",
)
_BIRTH_DATE_TAGS = _tags("PatientBirthDate")

# Bulk data never decoded (pixels, overlays, waveforms, spectra): see module docstring.
_BULK_TAGS = _tags(
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "WaveformData",
    "SpectroscopyData",
)
_OVERLAY_DATA_MASK, _OVERLAY_DATA = 0xFF00FFFF, 0x60003000  # (60xx,3000), PS3.3 C.9.2

# Character string VRs (PS3.5 Table 6.2-1).
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
# Text VRs whose values use the Specific Character Set (PS3.5 6.1.2.3); others are ASCII.
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_BINARY_VRS = frozenset({"OB", "OW", "UN", "OB or OW"})
_SEPARATORS = re.compile(r"[\s\-_/]+")
_SEP = r"[\s\-_/]?"  # at most one separator between two characters of an identifier
_UID_TOKEN = re.compile(r"\d+(?:\.\d+)+")
_NAME_SPLIT = re.compile(r"[\s,\-]+")
# Bytes that occur in text (printable ASCII, tab/CR/LF/FF, ESC of ISO 2022, 8-bit
# characters); a byte string with nothing else, once NUL/space padding is stripped, is
# treated as text.
_TEXT_BYTES = bytes([9, 10, 12, 13, 27, *range(0x20, 0x7F), *range(0x80, 0x100)])


def _is_bulk(tag: int) -> bool:
    return tag in _BULK_TAGS or tag & _OVERLAY_DATA_MASK == _OVERLAY_DATA


def _raw_vr(ds: Dataset, tag: int) -> str:
    """VR of an element without decoding it; "UN" when unknown (implicit VR, private)."""
    vr = ds.get_item(tag).VR
    if vr is None or vr == "UN":
        return dictionary_vr(tag)
    return vr


def _values(value: object) -> list[str]:
    """Each value of an element as a string (PN, DS, IS, dates via their str())."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if v is not None and str(v)]
    return [str(value)]


# ---------------------------------------------------------------------------------------
# Original identifiers


@dataclass(frozen=True)
class OriginalIdentifiers:
    """What identified a study before de-identification; the gate searches for each.

    Values are kept as found (stripped); matching normalises them. Holding this object
    means holding PHI: never log it or put it in a Prefect result (its repr is redacted).
    """

    patient_ids: frozenset[str] = frozenset()
    """PatientID (MRN), OtherPatientIDs, Medical Record Locator, telephone numbers."""
    accession_numbers: frozenset[str] = frozenset()
    other_ids: frozenset[str] = frozenset()
    """Study ID, admission, requested/scheduled/performed procedure and order numbers."""
    name_parts: frozenset[str] = frozenset()
    """Upper-case family, given and middle name parts of the patient and related names."""
    birth_dates: frozenset[datetime.date] = frozenset()
    uids: frozenset[str] = frozenset()
    """Instance UIDs of the original: not standard, not class/syntax/coding-scheme UIDs."""

    def __repr__(self) -> str:  # counts only: this object is full of identifiers
        counts = ", ".join(f"{f.name}={len(getattr(self, f.name))}" for f in fields(self))
        return f"OriginalIdentifiers({counts})"

    __str__ = __repr__


def merge(*parts: OriginalIdentifiers) -> OriginalIdentifiers:
    """Union of several instances' identifiers: a study's instances may disagree."""
    return OriginalIdentifiers(
        **{
            f.name: frozenset().union(*(getattr(p, f.name) for p in parts))
            for f in fields(OriginalIdentifiers)
        }
    )


def _name_parts(pn: str) -> set[str]:
    """Family, given and middle parts of each PN component group (PS3.5 6.2.1.1)."""
    parts: set[str] = set()
    for group in pn.split("="):  # alphabetic, ideographic, phonetic representations
        for component in group.split("^")[:3]:  # family, given, middle; not prefix/suffix
            for part in _NAME_SPLIT.split(component.strip().upper()):
                part = part.strip(".'")
                if len(part) >= MIN_NAME_PART_LENGTH:
                    parts.add(part)
    return parts


def _is_instance_uid(value: str) -> bool:
    return (
        not value.startswith(STANDARD_UID_ROOT)
        and len(value) >= MIN_UID_LENGTH
        and value.count(".") >= 2
    )


def _parse_da(value: str) -> datetime.date | None:
    """A DA value (YYYYMMDD, PS3.5 Table 6.2-1); also the old ACR-NEMA YYYY.MM.DD."""
    digits = value.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


@dataclass
class IdentifierBuilder:
    """Accumulates a study's identifiers instance by instance, then :meth:`build` them.

    Mutable on purpose: the pipeline adds each original instance as it is retrieved, and
    only the frozen result is passed on.
    """

    patient_ids: set[str] = field(default_factory=set)
    accession_numbers: set[str] = field(default_factory=set)
    other_ids: set[str] = field(default_factory=set)
    name_parts: set[str] = field(default_factory=set)
    birth_dates: set[datetime.date] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        return repr(self.build())

    def add_mrn(self, mrn: str | None) -> None:
        if mrn and mrn.strip():
            self.patient_ids.add(mrn.strip())

    def add_accession(self, accession: str | None) -> None:
        if accession and accession.strip():
            self.accession_numbers.add(accession.strip())

    def add_dataset(self, ds: Dataset) -> None:
        """Collect from an ORIGINAL dataset, its sequences and its File Meta Information."""
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            self._collect(meta)
        self._collect(ds)

    def add(self, ids: OriginalIdentifiers) -> None:
        for f in fields(OriginalIdentifiers):
            getattr(self, f.name).update(getattr(ids, f.name))

    def build(self) -> OriginalIdentifiers:
        return OriginalIdentifiers(
            **{f.name: frozenset(getattr(self, f.name)) for f in fields(OriginalIdentifiers)}
        )

    def _collect(self, ds: Dataset) -> None:
        # keys(), not iteration: iterating a Dataset decodes every element, pixels too.
        for tag in ds.keys():  # noqa: SIM118
            if _is_bulk(tag):
                continue
            vr = _raw_vr(ds, tag)
            wanted = (
                vr in ("SQ", "UI")
                or tag in _PATIENT_ID_TAGS
                or tag in _ACCESSION_TAGS
                or tag in _OTHER_ID_TAGS
                or tag in _PATIENT_NAME_TAGS
                or tag in _BIRTH_DATE_TAGS
            )
            if not wanted:
                continue
            elem = ds[tag]  # decodes the raw element (and caches it in ds)
            if elem.VR == "SQ":
                for item in elem.value or ():
                    self._collect(item)
                continue
            values = [v.strip("\x00 ") for v in _values(elem.value)]
            values = [v for v in values if v]
            if elem.VR == "UI":
                if tag not in _NON_INSTANCE_UID_TAGS:
                    self.uids.update(v for v in values if _is_instance_uid(v))
            elif tag in _PATIENT_ID_TAGS:
                self.patient_ids.update(values)
            elif tag in _ACCESSION_TAGS:
                self.accession_numbers.update(values)
            elif tag in _OTHER_ID_TAGS:
                self.other_ids.update(values)
            elif tag in _PATIENT_NAME_TAGS:
                for v in values:
                    self.name_parts.update(_name_parts(v))
            elif tag in _BIRTH_DATE_TAGS:
                self.birth_dates.update(d for d in map(_parse_da, values) if d is not None)


def identifiers_from(
    ds: Dataset, *, mrn: str | None = None, accession: str | None = None
) -> OriginalIdentifiers:
    """Identifiers of one ORIGINAL (not yet de-identified) instance.

    ``mrn`` and ``accession`` are the manifest's values; they are added because the
    header may spell them differently (or lack them) and the gate must find both.
    """
    builder = IdentifierBuilder()
    builder.add_mrn(mrn)
    builder.add_accession(accession)
    builder.add_dataset(ds)
    return builder.build()


# ---------------------------------------------------------------------------------------
# Compiled matchers
#
# Speed: this runs on every exported instance. Python's regex engine scans quickly for
# an alternation only when every branch starts with a literal character and the pattern
# is case-sensitive (it then skips to positions holding one of those characters). So
# each value is upper-cased once, one combined pattern without boundary conditions finds
# candidate positions, and only there are the exact rules (with their lookarounds) tried.
# Candidates are rare in clean data, so the exact rules cost almost nothing.


@dataclass(frozen=True)
class _Rule:
    first: str  # the literal upper-case character every match starts with
    body: str  # regex without boundary conditions; starts with ``first``
    head: str = ""  # lookbehind, checked at candidate positions only
    tail: str = ""  # lookahead, likewise


def _id_rule(identifier: str) -> _Rule | None:
    core = _SEPARATORS.sub("", identifier.strip()).upper()
    minimum = MIN_NUMERIC_ID_LENGTH if core.isdigit() else MIN_ID_LENGTH
    if len(core) < minimum:
        return None
    return _Rule(
        first=core[0],
        body=_SEP.join(re.escape(c) for c in core),
        head=r"(?<!\d)" if core[0].isdigit() else "",
        tail=r"(?!\d)" if core[-1].isdigit() else "",
    )


def _unaccented(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _is_unspaced_script(text: str) -> bool:
    """CJK ideographs, kana: scripts written without spaces between words."""
    return any(
        0x3040 <= ord(c) <= 0x30FF or 0x3400 <= ord(c) <= 0x9FFF or 0xF900 <= ord(c) <= 0xFAFF
        for c in text
    )


def _name_rules(part: str) -> list[_Rule]:
    part = part.upper()
    if _is_unspaced_script(part):
        return [_Rule(part[0], re.escape(part))]
    # Whole words: no letter or digit on either side ("_" counts as a separator).
    spellings = {part, _unaccented(part)}
    return [
        _Rule(word[0], re.escape(word), r"(?<![^\W_])", r"(?![^\W_])")
        for word in spellings
        if len(word) >= MIN_NAME_PART_LENGTH
    ]


_MONTHS = ("JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST")
_MONTHS += ("SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER")


def _date_rules(day: datetime.date) -> list[_Rule]:
    """Every common spelling of ``day``, each starting with a literal (see above)."""
    y = f"{day.year:04d}"
    months = [f"{day.month:02d}", str(day.month)]  # 03 and 3
    days = [f"{day.day:02d}", str(day.day)]
    full = _MONTHS[day.month - 1]
    names = {full, full[:3] + r"\.?"} | ({r"SEPT\.?"} if full == "SEPTEMBER" else set())
    ordinal = r"(?:ST|ND|RD|TH)?"
    digit, no_digit = r"(?<!\d)", r"(?!\d)"
    # DA, and the start of a DT (YYYYMMDDHHMMSS): no condition on what follows.
    rules = [_Rule(y[0], f"{y}{day.month:02d}{day.day:02d}", digit)]
    for sep in (r"\-", "/", r"\."):  # ISO, US, European and ACR-NEMA orders
        for m in dict.fromkeys(months):
            for d in dict.fromkeys(days):
                rules += [
                    _Rule(y[0], f"{y}{sep}{m}{sep}{d}", digit, no_digit),
                    _Rule(d[0], f"{d}{sep}{m}{sep}{y}", digit, no_digit),
                    _Rule(m[0], f"{m}{sep}{d}{sep}{y}", digit, no_digit),
                ]
    for name in sorted(names):
        for d in dict.fromkeys(days):
            rules += [  # 12 March 1961, 12th MAR 1961, 12-MAR-1961; March 12, 1961
                _Rule(d[0], rf"{d}{ordinal}[\s\-]*{name}[\s,\-]*{y}", digit, no_digit),
                _Rule(name[0], rf"{name}\s*{d}{ordinal},?\s*{y}", "", no_digit),
            ]
    return rules


class _Finder:
    """Searches upper-cased text for any of a set of rules; see the section comment."""

    def __init__(self, rules: Iterable[_Rule]) -> None:
        rules = list(dict.fromkeys(rules))
        self._scan = re.compile("|".join(r.body for r in rules)) if rules else None
        exact: dict[str, list[re.Pattern[str]]] = {}
        for rule in rules:
            exact.setdefault(rule.first, []).append(re.compile(rule.head + rule.body + rule.tail))
        self._exact = exact

    def search(self, upper: str) -> bool:
        scan = self._scan
        if scan is None:
            return False
        pos = 0
        while (candidate := scan.search(upper, pos)) is not None:
            start = candidate.start()
            for pattern in self._exact.get(upper[start], ()):
                if pattern.match(upper, start):  # lookbehinds see the text before start
                    return True
            pos = start + 1
        return False


class _Matcher:
    """The compiled form of one study's :class:`OriginalIdentifiers`."""

    def __init__(self, ids: OriginalIdentifiers) -> None:
        id_rules = [
            rule
            for value in sorted(ids.patient_ids | ids.accession_numbers | ids.other_ids)
            if (rule := _id_rule(value)) is not None
        ]
        date_rules = [rule for day in sorted(ids.birth_dates) for rule in _date_rules(day)]
        name_rules = [rule for part in sorted(ids.name_parts) for rule in _name_rules(part)]
        self._text = _Finder(id_rules + name_rules + date_rules)
        self._binary = _Finder(id_rules + date_rules)  # no names: see module docstring
        self._uids = ids.uids

    def text_leaks(self, text: str, names: bool = True) -> bool:
        """Whether ``text`` holds an identifier. ``names=False`` for coded values (VR CS):
        they hold defined terms such as CT or AXIAL, which a short name part ("CT" of
        the name "CQ500-CT-310") would match by accident; IDs, dates and UIDs still count.
        """
        finder = self._text if names else self._binary
        return finder.search(text.upper()) or self._uid_leaks(text)

    def bytes_leak(self, data: bytes) -> bool:
        stripped = data.rstrip(b"\x00 ")
        if not stripped:
            return False
        if not stripped.translate(None, _TEXT_BYTES):  # nothing but text bytes
            try:
                return self.text_leaks(stripped.decode("utf-8"))
            except UnicodeDecodeError:
                return self.text_leaks(stripped.decode("latin-1"))
        text = stripped.decode("latin-1")
        return self._binary.search(text.upper()) or self._uid_leaks(text)

    def _uid_leaks(self, text: str) -> bool:
        uids = self._uids
        if not uids or text.count(".") < 2:  # cheap: most values are not dotted numbers
            return False
        for match in _UID_TOKEN.finditer(text):
            token = match.group()
            if len(token) < MIN_UID_LENGTH or token.count(".") < 2:
                continue  # decimals such as DS values; original UIDs have 3+ components
            if token in uids:
                return True
            # Every run of whole components: an original UID inside a longer dotted number.
            dots = [i for i, c in enumerate(token) if c == "."]
            starts = [0, *(i + 1 for i in dots)]
            ends = [*dots, len(token)]
            for start in starts:
                for end in ends:
                    if end - start >= MIN_UID_LENGTH and token[start:end] in uids:
                        return True
        return False


@lru_cache(maxsize=8)
def _matcher(ids: OriginalIdentifiers) -> _Matcher:
    """Compile once per study: the same ``ids`` object is reused for all its instances."""
    return _Matcher(ids)


# ---------------------------------------------------------------------------------------
# Walking the de-identified dataset

Allows = Callable[[BaseTag, str | None], bool]
"""The profile's verdict on an element: ``allows(tag, private_creator)``."""


def _is_private_creator(tag: int) -> bool:
    return bool(tag >> 16 & 1) and 0x0010 <= tag & 0xFFFF <= 0x00FF  # PS3.5 7.8.1


def _private_creator(ds: Dataset, tag: int) -> str | None:
    """Value of the element reserving ``tag``'s block (PS3.5 7.8.1), if present."""
    element = tag & 0xFFFF
    if element < 0x1000:
        return None
    return _text_value(ds, (tag & 0xFFFF0000) | (element >> 8))


def _text_value(ds: Dataset, tag: int) -> str | None:
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\x00 ") if value is not None else None


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _label(ds: Dataset, tag: int, matcher: _Matcher) -> str:
    """Path component for ``tag``: its keyword, or for private data its creator."""
    if not tag >> 16 & 1:
        return _keyword(tag)
    label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    creator = _private_creator(ds, tag)
    if creator is None:
        return label
    # The creator is shown, as it tells whose private data survived; unless it holds an
    # identifier itself, since paths must never carry values.
    shown = "<redacted>" if matcher.text_leaks(creator) else repr(creator[:64])
    return f"{label} [private creator {shown}]"


def _codec(ds: Dataset) -> str | None:
    """Python codec of ``ds``'s raw text when it is a single one, else None.

    Several codecs (ISO 2022 code extensions, PS3.5 6.1.2.5) switch by escape sequences
    inside values; only pydicom's decoder handles those.
    """
    charset = ds.original_character_set
    if isinstance(charset, str):
        return charset or "latin_1"
    if len(charset) == 1:
        return charset[0]
    return None


def _raw_text(elem: RawDataElement, vr: str, ds: Dataset) -> str | None:
    """The text of a raw (undecoded) string element, or None to let pydicom decode it.

    Decoding here rather than through pydicom is several times faster and leaves the
    element raw, so it is written back byte for byte. The raw value of a multi-valued
    element is its values joined by backslashes, which is what the matchers search.
    """
    if vr not in _CHARSET_VRS:
        return elem.value.decode("latin-1")  # default repertoire only (PS3.5 6.1.2.3)
    codec = _codec(ds)
    if codec is None:
        return None
    try:
        return elem.value.decode(codec, errors="replace")
    except LookupError:  # a codec name Python lacks: pydicom decides what to do
        return None


def _walk(
    ds: Dataset, prefix: str, matcher: _Matcher, allows: Allows | None, out: list[str]
) -> None:
    for tag in sorted(ds.keys(), key=int):  # int: BaseTag compares in Python, int in C
        t = int(tag)
        refused = False
        if allows is not None:
            if _is_private_creator(t):  # asked with the creator it reserves: its own value
                creator = _text_value(ds, t)
            else:
                creator = _private_creator(ds, t) if t >> 16 & 1 else None
            refused = not allows(tag, creator)
            if refused:
                out.append(prefix + _label(ds, t, matcher))
        if t in _BULK_TAGS or t & _OVERLAY_DATA_MASK == _OVERLAY_DATA:
            continue
        elem = ds.get_item(tag, keep_deferred=True)
        vr = elem.VR
        if vr is None or vr == "UN":  # implicit VR, or unknown to the writer
            vr = dictionary_vr(t)  # still "UN" for private tags: pydicom decides below
        if vr not in _TEXT_VRS and vr not in _BINARY_VRS and vr != "SQ":
            continue  # numbers, not text (or an ambiguous "US or SS")
        leaked = False
        if isinstance(elem, RawDataElement) and elem.value is not None and vr in _TEXT_VRS:
            text = _raw_text(elem, vr, ds)
            if text is not None:
                if matcher.text_leaks(text, names=vr != "CS") and not refused:
                    out.append(prefix + _label(ds, t, matcher))
                continue
        if isinstance(elem, RawDataElement) and elem.value is not None and vr in ("OB", "OW"):
            leaked = matcher.bytes_leak(elem.value)
        else:
            if not isinstance(elem, DataElement):
                elem = ds[tag]  # pydicom decodes (and keeps) sequences, UN, ISO 2022 text
            value = elem.value
            vr = elem.VR
            if vr == "SQ":
                path = prefix + _label(ds, t, matcher)
                # Inside a refused sequence all is refused already: only search values.
                inner = None if refused else allows
                for index, item in enumerate(value or ()):
                    _walk(item, f"{path}[{index}].", matcher, inner, out)
                continue
            if isinstance(value, bytes):
                leaked = matcher.bytes_leak(value)
            elif vr in _TEXT_VRS or vr in _BINARY_VRS:
                values = _values(value)
                leaked = bool(values) and matcher.text_leaks("\\".join(values), names=vr != "CS")
        if leaked and not refused:
            out.append(prefix + _label(ds, t, matcher))


def find_leaks(ds: Dataset, ids: OriginalIdentifiers, allows: Allows | None = None) -> list[str]:
    """Attribute paths of ``ds`` (de-identified) that still hold an original identifier.

    With ``allows``, also the paths of elements the profile does not allow: it is asked
    about every element at every depth, File Meta Information included, with the
    private creator of a private element's block (for a Private Creator element, its own
    value, PS3.5 7.8.1). Elements inside a refused sequence are not asked about again.

    Each path appears once, in dataset order, File Meta Information first (prefixed
    ``file_meta.``). Paths are keywords (or ``(gggg,eeee)``), ``[i]`` for sequence items
    and, for private data elements, the private creator: never a value.
    """
    matcher = _matcher(ids)
    out: list[str] = []
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _walk(meta, "file_meta.", matcher, allows, out)
    _walk(ds, "", matcher, allows, out)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------
# The verdict


@dataclass(frozen=True)
class GateResult:
    """Verdict on a study: safe to store and log, as it holds counts and paths only."""

    passed: bool
    paths: tuple[str, ...] = ()
    instances: int = 0
    failed_instances: int = 0

    def __post_init__(self) -> None:
        if self.passed == bool(self.paths):
            raise ValueError("a gate result passes exactly when it has no paths")

    def summary(self, max_chars: int = MAX_SUMMARY_CHARS) -> str:
        """One line for the ledger and logs, at most ``max_chars`` characters.

        E.g. ``PHI gate failed: 2 of 6 instances; 2 attributes: PatientName; ...``.
        """
        instances = f"{self.instances} instance{'' if self.instances == 1 else 's'}"
        if self.passed:
            return f"PHI gate passed: {instances}"
        attributes = f"{len(self.paths)} attribute{'' if len(self.paths) == 1 else 's'}"
        head = f"PHI gate failed: {self.failed_instances} of {instances}; {attributes}: "
        text = head
        for index, path in enumerate(self.paths):
            piece = ("; " if index else "") + path
            remaining = len(self.paths) - index - 1
            reserve = len(f" (+{remaining} more)") if remaining else 0
            if len(text) + len(piece) + reserve > max_chars:
                return (text + f" (+{len(self.paths) - index} more)")[:max_chars]
            text += piece
        return text[:max_chars]


def gate(
    datasets: Iterable[Dataset], ids: OriginalIdentifiers, allows: Allows | None = None
) -> GateResult:
    """Check every de-identified instance of a study; the union of paths decides.

    ``datasets`` may be a generator reading files one by one. An empty study passes:
    whether a study may be exported empty is decided elsewhere.
    """
    paths: dict[str, None] = {}
    instances = failed = 0
    for ds in datasets:
        instances += 1
        found = find_leaks(ds, ids, allows)
        if found:
            failed += 1
            paths.update(dict.fromkeys(found))
    return GateResult(
        passed=not paths, paths=tuple(paths), instances=instances, failed_instances=failed
    )
