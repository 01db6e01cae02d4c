"""A small but real Query/Retrieve SCP, serving DICOM files from a folder.

Unit tests and ``pacsflow sandbox`` need a PACS that speaks the same DIMSE as a hospital
one (C-ECHO, C-FIND, C-MOVE to a named destination, C-GET over the same association)
without Docker. :class:`SandboxPacs` runs in-process on pynetdicom, indexes file headers
in memory and reads pixel data only when an instance is sent.

It deliberately supports only the SOP classes it needs: pynetdicom deep-copies and
validates every supported presentation context on each association, so the storage
contexts offered for C-GET are those of the SOP classes actually held, not all 128.

For completeness tests it can lose instances on the way (:meth:`SandboxPacs.drop_instances`)
and keep quiet about how many a study holds (``announce_instance_counts=False``, as
dcmqrscp does).

For benchmarks it can act as a busy archive: ``retrieve_delay`` makes every C-MOVE and
C-GET wait before sending, on its own association's thread so the others go on, and
every request it serves is recorded (:attr:`SandboxPacs.activity`, optionally appended to
a JSONL file another process can read; see :mod:`pacsflow.sandbox.activity`).
"""

from __future__ import annotations

import errno
import fnmatch
import itertools
import logging
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from pacsflow.dicom.network import NODELAY_HANDLERS, make_ae
from pacsflow.errors import PacsflowError
from pacsflow.sandbox.activity import Operation, OperationKind

LOGGER = logging.getLogger(__name__)

# DIMSE statuses, PS3.4 Annex C.4 (Tables C.4-1 to C.4-3) and PS3.7 Annex C.
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801
STATUS_IDENTIFIER_DOES_NOT_MATCH = 0xA900

# A-ASSOCIATE-RJ for offline mode (PS3.8 section 9.3.4): rejected-transient, by the
# UL service-provider (presentation related function), temporary congestion. A
# transient rejection is what a requestor should read as "try again later".
_OFFLINE_REJECT = (0x02, 0x03, 0x01)

#: Unique key of each Query/Retrieve level (PS3.4 C.6.1.1 and C.6.2.1).
LEVEL_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# Attributes the SCP computes from the instances it holds (PS3.4 C.3.4, Table C.3-5;
# ModalitiesInStudy is in the study level of Table C.6-5). Orthanc returns them too.
_COMPUTED = {
    "PATIENT": (
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    "STUDY": ("ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("NumberOfSeriesRelatedInstances",),
    "IMAGE": (),
}
_ALL_COMPUTED = {kw for keywords in _COMPUTED.values() for kw in keywords}

# Keys that are never matched on: they describe the query or the response itself.
_NOT_MATCHED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
_NOT_MATCHED |= _ALL_COMPUTED - {"ModalitiesInStudy"}
# Binary and sequence VRs get universal matching (sequence matching, C.2.2.2.6, is
# not implemented: pacsflow never queries on sequences).
_UNMATCHABLE_VRS = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}

_QR_CONTEXTS = (
    Verification,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelFind,
)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# PS3.8 section 9.3.2.2: a presentation context ID is an odd number 1-255.
_MAX_REQUESTED_CONTEXTS = 128


class PortInUseError(PacsflowError, OSError):
    """The sandbox PACS could not listen because its port is taken."""

    def __init__(self, host: str, port: int, ae_title: str) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"cannot start sandbox PACS {ae_title!r}: port {port} on {host} is already in use; "
            "stop whatever listens there or choose another port"
        )


@dataclass(frozen=True, eq=False)
class _Entry:
    """One indexed instance: where it is and its header (no pixel data)."""

    path: Path
    header: Dataset

    @property
    def sop_class_uid(self) -> str:
        return str(self.header.SOPClassUID)

    @property
    def transfer_syntax_uid(self) -> str:
        return str(self.header.file_meta.TransferSyntaxUID)


