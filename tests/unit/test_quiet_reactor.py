"""pynetdicom with quiet reactor threads still does everything pacsflow asks of it.

The CPU it saves is shown by ``python -m bench.idle_associations``; here: requests,
releases, aborts from either side and the network timeout behave as with stock pynetdicom.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from pynetdicom import AE, association, evt
from pynetdicom.sop_class import Verification

from pacsflow.dicom import pause_handshake, quiet_reactor
from pacsflow.dicom.network import make_ae
from tests.servers import LOOPBACK, free_port


@pytest.fixture
def scp():
    """A Verification SCP in this process (its associations get quiet DULs too)."""
    ae = make_ae("QUIETSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server((LOOPBACK, port), block=False)
    yield server, port
    server.shutdown()


def _associate(port: int, timeout: float = 30) -> association.Association:
    ae = make_ae("QUIETSCU", timeout=timeout)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="QUIETSCP")
    assert assoc.is_established
    return assoc


def _wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_both_ends_are_quiet_and_the_requesting_end_pauses_safely(scp):
    server, port = scp
    assoc = _associate(port)
    try:
        assert quiet_reactor.installed()
        assert _wait_for(lambda: len(server.active_associations) == 1)
        accepted = server.active_associations[0]
        assert hasattr(accepted.dul, "idle_wait") and hasattr(assoc.dul, "idle_wait")
        assert pause_handshake.guarded(assoc) and not pause_handshake.guarded(accepted)
    finally:
        assoc.release()


def test_requests_after_idle_periods_are_answered(scp):
    """An idle reactor (waiting, not polling) is woken by the next request and its reply."""
    _, port = scp
    assoc = _associate(port)
    try:
        for pause in (0.0, 0.12, 0.3):  # shorter and longer than one idle wait
            time.sleep(pause)
            status = assoc.send_c_echo()
            assert status.Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released and not assoc.dul.is_alive()


def test_release_and_abort_end_both_sides(scp):
    server, port = scp
    released = _associate(port)
    released.release()
    aborted = _associate(port)
    aborted.abort()
    assert released.is_released and aborted.is_aborted
    assert _wait_for(lambda: not server.active_associations)
    assert _wait_for(lambda: not released.dul.is_alive() and not aborted.dul.is_alive())


def test_an_abort_from_the_peer_reaches_an_idle_requestor(scp):
    server, port = scp
    assoc = _associate(port)
    assert _wait_for(lambda: len(server.active_associations) == 1)
    server.active_associations[0].abort()
    assert _wait_for(lambda: assoc.is_aborted)


def test_the_network_timeout_still_fires():
    """pynetdicom's idle timer is looked at between waits: an idle peer is dropped."""
    assert quiet_reactor.install()
    ae = AE("QUIETSCP")  # the acceptor gives up on an idle requestor after 0.3 s
    ae.add_supported_context(Verification)
    ae.network_timeout = 0.3
    port = free_port()
    aborted = threading.Event()
    server = ae.start_server(
        (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_ABORTED, lambda e: aborted.set())]
    )
    try:
        assoc = _associate(port)
        assert aborted.wait(5), "the acceptor never noticed its network timeout"
        assert _wait_for(lambda: assoc.is_aborted)
    finally:
        server.shutdown()


_INSTALL = """
import pynetdicom
from pynetdicom import association
pynetdicom.__version__ = {version!r}
from pacsflow.dicom import quiet_reactor
stock = association.DULServiceProvider
print(quiet_reactor.install(), association.DULServiceProvider is stock)
"""


@pytest.mark.parametrize(("version", "printed"), [("3.0.4", "True False"), ("4.0.0", "False True")])
def test_only_the_pynetdicom_it_was_written_for_is_changed(version, printed):
    """In a fresh interpreter: 3.x gets quiet loops, another major version keeps its own."""
    done = subprocess.run(
        [sys.executable, "-c", _INSTALL.format(version=version)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == printed
