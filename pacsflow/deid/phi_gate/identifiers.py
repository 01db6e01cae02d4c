"""The study's original identifiers: what the gate (and the cleaner) look for.

Gathered over the whole ORIGINAL study, before de-identification, because an instance
may carry in its kept text a name or an ID that only another instance of the study holds
in its own attributes. What is gathered, at any depth of sequences:

* every person name (VR PN): the patient, and everybody else, from referring physician
  to an SR author or a reviewer; family, given and middle parts of each component group;
* IDs: patient IDs and their issuers, accession numbers, visit, order and procedure
  step IDs, telephone numbers;
* institution names, departments and addresses, station names and locations, the AE
  titles of the hospital's systems (:data:`PHRASE_KEYWORDS`, VR AE);
* dates: the birth date, and every other DA value (and the date of every DT value);
* instance UIDs.

What the project's profile keeps on purpose is not looked for: a value found only in
attributes the profile keeps as they are (``keeps(tag)``; Station Name under Retain
Device Identity, a date a profile file keeps) is the project's choice, and finding it
elsewhere tells nothing new. The patient's own names, IDs, accession numbers and birth
date are always looked for.

Holding these objects means holding PHI: their ``repr`` shows counts only.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from pacsflow.deid.dictionary import dictionary_vr
from pacsflow.deid.phi_gate.elements import decoded, is_bulk, tags, value_strings
from pacsflow.deid.text import MIN_WORD_LENGTH, TOKEN, is_unspaced_script, normalize

MIN_ID_LENGTH = 3
"""Shortest ID/accession (separators removed) the gate searches for."""

MIN_NUMERIC_ID_LENGTH = 5
"""Shortest digits-only ID searched: 3-4 digit numbers are rows, counts, HU, times."""

MIN_NAME_PART_LENGTH = MIN_WORD_LENGTH
"""Shortest name part searched (the cleaner's too): single letters are initials."""

MIN_UID_LENGTH = 8
"""Shortest original UID searched: "1.2.3.4" style test roots are too generic.

Original UIDs must also have at least three components (every real instance UID has a
root and a suffix), so decimals such as DS values are never mistaken for UIDs."""

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


_NON_INSTANCE_UID_TAGS = tags(*NON_INSTANCE_UID_KEYWORDS)
# Patient Identification (PS3.3 C.7.1.1 / C.2.2): the MRN, its aliases and its issuers.
_PATIENT_ID_TAGS = tags(
    "PatientID", "OtherPatientIDs", "MedicalRecordLocator", "PatientTelephoneNumbers"
)
_ACCESSION_TAGS = tags("AccessionNumber")
# Visit, order and issuer identifiers (PS3.15 Table E.1-1 removes or zeroes each of them;
# the HL7 v2 CX issuer fields of PS3.3 10.12 name the namespace an ID is unique in).
_OTHER_ID_TAGS = tags(
    "StudyID",
    "AdmissionID",
    "IssuerOfAdmissionID",
    "IssuerOfPatientID",
    "LocalNamespaceEntityID",
    "UniversalEntityID",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberProcedure",
    "FillerOrderNumberProcedure",
    "ReferringPhysicianTelephoneNumbers",
    "PersonTelephoneNumbers",
    "ServiceEpisodeID",
)
# Names that identify the patient: never excused by a profile that keeps some name.
_PATIENT_NAME_TAGS = tags(
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ResponsiblePerson",
)
_BIRTH_DATE_TAGS = tags("PatientBirthDate")

PHRASE_KEYWORDS = (
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "PerformedStationName",
    "ScheduledStationName",
    "PerformedLocation",
    "ScheduledProcedureStepLocation",
    "ScheduledStudyLocation",
    "CurrentPatientLocation",
    "PatientInstitutionResidence",
    "PatientAddress",
    "ReferringPhysicianAddress",
    "PersonAddress",
    "ResponsibleOrganization",
)
"""Attributes whose value is a place, an organisation or a system: found as a phrase."""
_PHRASE_TAGS = tags(*PHRASE_KEYWORDS)
_ADDRESS_SPLIT = re.compile(r"[,;\r\n^]+")
_NAME_SPLIT = re.compile(r"[\s,\-]+")
# Titles typed into a family or given name component ("DR^WHO", "Prof. Smith"): they
# identify nobody and occur in ordinary text.
_TITLES = frozenset({"DR", "DRS", "MR", "MRS", "MS", "MISS", "PROF", "SIR", "DAME", "PHD", "MD"})

Keeps = Callable[[int], bool]
"""The profile's answer to "does this attribute leave exactly as it came?"."""


@dataclass(frozen=True)
class OriginalIdentifiers:
    """What identified a study before de-identification; the gate searches for each.

    Values are kept as found (stripped, name parts upper-case); matching normalises them.
    Holding this object means holding PHI: never log it or put it in a Prefect result
    (its repr is redacted).
    """

    patient_ids: frozenset[str] = frozenset()
    """PatientID (MRN), OtherPatientIDs, Medical Record Locator, telephone numbers."""
    accession_numbers: frozenset[str] = frozenset()
    other_ids: frozenset[str] = frozenset()
    """Study ID, admission, order and procedure step numbers, issuers, other phones."""
    name_parts: frozenset[str] = frozenset()
    """Upper-case family, given and middle name parts of every person in the study."""
    birth_dates: frozenset[datetime.date] = frozenset()
    dates: frozenset[datetime.date] = frozenset()
    """The study's other dates (study, series, acquisition, content...)."""
    phrases: frozenset[str] = frozenset()
    """Institutions, departments, addresses (and their parts), stations, AE titles."""
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


def name_parts(pn: str) -> set[str]:
    """Family, given and middle parts of each PN component group (PS3.5 6.2.1.1).

    Prefixes and suffixes are titles ("MR", "DR", "JR") found in ordinary text, so they
    are left out. In a script written without spaces (CJK, Hangul), each component is a
    part whatever its length, and so is the family name joined to the given name
    (王^小明 is written 王小明).
    """
    parts: set[str] = set()
    for group in pn.split("="):  # alphabetic, ideographic, phonetic representations
        components = [c.strip() for c in group.split("^")[:3]]
        if is_unspaced_script(group):
            parts.update(c.upper() for c in components if c)
            parts.add("".join(components[:2]).replace(" ", "").upper())
            parts.discard("")
            continue
        for component in components:
            for part in _NAME_SPLIT.split(component.upper()):
                part = part.strip(".'()")
                if len(part) >= MIN_NAME_PART_LENGTH and part not in _TITLES:
                    parts.add(part)
    return parts


def phrase_forms(value: str, address: bool) -> set[str]:
    """The phrases to look for from one institution, station or address value.

    The whole value, and for an address each comma- or line-separated part that is more
    than one word or holds a number (a street, a post code and town), since an address
    is often copied in part. One-word parts ("PARIS", "FRANCE") are left out: a town
    named in a description identifies nobody.
    """
    forms = set()
    whole = " ".join(TOKEN.findall(normalize(value)))
    if len(whole) >= MIN_ID_LENGTH:
        forms.add(whole)
    if address:
        for part in _ADDRESS_SPLIT.split(value):
            words = TOKEN.findall(normalize(part))
            if len(words) > 1 or (words and any(c.isdigit() for c in words[0])):
                text = " ".join(words)
                if len(text) >= MIN_ID_LENGTH:
                    forms.add(text)
    return forms


def _is_instance_uid(value: str) -> bool:
    return (
        not value.startswith(STANDARD_UID_ROOT)
        and len(value) >= MIN_UID_LENGTH
        and value.count(".") >= 2
    )


def _wanted_vr(tag: int, stored_vr: str | None) -> str | None:
    """The VR of an element the collector reads (as ``raw_vr`` finds it, without
    decoding), or None for one it skips: bulk data, private data other than sequences
    and UIDs (vendor-defined), and what is neither a name, a date, a UID, an AE title,
    a sequence nor one of the identifier attributes."""
    if is_bulk(tag):
        return None
    vr = stored_vr
    if vr is None or vr == "UN":
        vr = dictionary_vr(tag)
    if tag >> 16 & 1 and vr not in ("SQ", "UI"):
        return None  # private data: vendor-defined, what it means is unknown
    wanted = (
        vr in ("SQ", "UI", "PN", "DA", "DT", "AE")
        or tag in _PATIENT_ID_TAGS
        or tag in _ACCESSION_TAGS
        or tag in _OTHER_ID_TAGS
        or tag in _PHRASE_TAGS
    )
    return vr if wanted else None


_WANTED: dict[tuple[int, str | None], str | None] = {}
""":func:`_wanted_vr` per (tag, stored VR): the same answer for every instance."""
_WANTED_LIMIT = 65536  # private tags are many; a cache that only grows would leak


def _raw_uids(value: bytes) -> list[str]:
    """The UIDs of a raw UI value, stripped as the collector strips decoded values.

    The same strings as ``value_strings`` of pydicom's decoded value: it removes trailing
    NUL and space padding, splits on backslashes and strips each UID of whitespace.
    """
    values = (v.strip().strip("\x00 ") for v in value.decode("latin-1").rstrip(" \x00").split("\\"))
    return [v for v in values if v]


def parse_da(value: str) -> datetime.date | None:
    """A DA value (YYYYMMDD, PS3.5 Table 6.2-1), the date of a DT, or ACR-NEMA YYYY.MM.DD."""
    digits = value.strip().replace(".", "")[:8] if "." in value[:10] else value.strip()[:8]
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


_ADDRESS_TAGS = tags(
    "InstitutionAddress", "PatientAddress", "ReferringPhysicianAddress", "PersonAddress"
)


@dataclass
class IdentifierBuilder:
    """Accumulates a study's identifiers instance by instance, then :meth:`build` them.

    Mutable on purpose: every original instance of the study is added, and only the
    frozen result is passed on. ``keeps`` is the profile's answer to whether an attribute
    leaves as it came; without it, everything found is looked for.
    """

    keeps: Keeps | None = None
    patient_ids: set[str] = field(default_factory=set)
    accession_numbers: set[str] = field(default_factory=set)
    other_ids: set[str] = field(default_factory=set)
    name_parts: set[str] = field(default_factory=set)
    birth_dates: set[datetime.date] = field(default_factory=set)
    dates: set[datetime.date] = field(default_factory=set)
    phrases: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    # What kept attributes carry, and what only the patient's own attributes carry.
    _retained: dict[str, set] = field(default_factory=dict, repr=False)
    _patient_names: set[str] = field(default_factory=set, repr=False)
    _kept: dict[int, bool] = field(default_factory=dict, repr=False)
    _seen: set[tuple[int, bytes, str]] = field(default_factory=set, repr=False)

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
        retained = self._retained
        names = self.name_parts - (retained.get("name_parts", set()) - self._patient_names)
        return OriginalIdentifiers(
            patient_ids=frozenset(self.patient_ids),
            accession_numbers=frozenset(self.accession_numbers),
            other_ids=frozenset(self.other_ids - retained.get("other_ids", set())),
            name_parts=frozenset(names),
            birth_dates=frozenset(self.birth_dates),
            dates=frozenset(self.dates - retained.get("dates", set())),
            phrases=frozenset(self.phrases - retained.get("phrases", set())),
            uids=frozenset(self.uids - retained.get("uids", set())),
        )

    def _is_kept(self, tag: int) -> bool:
        if self.keeps is None:
            return False
        kept = self._kept.get(tag)
        if kept is None:
            kept = self._kept[tag] = self.keeps(tag)
        return kept

    def _add(self, kind: str, tag: int, found: set) -> None:
        if not found:
            return
        getattr(self, kind).update(found)
        if self._is_kept(tag):
            self._retained.setdefault(kind, set()).update(found)

    def _add_uids(self, tag: int, values: list[str]) -> None:
        if values and tag not in _NON_INSTANCE_UID_TAGS:
            self._add("uids", tag, {v for v in values if _is_instance_uid(v)})

    def _collect(self, ds: Dataset) -> None:
        # The stored elements, not iteration: iterating a Dataset decodes every element,
        # pixels too. A copy, as decoding a sequence replaces its element.
        for key, raw in list(ds._dict.items()):
            tag = int(key)  # the tables are ints: a BaseTag compares with them in Python
            decision = (tag, raw.VR)
            vr = _WANTED.get(decision, "")
            if vr == "":
                vr = _WANTED[decision] = _wanted_vr(tag, raw.VR)
                if len(_WANTED) > _WANTED_LIMIT:
                    _WANTED.clear()
            if vr is None:
                continue
            if vr != "SQ" and isinstance(raw, RawDataElement) and raw.value is not None:
                # A study's instances repeat most values byte for byte: decode each once.
                seen = (tag, raw.value, str(ds.original_character_set))
                if seen in self._seen:
                    continue
                self._seen.add(seen)
                if raw.VR == "UI" or (raw.VR is None and vr == "UI" and not tag >> 16 & 1):
                    # ASCII: read here as pydicom reads it, without its conversion (a
                    # DataElement, validation); every instance has UIDs never seen.
                    self._add_uids(tag, _raw_uids(raw.value))
                    continue
            elem = decoded(ds, tag)  # ds itself stays as read
            if elem.VR == "SQ":
                for item in elem.value or ():
                    self._collect(item)
                continue
            values = [v.strip("\x00 ") for v in value_strings(elem.value)]
            values = [v for v in values if v]
            if not values:
                continue
            if elem.VR == "UI":
                self._add_uids(tag, values)
            elif tag in _PATIENT_ID_TAGS:
                self.patient_ids.update(values)
            elif tag in _ACCESSION_TAGS:
                self.accession_numbers.update(values)
            elif tag in _OTHER_ID_TAGS:
                self._add("other_ids", tag, set(values))
            elif elem.VR == "PN":
                parts = {p for v in values for p in name_parts(v)}
                self.name_parts.update(parts)
                if tag in _PATIENT_NAME_TAGS:
                    self._patient_names.update(parts)
                else:
                    self._add("name_parts", tag, parts)
            elif tag in _BIRTH_DATE_TAGS:
                self.birth_dates.update(d for d in map(parse_da, values) if d is not None)
            elif elem.VR in ("DA", "DT"):
                self._add("dates", tag, {d for d in map(parse_da, values) if d is not None})
            elif tag in _PHRASE_TAGS or elem.VR == "AE":
                address = tag in _ADDRESS_TAGS
                self._add("phrases", tag, {f for v in values for f in phrase_forms(v, address)})


def identifiers_from(
    ds: Dataset,
    *,
    mrn: str | None = None,
    accession: str | None = None,
    keeps: Keeps | None = None,
) -> OriginalIdentifiers:
    """Identifiers of one ORIGINAL (not yet de-identified) instance.

    ``mrn`` and ``accession`` are the manifest's values; they are added because the
    header may spell them differently (or lack them) and the gate must find both.
    """
    builder = IdentifierBuilder(keeps=keeps)
    builder.add_mrn(mrn)
    builder.add_accession(accession)
    builder.add_dataset(ds)
    return builder.build()