class SandboxPacs:
    """An in-process Query/Retrieve SCP over the ``*.dcm`` files in ``storage_dir``.

    Supports Verification, Study Root FIND/MOVE/GET and Patient Root FIND. C-MOVE
    destinations must be registered (``destinations`` or :meth:`add_destination`), as
    on a real PACS, so a typo in the destination AE gives 0xA801 rather than data sent
    somewhere. :meth:`set_offline` makes it reject every association, so tests can tell
    "source down" from "not found".

    ``retrieve_delay`` seconds pass before each C-MOVE or C-GET sends anything, as on an
    archive that fetches studies from slow storage. Every C-FIND, C-MOVE and C-GET served
    is kept in :attr:`activity` and, with ``activity_log``, appended to that file as one
    JSON line when it ends.

    ``announce_instance_counts=False`` leaves NumberOfStudyRelatedInstances out of
    study-level C-FIND answers, like a source that does not compute it.
    """

    def __init__(
        self,
        ae_title: str,
        port: int,
        storage_dir: Path,
        destinations: dict[str, tuple[str, int]] | None = None,
        host: str = "127.0.0.1",
        *,
        timeout: float = 30.0,
        retrieve_delay: float = 0.0,
        activity_log: Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        announce_instance_counts: bool = True,
    ) -> None:
        if retrieve_delay < 0:
            raise ValueError(
                f'Argument "retrieve_delay" must not be negative (got {retrieve_delay}); '
                "use 0 for an archive that sends at once."
            )
        self.ae_title = ae_title
        self.storage_dir = Path(storage_dir)
        self._host = host
        self._port = port
        self._timeout = timeout
        self._destinations: dict[str, tuple[str, int]] = dict(destinations or {})
        self._entries: dict[str, _Entry] = {}  # SOPInstanceUID -> entry, insertion order
        self._lock = threading.RLock()
        self._offline = False
        self._ae = make_ae(ae_title, timeout=timeout)
        # Tests run many associations in parallel; a real PACS allows dozens.
        self._ae.maximum_associations = 64
        self._server: ThreadedAssociationServer | None = None
        self.retrieve_delay = retrieve_delay
        self.activity_log = Path(activity_log) if activity_log is not None else None
        #: Serve DICOM over TLS with this server context (None: plain TCP).
        self.ssl_context = ssl_context
        self.announce_instance_counts = announce_instance_counts
        #: (instances to drop per retrieval, retrievals left to drop them in)
        self._drops = (0, 0)
        self._activity: list[Operation] = []
        self._sequence = itertools.count(1)
        self._log_fd: int | None = None
        # Set by stop(), so that a delayed retrieval does not outlive the server.
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to associate with; the real port once started with port 0."""
        return self._host, self._port

    @property
    def is_running(self) -> bool:
        return self._server is not None

    def start(self) -> SandboxPacs:
        """Index ``storage_dir`` and start listening in background threads."""
        if self._server is not None:
            return self
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        if self.activity_log is not None:
            self.activity_log.parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND: each record is one write(), so lines from several PACS (threads or
            # processes) sharing a file never interleave.
            self._log_fd = os.open(self.activity_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        # Files added with add_files/add_datasets before start() are indexed already.
        with self._lock:
            known = {entry.path.resolve() for entry in self._entries.values()}
        self._index(p for p in sorted(self.storage_dir.rglob("*.dcm")) if p.resolve() not in known)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            *NODELAY_HANDLERS,
        ]
        try:
            server = self._ae.start_server(
                (self._host, self._port),
                block=False,
                evt_handlers=handlers,
                contexts=self._server_contexts(),
                ssl_context=self.ssl_context,
            )
        except OSError as exc:
            self._close_log()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(self._host, self._port, self.ae_title) from exc
            raise
        assert server is not None  # non-blocking start_server always returns the server
        self._server = server
        self._port = server.server_address[1]
        LOGGER.info(
            "sandbox PACS %s listening on %s:%d with %d instances",
            self.ae_title,
            self._host,
            self._port,
            len(self._entries),
        )
        return self

    def stop(self) -> None:
        """Abort open associations and stop listening. Safe to call twice."""
        if self._server is None:
            return
        self._stopping.set()
        self._ae.shutdown()
        self._server = None
        self._close_log()

    def _close_log(self) -> None:
        with self._lock:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None

    def __enter__(self) -> SandboxPacs:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------

    def add_destination(self, ae_title: str, host: str, port: int) -> None:
        """Register a C-MOVE destination, as a PACS administrator would."""
        with self._lock:
            self._destinations[ae_title.strip()] = (host, port)

    def set_offline(self, offline: bool = True) -> None:
        """While offline every association is rejected (transient), like a PACS that is down."""
        self._offline = offline

    def drop_instances(self, count: int, requests: int = 1) -> None:
        """Lose the first ``count`` instances of each of the next ``requests`` C-MOVEs or
        C-GETs, as a PACS that drops part of a transfer does.

        The lost instances are neither sent nor counted: the retrieval ends with success
        and fewer completed sub-operations, so only a count against the C-FIND's tells.
        An IMAGE-level re-fetch is a retrieval too: ``requests`` large enough loses the
        same instances every time (a source that never sends them).
        """
        if count < 0 or requests < 0:
            raise ValueError(
                f'Arguments "count" and "requests" must not be negative (got {count}, '
                f"{requests}); use drop_instances(0) to send everything again."
            )
        with self._lock:
            self._drops = (count, requests)

    def _after_drops(self, entries: list[_Entry]) -> list[_Entry]:
        """``entries`` less those :meth:`drop_instances` says to lose in this retrieval."""
        with self._lock:
            count, requests = self._drops
            if requests <= 0:
                return entries
            self._drops = (count, requests - 1)
        return entries[count:]

    # -- content -----------------------------------------------------------------------

    def add_files(self, paths: Iterable[Path]) -> list[Path]:
        """Copy DICOM files into ``storage_dir`` (as ``<SOPInstanceUID>.dcm``) and index them."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        stored = []
        root = self.storage_dir.resolve()
        for path in map(Path, paths):
            header = dcmread(path, stop_before_pixels=True)
            if path.resolve().parent.is_relative_to(root):
                target = path
            else:
                target = self.storage_dir / f"{header.SOPInstanceUID}.dcm"
                shutil.copyfile(path, target)
            stored.append(target)
        self._index(stored)
        return stored

    def add_datasets(self, datasets: Iterable[Dataset]) -> list[Path]:
        """Write datasets into ``storage_dir`` (as ``<SOPInstanceUID>.dcm``) and index them."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        stored = []
        for ds in datasets:
            target = self.storage_dir / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(target, enforce_file_format=True)
            stored.append(target)
        self._index(stored)
        return stored

    # -- activity ----------------------------------------------------------------------

    @property
    def activity(self) -> list[Operation]:
        """Every C-FIND, C-MOVE and C-GET served so far, in the order they ended."""
        with self._lock:
            return list(self._activity)

    @contextmanager
    def _record(self, kind: OperationKind, query: Dataset) -> Iterator[dict[str, int]]:
        """Record one request from now until the block exits, however it exits.

        The handlers are generators that pynetdicom drives: the block exits when the
        last response has been produced, or when pynetdicom drops the generator (an
        aborted association), so an operation never stays "in flight" for ever.
        The caller sets ``counts["instances"]``.
        """
        with self._lock:
            seq = next(self._sequence)
        counts = {"instances": 0}
        started, started_wall = time.monotonic(), time.time()
        try:
            yield counts
        finally:
            op = Operation(
                pacs=self.ae_title,
                seq=seq,
                kind=kind,
                started=started,
                ended=time.monotonic(),
                started_wall=started_wall,
                ended_wall=time.time(),
                instances=counts["instances"],
                level=str(query.get("QueryRetrieveLevel", "")).strip().upper(),
            )
            with self._lock:
                self._activity.append(op)
                if self._log_fd is not None:
                    os.write(self._log_fd, (op.to_json() + "\n").encode())

    def _wait_retrieve_delay(self) -> None:
        """Be a busy archive: wait before sending, unless the server is stopping.

        Handlers run on their association's own thread (pynetdicom starts one per
        association), so this holds up only the request being served.
        """
        if self.retrieve_delay > 0:
            self._stopping.wait(self.retrieve_delay)

    @property
    def instance_count(self) -> int:
        with self._lock:
            return len(self._entries)

    def _index(self, paths: Iterable[Path]) -> None:
        """Read headers only; pixel data is read when an instance is sent."""
        new: dict[str, _Entry] = {}
        for path in paths:
            try:
                header = dcmread(path, stop_before_pixels=True)
                sop_uid = str(header.SOPInstanceUID)
                header.file_meta.TransferSyntaxUID  # noqa: B018 - must be readable
                header.StudyInstanceUID  # noqa: B018
            except (InvalidDicomError, AttributeError, OSError) as exc:
                LOGGER.warning("sandbox PACS %s skips %s: %s", self.ae_title, path, exc)
                continue
            new[sop_uid] = _Entry(Path(path), header)
        with self._lock:
            self._entries.update(new)
            if self._server is not None:
                # Each new association deep-copies server.contexts, so replacing the list
                # makes new SOP classes retrievable by C-GET from the next association on.
                self._server.contexts = self._server_contexts()

    def _snapshot(self) -> list[_Entry]:
        with self._lock:
            return list(self._entries.values())

    # -- presentation contexts ---------------------------------------------------------

    def _server_contexts(self) -> list[PresentationContext]:
        """Q/R contexts, plus storage contexts for C-GET for the SOP classes held.

        For C-GET the requestor proposes storage contexts with itself as SCP (PS3.4
        C.4.3.1, role selection PS3.7 D.3.3.4); accepting that role is ``scp_role=True``.
        """
        contexts = [build_context(uid, list(_UNCOMPRESSED)) for uid in _QR_CONTEXTS]
        by_class: dict[str, list[str]] = {}
        for entry in self._snapshot():
            syntaxes = by_class.setdefault(entry.sop_class_uid, list(_UNCOMPRESSED))
            if entry.transfer_syntax_uid not in syntaxes:
                syntaxes.append(entry.transfer_syntax_uid)
        for sop_class, syntaxes in by_class.items():
            cx = build_context(sop_class, syntaxes)
            cx.scu_role = False
            cx.scp_role = True
            contexts.append(cx)
        return contexts

    @staticmethod
    def _storage_contexts(entries: list[_Entry]) -> list[PresentationContext]:
        """Contexts to request from a C-MOVE destination for ``entries``.

        Uncompressed files can be sent in any uncompressed syntax, so one context per SOP
        class offers them all; compressed files are sent as stored, so each compressed
        syntax needs a context of its own or the acceptor could pick one we cannot send.
        """
        wanted: dict[tuple[str, str], None] = {}
        for entry in entries:
            ts = UID(entry.transfer_syntax_uid)
            key = (entry.sop_class_uid, "" if not ts.is_compressed else str(ts))
            wanted[key] = None
        contexts = []
        for sop_class, ts in wanted:
            contexts.append(build_context(sop_class, ts or list(_UNCOMPRESSED)))
        if len(contexts) > _MAX_REQUESTED_CONTEXTS:
            LOGGER.warning(
                "C-MOVE needs %d presentation contexts; only the first %d are requested",
                len(contexts),
                _MAX_REQUESTED_CONTEXTS,
            )
        return contexts[:_MAX_REQUESTED_CONTEXTS]

    # -- matching (PS3.4 C.2.2.2) ------------------------------------------------------

    def _groups(self, level: str) -> dict[str, list[_Entry]]:
        """Instances grouped by the unique key of ``level``, in insertion order."""
        key = LEVEL_KEYS[level]
        groups: dict[str, list[_Entry]] = {}
        for entry in self._snapshot():
            groups.setdefault(str(entry.header.get(key, "")), []).append(entry)
        return groups

    def _matches(self, query: Dataset, level: str) -> Iterator[tuple[Dataset, dict, list]]:
        """(representative header, computed attributes, instances) of each matching entity."""
        for members in self._groups(level).values():
            header = members[0].header
            computed = _computed(level, members)
            if not self.announce_instance_counts:
                computed.pop("NumberOfStudyRelatedInstances", None)
            if all(
                _element_matches(elem, _record_values(elem, header, computed))
                for elem in query
                if elem.keyword not in _NOT_MATCHED and elem.tag.element != 0
            ):
                yield header, computed, members

    def _retrieve_entries(self, query: Dataset) -> list[_Entry] | None:
        """Instances a C-MOVE/C-GET identifier selects; ``None`` if it is unusable.

        The identifier must hold the unique key of its level (PS3.4 C.4.2.2.1): a
        retrieve with universal matching would send the whole archive.
        """
        level = str(query.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVEL_KEYS or not query.get(LEVEL_KEYS[level]):
            return None
        return [entry for *_, members in self._matches(query, level) for entry in members]

    # -- event handlers ----------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        if not self._offline:
            return
        LOGGER.info("sandbox PACS %s is offline: rejecting association", self.ae_title)
        event.assoc.acse.send_reject(*_OFFLINE_REJECT)
        event.assoc.kill()

    def _recorded_until_last(
        self, kind: OperationKind, query: Dataset, produce: Callable[[dict[str, int]], Iterator]
    ) -> Iterator:
        """``produce(counts)``'s responses, the operation recorded before the last one.

        pynetdicom sends the final response before it resumes the handler, so a record
        made after it could still be missing when the requester, holding its answer,
        reads :attr:`activity` (seen on a loaded machine).
        """
        with self._record(kind, query) as counts:
            responses = produce(counts)
            try:
                last = next(responses)
            except StopIteration:
                return
            for response in responses:
                yield last
                last = response
        yield last

    def _recorded_through_last_store(
        self, kind: OperationKind, query: Dataset, produce: Callable[[dict[str, int]], Iterator]
    ) -> Iterator:
        """``produce(counts)``'s items for a C-MOVE or C-GET, recorded until the last
        instance has been stored.

        pynetdicom asks a retrieval's handler for its next item after each C-STORE
        sub-operation, so the record closes when the handler is exhausted: after the
        last instance was sent, and before the final response (and C-MOVE's release of
        its sub-association). Closed at the handler's last item instead, a record would
        leave out the last instance's transfer, all of a one-instance study's. A final
        status the handler yields itself (cancel; ``(None, None)``, an unknown
        destination) ends the record before it is sent, as in
        :meth:`_recorded_until_last`.
        """
        with self._record(kind, query) as counts:
            for item in produce(counts):
                if _is_final(item):
                    break
                yield item
            else:
                return
        yield item

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        def counted(counts: dict[str, int]) -> Iterator[tuple[int, Dataset | None]]:
            for status, identifier in self._find(event):
                if status == STATUS_PENDING:
                    counts["instances"] += 1
                yield status, identifier

        return self._recorded_until_last(OperationKind.FIND, event.identifier, counted)

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        level = str(query.get("QueryRetrieveLevel", "")).strip().upper()
        study_root = event.request.AffectedSOPClassUID == StudyRootQueryRetrieveInformationModelFind
        if level not in LEVEL_KEYS or (study_root and level == "PATIENT"):
            LOGGER.info("sandbox PACS %s: invalid C-FIND level %r", self.ae_title, level)
            yield STATUS_IDENTIFIER_DOES_NOT_MATCH, None
            return
        for header, computed, _members in self._matches(query, level):
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, self._response(query, level, header, computed)
        yield STATUS_SUCCESS, None

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        return self._recorded_through_last_store(
            OperationKind.MOVE, event.identifier, lambda counts: self._move(event, counts)
        )

    def _move(self, event: evt.Event, counts: dict[str, int]) -> Iterator[Any]:
        # pynetdicom's protocol: destination first, then the number of sub-operations,
        # then (status, dataset) pairs.
        destination = self._destinations.get(str(event.move_destination).strip())
        if destination is None:
            LOGGER.info(
                "sandbox PACS %s: unknown move destination %r",
                self.ae_title,
                event.move_destination,
            )
            yield None, None  # pynetdicom answers 0xA801 (PS3.4 C.4.2.1.5)
            return
        entries = self._after_drops(self._retrieve_entries(event.identifier) or [])
        counts["instances"] = len(entries)
        # Before the association to the destination, which would otherwise sit idle.
        self._wait_retrieve_delay()
        host, port = destination
        yield (
            host,
            port,
            {"contexts": self._storage_contexts(entries), "evt_handlers": NODELAY_HANDLERS},
        )
        yield len(entries)
        yield from self._send(event, entries)

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        def get(counts: dict[str, int]) -> Iterator[Any]:
            entries = self._after_drops(self._retrieve_entries(event.identifier) or [])
            counts["instances"] = len(entries)
            self._wait_retrieve_delay()
            yield len(entries)
            yield from self._send(event, entries)

        return self._recorded_through_last_store(OperationKind.GET, event.identifier, get)

    def _send(self, event: evt.Event, entries: list[_Entry]) -> Iterator[Any]:
        for entry in entries:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, dcmread(entry.path)

    def _response(
        self, query: Dataset, level: str, header: Dataset, computed: dict[str, Any]
    ) -> Dataset:
        """The requested keys with this entity's values, plus the computed attributes."""
        rsp = Dataset()
        if "SpecificCharacterSet" in header:
            rsp.SpecificCharacterSet = header.SpecificCharacterSet
        for elem in query:
            if elem.tag.element == 0 or elem.keyword in _NOT_MATCHED or elem.keyword in computed:
                continue
            source = header.get(elem.tag)
            if source is not None:
                rsp[elem.tag] = deepcopy(source)
            else:  # PS3.4 C.4.1.1.3.2: requested but absent -> zero length
                rsp[elem.tag] = DataElement(elem.tag, elem.VR, None)
        rsp.QueryRetrieveLevel = level
        for keyword, value in computed.items():
            setattr(rsp, keyword, value)
        rsp.RetrieveAETitle = self.ae_title
        return rsp


