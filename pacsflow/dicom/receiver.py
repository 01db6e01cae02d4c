"""Our storage SCP: the C-MOVE destination, one per worker process.

Sources open a new association to it for every study they send. Accepting an
association makes pynetdicom copy and check every supported presentation context, so
the receiver supports the common storage SOP classes only, with every transfer syntax,
Explicit VR Little Endian first (:mod:`pacsflow.dicom.syntaxes`): we keep what the source
sends, and a source that stores explicit VR need not re-encode for us.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
import time
from functools import partial
from pathlib import Path

from pynetdicom import StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from pacsflow.config import ReceiverConfig
from pacsflow.dicom import routes
from pacsflow.dicom.network import NODELAY_HANDLERS, QuicklyCopiedContexts, make_ae
from pacsflow.dicom.peers import AllowedPeers
from pacsflow.dicom.storage import handle_store
from pacsflow.dicom.syntaxes import RECEIVED_TRANSFER_SYNTAXES
from pacsflow.errors import ConfigError

LOGGER = logging.getLogger(__name__)


def receiver_identity(staging: Path) -> str:
    """The implementation version name our receiver announces: which staging it fills.

    Any DICOM program answers C-ECHO, whatever AE title it is called by, so an answer
    alone does not show that a port is served by a pacsflow receiver of this site: a
    source, another program or another checkout's receiver could hold it, and moves sent
    there would be lost. The name (16 characters at most) carries a hash of the staging
    folder, which is where routes and studies live.
    """
    digest = hashlib.sha256(str(Path(staging).resolve()).encode()).hexdigest()
    return f"PACSFLOW{digest[:8].upper()}"


def _answers_echo(config: ReceiverConfig, staging: Path) -> bool:
    """True when a pacsflow receiver for ``staging`` answers C-ECHO at the receiver's address."""
    ae = make_ae(config.ae_title, timeout=5)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        config.host, config.port, ae_title=config.ae_title, evt_handlers=NODELAY_HANDLERS
    )
    if not assoc.is_established:
        return False
    try:
        if assoc.acceptor.implementation_version_name != receiver_identity(staging):
            return False
        status = assoc.send_c_echo()
        return bool(status) and status.get("Status") == 0x0000
    finally:
        assoc.release()


