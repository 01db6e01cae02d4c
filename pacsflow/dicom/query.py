"""C-FIND against one source (PS3.4 Annex C, Study Root model): studies, and their instances.

The outcome is a value: a list of matches, empty when the source answered and has no
such study; which of several matches a manifest row wants is decided in
:mod:`pacsflow.dicom.matching`. A source that cannot be reached, aborts, times out or answers with a
failure status raises :class:`~pacsflow.errors.SourceUnavailable`, because only a
clean "no match" may send a study on to the next source.

Series- and image-level C-FINDs (:func:`find_instances`) list a located study's instances: how
many to expect when the source does not answer NumberOfStudyRelatedInstances, and which
ones to fetch again when some did not arrive.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from pynetdicom.status import code_to_category

from pacsflow.config import SourceConfig
from pacsflow.dicom.association import SourceAssociation
from pacsflow.errors import SourceUnavailable

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyQuery:
    """What identifies a study: its UID, else the patient's MRN and the accession number."""

    study_uid: str | None = None
    mrn: str | None = None
    accession_number: str | None = None

    def __post_init__(self) -> None:
        if not self.study_uid and not (self.mrn and self.accession_number):
            raise ValueError("a StudyQuery needs study_uid, or both mrn and accession_number")

    def identifier(self) -> Dataset:
        """The C-FIND identifier: matching keys plus the return keys we need."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        if self.study_uid:
            ds.StudyInstanceUID = self.study_uid
            ds.PatientID = ""
            ds.AccessionNumber = ""
        else:
            ds.StudyInstanceUID = ""
            ds.PatientID = self.mrn
            ds.AccessionNumber = self.accession_number
        ds.StudyDate = ""
        ds.ModalitiesInStudy = ""
        ds.NumberOfStudyRelatedInstances = ""
        return ds


@dataclass(frozen=True)
class StudyMatch:
    """A study the source holds. ``instances`` and ``study_date`` are None when the
    source does not say (or says something that is not a DICOM date)."""

    study_uid: str
    instances: int | None
    modalities: tuple[str, ...]
    study_date: dt.date | None = None


def _date_from(value: object) -> dt.date | None:
    """A DA value (PS3.5 6.2: YYYYMMDD) as a date; None when empty or malformed."""
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _match_from(identifier: Dataset) -> StudyMatch | None:
    uid = str(identifier.get("StudyInstanceUID", "") or "").strip()
    if not uid:
        return None
    count = identifier.get("NumberOfStudyRelatedInstances")
    modalities = identifier.get("ModalitiesInStudy") or ()
    if isinstance(modalities, str):
        modalities = (modalities,)
    return StudyMatch(
        study_uid=uid,
        instances=int(count) if count not in (None, "") else None,
        modalities=tuple(str(m) for m in modalities),
        study_date=_date_from(identifier.get("StudyDate")),
    )


@dataclass(frozen=True)
class InstanceRef:
    """One instance of a study, by the unique keys an IMAGE-level retrieve needs."""

    series_uid: str
    sop_uid: str


def _series_identifier(study_uid: str) -> Dataset:
    """A SERIES-level C-FIND identifier for every series of one study."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    return ds


def _instance_identifier(study_uid: str, series_uid: str) -> Dataset:
    """An IMAGE-level C-FIND identifier for every instance of one series.

    The unique keys of the levels above are given as single values: a hierarchical
    query (PS3.4 C.4.1.3.1), the one every Study Root SCP must answer. A relational one
    (no series UID) needs extended negotiation a source may refuse; Orthanc and dcmqrscp
    happen to answer it, which is no promise for others.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ""
    return ds


def _c_find(
    source: SourceConfig, association: SourceAssociation, identifier: Dataset
) -> list[Dataset]:
    """The identifiers of every pending response; raises SourceUnavailable when the
    answer cannot be trusted as complete."""
    assoc = association.get()
    found: list[Dataset] = []
    try:
        responses = assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        for status, response in responses:
            # An abort or timeout yields an empty status: a transport failure (PS3.7 9.1.2.1.6).
            if not status or "Status" not in status:
                raise SourceUnavailable(
                    f"source {source.ae_title} stopped answering the C-FIND (aborted or timed out)"
                )
            category = code_to_category(status.Status)
            if category == "Pending" and response is not None:
                found.append(response)
            elif category in ("Failure", "Cancel"):
                raise SourceUnavailable(
                    f"source {source.ae_title} answered the C-FIND with status "
                    f"0x{status.Status:04X} ({category})"
                )
    except BaseException:
        association.discard()
        raise
    return found


def find_studies(
    source: SourceConfig,
    calling_ae: str,
    query: StudyQuery,
    association: SourceAssociation | None = None,
) -> list[StudyMatch]:
    """All studies ``source`` holds for ``query``; [] means the source has none.

    Uses ``association`` when given (a lane's, kept open), else one of its own.
    Raises SourceUnavailable when the answer cannot be trusted as "not found".
    """
    if association is None:
        with SourceAssociation(source, calling_ae, find_only=True) as own:
            return find_studies(source, calling_ae, query, own)
    responses = _c_find(source, association, query.identifier())
    return [match for match in map(_match_from, responses) if match is not None]


def find_instances(
    source: SourceConfig,
    calling_ae: str,
    study_uid: str,
    association: SourceAssociation | None = None,
) -> list[InstanceRef]:
    """Every instance ``source`` lists for the study, each once: a SERIES-level C-FIND,
    then an IMAGE-level one per series (1 + series requests, on one association).

    Uses ``association`` when given (a lane's, kept open), else one of its own.
    """
    if association is None:
        with SourceAssociation(source, calling_ae, find_only=True) as own:
            return find_instances(source, calling_ae, study_uid, own)
    series = _c_find(source, association, _series_identifier(study_uid))
    listed: dict[str, InstanceRef] = {}
    for series_uid in dict.fromkeys(_uid(response, "SeriesInstanceUID") for response in series):
        if not series_uid:
            continue
        for response in _c_find(source, association, _instance_identifier(study_uid, series_uid)):
            sop_uid = _uid(response, "SOPInstanceUID")
            if sop_uid:
                listed.setdefault(sop_uid, InstanceRef(series_uid, sop_uid))
    return list(listed.values())


def _uid(response: Dataset, keyword: str) -> str:
    return str(response.get(keyword, "") or "").strip()
