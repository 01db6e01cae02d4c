"""Study-level and image-level C-MOVE and C-GET (PS3.4 Annex C.4.2, C.4.3).

A study is retrieved whole; instances that did not arrive are retrieved again by their
SOP Instance UIDs, one request per series (:func:`move_instances`, :func:`get_instances`).

Both return a :class:`RetrieveOutcome` with the sub-operation counts. A source that
cannot be reached or stops answering raises SourceUnavailable; a source that refuses
the move destination raises RetriableError with the fix (see :func:`_consume`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from pacsflow.config import RetrieveMethod, SourceConfig
from pacsflow.dicom.association import SourceAssociation
from pacsflow.errors import RetriableError, SourceUnavailable

LOGGER = logging.getLogger(__name__)

_MOVE_DESTINATION_UNKNOWN = 0xA801


class DestinationUnreachable(RetriableError):
    """The source answered 0xA801: it does not know, or could not reach, the move's
    destination (our receiver)."""


@dataclass(frozen=True)
class RetrieveOutcome:
    completed: int
    failed: int
    warning: int


def _identifier(
    study_uid: str, series_uid: str | None = None, sop_uids: list[str] | None = None
) -> Dataset:
    """A STUDY-level identifier, or an IMAGE-level one for ``sop_uids`` of one series.

    At the IMAGE level the unique keys of the levels above are single values and the
    SOP Instance UIDs a list (PS3.4 C.4.2.2.1, hierarchical retrieve).
    """
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    if sop_uids is None:
        ds.QueryRetrieveLevel = "STUDY"
        return ds
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SeriesInstanceUID = series_uid or ""
    ds.SOPInstanceUID = list(sop_uids)
    return ds


def _consume(responses, source: SourceConfig, operation: str) -> RetrieveOutcome:
    last: Dataset | None = None
    for status, _identifier in responses:
        if not status or "Status" not in status:
            raise SourceUnavailable(
                f"source {source.ae_title} stopped answering the {operation} (aborted or timed out)"
            )
        last = status
    if last is None:
        raise SourceUnavailable(f"source {source.ae_title} sent no {operation} response")
    code = int(last.Status)
    outcome = RetrieveOutcome(
        completed=int(last.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(last.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(last.get("NumberOfWarningSuboperations", 0) or 0),
    )
    if code == _MOVE_DESTINATION_UNKNOWN:
        # Retriable: pynetdicom and dcmqrscp also answer 0xA801 when they cannot connect
        # to a destination they know, as while one receiver process hands the port to
        # another. A real misconfiguration fails the study after the retry delays.
        raise DestinationUnreachable(
            f"source {source.ae_title} does not know our receiver's AE title as a C-MOVE "
            "destination, or could not reach it; add it (AE title, host, port) to the "
            "source's list of modalities, and check that the receiver is running"
        )
    category = code_to_category(code)
    if category in ("Failure", "Cancel"):
        raise RetriableError(
            f"source {source.ae_title} ended the {operation} with status 0x{code:04X} "
            f"({outcome.completed} sent, {outcome.failed} failed)"
        )
    return outcome


def _move(
    source: SourceConfig,
    calling_ae: str,
    destination_ae: str,
    identifier: Dataset,
    association: SourceAssociation | None,
) -> RetrieveOutcome:
    if association is None:
        with SourceAssociation(source, calling_ae, RetrieveMethod.MOVE) as own:
            return _move(source, calling_ae, destination_ae, identifier, own)
    try:
        responses = association.get().send_c_move(
            identifier, destination_ae, StudyRootQueryRetrieveInformationModelMove
        )
        return _consume(responses, source, "C-MOVE")
    except BaseException:
        association.discard()
        raise


def _get(
    source: SourceConfig,
    calling_ae: str,
    study_uid: str,
    identifier: Dataset,
    folder: Path,
    association: SourceAssociation | None,
) -> RetrieveOutcome:
    if association is None:
        with SourceAssociation(source, calling_ae, RetrieveMethod.GET) as own:
            return _get(source, calling_ae, study_uid, identifier, folder, own)
    association.receive_into(study_uid, folder)
    try:
        responses = association.get().send_c_get(
            identifier, StudyRootQueryRetrieveInformationModelGet
        )
        return _consume(responses, source, "C-GET")
    except BaseException:
        association.discard()
        raise
    finally:
        association.receive_into(None, None)


def move_study(
    source: SourceConfig,
    calling_ae: str,
    destination_ae: str,
    study_uid: str,
    association: SourceAssociation | None = None,
) -> RetrieveOutcome:
    """Ask ``source`` to send the study to ``destination_ae`` (our running receiver).

    Uses ``association`` when given (a lane's, kept open), else one of its own.
    """
    return _move(source, calling_ae, destination_ae, _identifier(study_uid), association)


def move_instances(
    source: SourceConfig,
    calling_ae: str,
    destination_ae: str,
    study_uid: str,
    series_uid: str,
    sop_uids: list[str],
    association: SourceAssociation | None = None,
) -> RetrieveOutcome:
    """Ask ``source`` to send these instances of one series to ``destination_ae``."""
    identifier = _identifier(study_uid, series_uid, sop_uids)
    return _move(source, calling_ae, destination_ae, identifier, association)


def get_study(
    source: SourceConfig,
    calling_ae: str,
    study_uid: str,
    folder: Path,
    association: SourceAssociation | None = None,
) -> RetrieveOutcome:
    """Pull the study over our own association into ``folder`` (no receiver needed).

    Uses ``association`` when given (a lane's, kept open), else one of its own; the
    storage contexts C-GET needs are requested when it opens (see SourceAssociation).
    """
    return _get(source, calling_ae, study_uid, _identifier(study_uid), folder, association)


def get_instances(
    source: SourceConfig,
    calling_ae: str,
    study_uid: str,
    series_uid: str,
    sop_uids: list[str],
    folder: Path,
    association: SourceAssociation | None = None,
) -> RetrieveOutcome:
    """Pull these instances of one series of the study into ``folder``."""
    identifier = _identifier(study_uid, series_uid, sop_uids)
    return _get(source, calling_ae, study_uid, identifier, folder, association)