def _is_final(item: Any) -> bool:
    """Whether a retrieval handler's item ends the request: a ``(status, dataset)`` with
    a status other than pending, or pynetdicom's ``(None, None)`` for no destination."""
    if not (isinstance(item, tuple) and len(item) == 2):
        return False
    status = item[0]
    return status is None or (isinstance(status, int) and status != STATUS_PENDING)


def _computed(level: str, members: list[_Entry]) -> dict[str, Any]:
    """The attributes of Table C.3-5 (and ModalitiesInStudy) for one entity."""
    n_series = len({str(m.header.get("SeriesInstanceUID", "")) for m in members})
    if level == "PATIENT":
        n_studies = len({str(m.header.get("StudyInstanceUID", "")) for m in members})
        return {
            "NumberOfPatientRelatedStudies": n_studies,
            "NumberOfPatientRelatedSeries": n_series,
            "NumberOfPatientRelatedInstances": len(members),
        }
    if level == "STUDY":
        modalities = sorted({str(m.header.get("Modality", "")) for m in members} - {""})
        return {
            "ModalitiesInStudy": modalities,
            "NumberOfStudyRelatedSeries": n_series,
            "NumberOfStudyRelatedInstances": len(members),
        }
    if level == "SERIES":
        return {"NumberOfSeriesRelatedInstances": len(members)}
    return {}


