"""Socket and AE settings shared by every DICOM association pacsflow makes or accepts.

pynetdicom never sets TCP_NODELAY, and Nagle's algorithm then costs about 40 ms per
DIMSE round trip (measured: study-level C-FIND against Orthanc 88 ms stock, 2.6 ms with
both sides fixed). :data:`NODELAY_HANDLERS` sets it as soon as a connection opens, on
both the requesting and the accepting side. :func:`make_ae` also quiets pynetdicom's
polling threads (:mod:`pacsflow.dicom.quiet_reactor`) for every association of the process.
"""

from __future__ import annotations

import copy
import logging
import socket

from pynetdicom import AE, evt

from pacsflow.dicom import quiet_reactor

LOGGER = logging.getLogger(__name__)


def _set_nodelay(event: evt.Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # the peer may already have gone
        LOGGER.debug("could not set TCP_NODELAY: %s", exc)


#: Pass as (or add to) ``evt_handlers`` of ``AE.associate`` and ``AE.start_server``.
NODELAY_HANDLERS: list[tuple[evt.EventType, object]] = [(evt.EVT_CONN_OPEN, _set_nodelay)]


def make_ae(ae_title: str, timeout: float = 60.0) -> AE:
    """An AE with the timeouts every pacsflow association uses.

    ``timeout`` bounds connecting, association negotiation, each DIMSE response and
    idle network reads, so a source that hangs becomes a retriable failure instead of a
    worker stuck forever.
    """
    quiet_reactor.install()
    ae = AE(ae_title=ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    # Studies can be large; let pynetdicom negotiate the biggest PDU the peer allows.
    ae.maximum_pdu_size = 0
    return ae


class QuicklyCopiedContexts(list):
    """Supported presentation contexts that pynetdicom copies cheaply.

    pynetdicom deep-copies a server's supported contexts for every association it
    accepts. For our receiver (120 storage SOP classes x 45 transfer syntaxes) that costs
    ~20 ms per C-MOVE, paid once per study. Each context holds only immutable values
    (UID strings, bools, ints) and one list of transfer syntaxes, so copying the objects
    and that list is a full copy for every purpose of negotiation.
    """

    def __deepcopy__(self, memo: dict) -> list:
        copies = []
        for context in self:
            clone = copy.copy(context)
            clone._transfer_syntax = list(context._transfer_syntax)
            copies.append(clone)
        return copies
