"""Study-level C-MOVE and C-GET (PS3.4 Annex C.4.2, C.4.3).

Both return a :class:`RetrieveOutcome` with the sub-operation counts. A source that
cannot be reached or stops answering raises SourceUnavailable; a source that refuses
the move destination raises PermanentError with the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pydicom import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from pacsflow.config import SourceConfig
from pacsflow.dicom.network import NODELAY_HANDLERS, make_ae
from pacsflow.dicom.storage import handle_store
from pacsflow.errors import PermanentError, RetriableError, SourceUnavailable

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
        raise PermanentError(
            f"source {source.ae_title} does not know our receiver's AE title as a C-MOVE "
            "destination; add it (AE title, host, port) to the source's list of modalities"
        )
    category = code_to_category(code)
    if category in ("Failure", "Cancel"):
        raise RetriableError(
            f"source {source.ae_title} ended the {operation} with status 0x{code:04X} "
            f"({outcome.completed} sent, {outcome.failed} failed)"
        )
    return outcome


def _associate(ae, source: SourceConfig, handlers: list, ext_neg: list | None = None):
    assoc = ae.associate(
        source.host, source.port, ae_title=source.ae_title, ext_neg=ext_neg, evt_handlers=handlers
    )
    if not assoc.is_established:
        raise SourceUnavailable(
            f"source {source.ae_title}@{source.host}:{source.port} refused or did not answer "
            "the association; check that it is running and lists our AE title"
        )
    return assoc


def move_study(
    source: SourceConfig, calling_ae: str, destination_ae: str, study_uid: str
) -> RetrieveOutcome:
    """Ask ``source`` to send the study to ``destination_ae`` (our running receiver)."""
    ae = make_ae(calling_ae, timeout=source.timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, source, NODELAY_HANDLERS)
    try:
        responses = assoc.send_c_move(
            _identifier(study_uid), destination_ae, StudyRootQueryRetrieveInformationModelMove
        )
        return _consume(responses, source, "C-MOVE")
    finally:
        if assoc.is_established:
            assoc.release()


def get_study(
    source: SourceConfig, calling_ae: str, study_uid: str, folder: Path
) -> RetrieveOutcome:
    """Pull the study over our own association into ``folder`` (no receiver needed).

    C-GET needs each storage SOP class requested with the SCP role, within the limit
    of 128 presentation contexts (PS3.8 9.3.2.2): the GET context plus pynetdicom's
    120 common storage classes.
    """
    ae = make_ae(calling_ae, timeout=source.timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for context in StoragePresentationContexts:
        ae.add_requested_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        roles.append(build_role(context.abstract_syntax, scp_role=True))

    def folder_for(uid: str) -> Path | None:
        return folder if uid == study_uid else None

    handlers = [*NODELAY_HANDLERS, (evt.EVT_C_STORE, partial(handle_store, folder_for=folder_for))]
    assoc = _associate(ae, source, handlers, ext_neg=roles)
    try:
        responses = assoc.send_c_get(
            _identifier(study_uid), StudyRootQueryRetrieveInformationModelGet
        )
        return _consume(responses, source, "C-GET")
    finally:
        if assoc.is_established:
            assoc.release()
