"""One association to a source, reused for many requests (one per lane).

Opening and releasing an association costs more than a small C-FIND (measured with the
sandbox: ~9 ms to associate, ~13 ms to release, ~10 ms to find), and a C-GET association
negotiates 120 storage contexts with their SCP roles. A lane sends its requests one after
another, so it keeps one association for all of them: never two requests at once on it
(pynetdicom has no concurrent operations on one association). If the source closed it
(idle timeout, restart), it is opened again before the next request; a request that fails
mid-way closes it.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacsflow.config import RetrieveMethod, SourceConfig
from pacsflow.dicom.network import NODELAY_HANDLERS, make_ae
from pacsflow.dicom.storage import handle_store
from pacsflow.dicom.syntaxes import RECEIVED_TRANSFER_SYNTAXES
from pacsflow.dicom.tls import tls_args
from pacsflow.errors import SourceUnavailable


class SourceAssociation:
    """An association to ``source`` for C-FIND and its retrieve method, opened on first use.

    For C-GET, instances arrive on this association: :meth:`receive_into` names the
    folder for the study being fetched; instances of any other study are refused.
    ``find_only`` negotiates C-FIND alone (a lane's query association, see
    :mod:`flows.lanes`): no storage contexts to offer for a C-GET source.
    """

    def __init__(
        self,
        source: SourceConfig,
        calling_ae: str,
        retrieve: RetrieveMethod | None = None,
        *,
        find_only: bool = False,
    ) -> None:
        self.source = source
        self.calling_ae = calling_ae
        self.retrieve = retrieve or source.retrieve
        self.find_only = find_only
        self._assoc: Association | None = None
        self._study_uid: str | None = None
        self._folder: Path | None = None

    def receive_into(self, study_uid: str | None, folder: Path | None) -> None:
        self._study_uid, self._folder = study_uid, folder

    def _folder_for(self, study_uid: str) -> Path | None:
        return self._folder if study_uid == self._study_uid else None

    def _open(self) -> Association:
        source = self.source
        ae = make_ae(self.calling_ae, timeout=source.timeout)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        handlers = list(NODELAY_HANDLERS)
        roles = []
        if self.find_only:
            pass  # C-FIND, requested above, is all it needs
        elif self.retrieve == RetrieveMethod.GET:
            # C-GET needs each storage SOP class requested with the SCP role, within the
            # limit of 128 presentation contexts (PS3.8 9.3.2.2): FIND, GET and 120 storage.
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for context in StoragePresentationContexts:
                ae.add_requested_context(context.abstract_syntax, RECEIVED_TRANSFER_SYNTAXES)
                roles.append(build_role(context.abstract_syntax, scp_role=True))
            handlers.append((evt.EVT_C_STORE, lambda event: handle_store(event, self._folder_for)))
        else:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(
            source.host,
            source.port,
            ae_title=source.ae_title,
            ext_neg=roles or None,
            evt_handlers=handlers,
            tls_args=tls_args(source),
        )
        if not assoc.is_established:
            raise SourceUnavailable(
                f"source {source.ae_title}@{source.host}:{source.port} refused or did not "
                f"answer the association from {self.calling_ae!r}; check that it is running "
                "and lists this AE"
            )
        return assoc

    def get(self) -> Association:
        """The open association, opened (again) if the source has closed it."""
        if self._assoc is None or not self._assoc.is_established:
            self._assoc = self._open()
        return self._assoc

    def discard(self) -> None:
        """Abort after a failed request: its state cannot be trusted for the next one."""
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.abort()
        self._assoc = None

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def __enter__(self) -> SourceAssociation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
