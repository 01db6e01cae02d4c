"""The study's original identifiers: what the gate searches the output for.

Collected from the files as retrieved, before de-identification. Holding them means
holding PHI: their ``repr`` shows counts only.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field, fields

from pydicom.dataset import Dataset

from pacsflow.deid.phi_gate.elements import is_bulk, raw_vr, tags, value_strings

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
# Patient Identification (PS3.3 C.7.1.1 / C.2.2): the MRN and its aliases.
_PATIENT_ID_TAGS = tags(
    "PatientID", "OtherPatientIDs", "MedicalRecordLocator", "PatientTelephoneNumbers"
)
_ACCESSION_TAGS = tags("AccessionNumber")
# Visit and order identifiers (PS3.15 Table E.1-1 removes or zeroes each of them).
_OTHER_ID_TAGS = tags(
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
_PATIENT_NAME_TAGS = tags(
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ResponsiblePerson",
)
_BIRTH_DATE_TAGS = tags("PatientBirthDate")

_NAME_SPLIT = re.compile(r"[\s,\-]+")


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
            if is_bulk(tag):
                continue
            vr = raw_vr(ds, tag)
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
            values = [v.strip("\x00 ") for v in value_strings(elem.value)]
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