class Receiver:
    """A running storage SCP writing into ``staging`` (see :mod:`pacsflow.dicom.storage`).

    Each arriving instance goes to the folder its study's route names
    (:mod:`pacsflow.dicom.routes`); the routes live in ``staging``, so the receiver of any
    pacsflow process of the site can serve every process's moves. When the port is
    already served by another pacsflow process (a standing ``pacsflow receiver``, or a
    concurrent flow run), that receiver is used: a C-MOVE's final response comes only
    after every instance was stored, so the files are in place when :func:`move_study`
    returns.
    """

    #: Seconds to wait for a port that another pacsflow process is letting go of.
    handover_seconds = 10.0

    def __init__(
        self, config: ReceiverConfig, staging: Path, peers: AllowedPeers | None = None
    ) -> None:
        self.config = config
        self.staging = Path(staging)
        #: Who may send; None accepts anyone (tests of the receiver alone).
        self.peers = peers
        self._server = None
        self.shared = False
        #: When a shared receiver last answered C-ECHO (time.monotonic()).
        self.echoed_at = 0.0

    def _folder_for(self, study_uid: str) -> Path | None:
        return routes.lookup(self.staging, study_uid)

    def _screen(self, event: evt.Event) -> None:
        """EVT_REQUESTED: reject an association from anyone but the site's sources."""
        if self.peers is None:
            return
        # The A-ASSOCIATE-RQ as received: pynetdicom copies its titles only later.
        calling_ae = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        reason = self.peers.refusal(calling_ae, str(event.assoc.requestor.address))
        if reason is not None:
            LOGGER.warning("receiver refused an association: %s", reason)
            # Rejected permanent, by the service user: "calling AE title not recognised"
            # when it is the title, else "no reason given".
            diagnostic = 0x03 if calling_ae not in self.peers.ae_titles else 0x01
            event.assoc.acse.send_reject(0x01, 0x01, diagnostic)

    @property
    def running(self) -> bool:
        return self._server is not None or self.shared

    def start(self) -> Receiver:
        if self.running:
            return self
        ae = make_ae(self.config.ae_title)
        ae.implementation_version_name = receiver_identity(self.staging)
        ae.add_supported_context(Verification)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, RECEIVED_TRANSFER_SYNTAXES)
        handlers = [
            *NODELAY_HANDLERS,
            (evt.EVT_REQUESTED, self._screen),
            (evt.EVT_C_STORE, partial(handle_store, folder_for=self._folder_for)),
        ]
        self.staging.mkdir(parents=True, exist_ok=True)
        # Another process may be handing the port over (its flow run is ending): for a
        # few seconds, keep trying to bind it or to find a receiver answering on it.
        deadline = time.monotonic() + self.handover_seconds
        while True:
            try:
                self._server = ae.start_server(
                    (self.config.host, self.config.port),
                    block=False,
                    evt_handlers=handlers,
                    contexts=QuicklyCopiedContexts(ae.supported_contexts),
                )
                break
            except OSError as exc:
                if _answers_echo(self.config, self.staging):
                    LOGGER.info("using the receiver already listening on port %s", self.config.port)
                    self.shared, self.echoed_at = True, time.monotonic()
                    return self
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"cannot start the receiver on {self.config.host}:{self.config.port}: "
                        f"{exc}. Another program (or the receiver of a pacsflow site with "
                        "another staging folder) uses that port; stop it or set "
                        "receiver.port in the site config."
                    ) from exc
                time.sleep(0.2)
        LOGGER.info(
            "receiver %s listening on %s:%s",
            self.config.ae_title,
            self.config.host,
            self.config.port,
        )
        return self

    def serve_forever(self) -> None:
        """Run in the foreground (``pacsflow receiver``) until interrupted."""
        self.start()
        if self._server is None:
            raise ConfigError(f"port {self.config.port} is already served by another receiver")
        threading.Event().wait()

    def stop(self) -> None:
        """Stop serving and free the port, without waiting for the accept loop's next poll.

        The loop looks for a stop request only between polls of its socket, every 0.5 s,
        and ``shutdown`` waits for it: half a second at most, a quarter on average, at
        the end of every ``pacsflow extract``. Shutting the listening socket down makes
        the poll return at once (on Linux; elsewhere it still ends at the next poll).
        """
        self.shared = False
        if self._server is not None:
            server, self._server = self._server, None
            stopping = threading.Thread(target=server.shutdown, name="pacsflow-receiver-stop")
            stopping.start()
            with contextlib.suppress(OSError):
                server.socket.shutdown(socket.SHUT_RDWR)
            stopping.join()


_PROCESS_RECEIVER: Receiver | None = None
_PROCESS_LOCK = threading.Lock()

#: Seconds a shared receiver's answer to C-ECHO stands for the moves after it.
ECHO_TRUSTED_FOR = 2.0


def _still_answers(receiver: Receiver, recheck: bool) -> bool:
    now = time.monotonic()
    if not recheck and now - receiver.echoed_at < ECHO_TRUSTED_FOR:
        return True
    if not _answers_echo(receiver.config, receiver.staging):
        return False
    receiver.echoed_at = now
    return True


def process_receiver(
    config: ReceiverConfig,
    staging: Path,
    peers: AllowedPeers | None = None,
    recheck: bool = False,
) -> Receiver:
    """The receiver of this worker process, started on first use and then reused.

    If another process already serves the port, its receiver is used, after checking
    (C-ECHO) that it still answers: at most every :data:`ECHO_TRUSTED_FOR` seconds, or
    now with ``recheck``. Asked before every move, the check cost each retrieval an
    association and its lanes waited on one another's (a 1 s retrieval took 30-200 ms
    to follow the one before, on two workers); a move sent to a receiver that ended
    meanwhile is refused by the source, and the mover asks again with ``recheck``.
    """
    global _PROCESS_RECEIVER
    with _PROCESS_LOCK:
        current = _PROCESS_RECEIVER
        if current is not None and (
            current.config != config or current.staging != Path(staging) or current.peers != peers
        ):
            current.stop()
            current = None
        if current is not None and current.shared and not _still_answers(current, recheck):
            # The process whose receiver we used has ended (another flow run, say):
            # serve the port ourselves rather than send moves to nobody.
            current = None
        if current is None:
            current = Receiver(config, staging, peers).start()
            _PROCESS_RECEIVER = current
        return current


def stop_process_receiver() -> None:
    global _PROCESS_RECEIVER
    with _PROCESS_LOCK:
        if _PROCESS_RECEIVER is not None:
            _PROCESS_RECEIVER.stop()
            _PROCESS_RECEIVER = None