def _values(value: Any) -> list[str]:
    """An element value as a list of strings; empty for a zero-length value."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value if str(v) != ""]
    return [str(value)]


def _record_values(query_elem: DataElement, header: Dataset, computed: dict) -> list[str]:
    if query_elem.keyword in computed:
        return _values(computed[query_elem.keyword])
    source = header.get(query_elem.tag)
    return [] if source is None else _values(source.value)


def _element_matches(query_elem: DataElement, candidates: list[str]) -> bool:
    """Whether one query key matches an entity whose attribute has ``candidates`` values."""
    if query_elem.VR in _UNMATCHABLE_VRS:
        return True
    wanted = _values(query_elem.value)
    if not wanted:
        return True  # C.2.2.2.3 universal matching
    if query_elem.VR == "UI":
        return any(c in wanted for c in candidates)  # C.2.2.2.2 list of UID matching
    # Several query values (e.g. ModalitiesInStudy "CT\MR") match if any one does, and a
    # multi-valued attribute matches if any of its values does, as Orthanc and dcm4chee do.
    return any(_value_matches(p, c, query_elem.VR) for p in wanted for c in candidates)


def _value_matches(pattern: str, candidate: str, vr: str) -> bool:
    pattern, candidate = pattern.strip(), candidate.strip()
    if vr in ("DA", "TM") and "-" in pattern:
        # C.2.2.2.5 range matching: "A-B", "A-" or "-B", bounds inclusive. Comparing the
        # candidate cut to the bound's precision makes "-1000" include 10:00:30.
        if vr == "TM":
            pattern, candidate = pattern.replace(":", ""), candidate.replace(":", "")
        low, _, high = pattern.partition("-")
        if low and candidate[: len(low)] < low:
            return False
        return not (high and candidate[: len(high)] > high)
    if vr == "PN":
        # Person names match case-insensitively and ignore empty trailing components
        # (PS3.4 C.2.2.2.1 leaves this to the SCP; Orthanc does the same).
        pattern, candidate = pattern.upper().rstrip("^="), candidate.upper().rstrip("^=")
    if "*" in pattern or "?" in pattern:
        # C.2.2.2.4 wild card matching; "[" is literal in DICOM, not a character class.
        return fnmatch.fnmatchcase(candidate, pattern.replace("[", "[[]"))
    return candidate == pattern  # C.2.2.2.1 single value matching
