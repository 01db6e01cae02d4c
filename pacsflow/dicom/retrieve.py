"""Study-level C-MOVE and C-GET (PS3.4 Annex C.4.2, C.4.3).

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


@dataclass(frozen=True)
class RetrieveOutcome:
    completed: int
    failed: int
    warning: int


def _identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
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
        raise RetriableError(
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
    if association is None:
        with SourceAssociation(source, calling_ae, RetrieveMethod.MOVE) as own:
            return move_study(source, calling_ae, destination_ae, study_uid, own)
    try:
        responses = association.get().send_c_move(
            _identifier(study_uid), destination_ae, StudyRootQueryRetrieveInformationModelMove
        )
        return _consume(responses, source, "C-MOVE")
    except BaseException:
        association.discard()
        raise


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
    if association is None:
        with SourceAssociation(source, calling_ae, RetrieveMethod.GET) as own:
            return get_study(source, calling_ae, study_uid, folder, own)
    association.receive_into(study_uid, folder)
    try:
        responses = association.get().send_c_get(
            _identifier(study_uid), StudyRootQueryRetrieveInformationModelGet
        )
        return _consume(responses, source, "C-GET")
    except BaseException:
        association.discard()
        raise
    finally:
        association.receive_into(None, None)
