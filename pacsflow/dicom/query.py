"""Study-level C-FIND against one source (PS3.4 Annex C, Study Root model).

The outcome is a value: a list of matches, empty when the source answered and has no
such study. A source that cannot be reached, aborts, times out or answers with a
failure status raises :class:`~pacsflow.errors.SourceUnavailable`, because only a
clean "no match" may send a study on to the next source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from pynetdicom.status import code_to_category

from pacsflow.config import SourceConfig
from pacsflow.dicom.network import NODELAY_HANDLERS, make_ae
from pacsflow.errors import PermanentError, SourceUnavailable

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
    """A study the source holds. ``instances`` is None when the source does not say."""

    study_uid: str
    instances: int | None
    modalities: tuple[str, ...]


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
    )


def find_studies(source: SourceConfig, calling_ae: str, query: StudyQuery) -> list[StudyMatch]:
    """All studies ``source`` holds for ``query``; [] means the source has none.

    Raises SourceUnavailable when the answer cannot be trusted as "not found".
    """
    ae = make_ae(calling_ae, timeout=source.timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(
        source.host, source.port, ae_title=source.ae_title, evt_handlers=NODELAY_HANDLERS
    )
    if not assoc.is_established:
        raise SourceUnavailable(
            f"source {source.ae_title}@{source.host}:{source.port} refused or did not answer "
            f"the association from {calling_ae!r}; check that it is running and lists this AE"
        )
    matches: list[StudyMatch] = []
    try:
        responses = assoc.send_c_find(
            query.identifier(), StudyRootQueryRetrieveInformationModelFind
        )
        for status, identifier in responses:
            # An abort or timeout yields an empty status: a transport failure (PS3.7 9.1.2.1.6).
            if not status or "Status" not in status:
                raise SourceUnavailable(
                    f"source {source.ae_title} stopped answering the C-FIND (aborted or timed out)"
                )
            category = code_to_category(status.Status)
            if category == "Pending" and identifier is not None:
                match = _match_from(identifier)
                if match is not None:
                    matches.append(match)
            elif category in ("Failure", "Cancel"):
                raise SourceUnavailable(
                    f"source {source.ae_title} answered the C-FIND with status "
                    f"0x{status.Status:04X} ({category})"
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return matches


def find_study(source: SourceConfig, calling_ae: str, query: StudyQuery) -> StudyMatch | None:
    """The one study ``query`` names, or None; several matches is an error with the fix."""
    matches = {m.study_uid: m for m in find_studies(source, calling_ae, query)}
    if len(matches) > 1:
        raise PermanentError(
            f"{len(matches)} studies at source {source.ae_title} match this accession number; "
            "add the study_uid column to the manifest row to say which one is wanted"
        )
    return next(iter(matches.values()), None)
