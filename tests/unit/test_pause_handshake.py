"""A request's answers reach the request even when its association's reactor runs late.

pynetdicom's reactor can read as paused while it resumes; a request sent at that moment
loses an answer to it (pynetdicom issue #875). Here the reactor is made to resume late,
on purpose, by a checkpoint whose waits return 0.2 s after they are woken, as on a busy
host; with stock pynetdicom the second C-FIND below returns 4 of its 5 matches.
"""

from __future__ import annotations

import threading
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyFind

from pacsflow.dicom import pause_handshake
from pacsflow.dicom.network import make_ae
from tests.servers import LOOPBACK, free_port

MATCHES = 5


class _LateWaking(threading.Event):
    """A reactor checkpoint whose reactor, once woken from a pause, runs 0.2 s later."""

    def __init__(self, reactor: threading.Thread) -> None:
        super().__init__()
        self.set()
        self._reactor = reactor

    def wait(self, timeout: float | None = None) -> bool:
        paused = not self.is_set()
        woken = super().wait(timeout)
        if paused and threading.current_thread() is self._reactor:
            time.sleep(0.2)
        return woken


def _five_matches(event):
    for number in range(MATCHES):
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1.{number}"
        yield 0xFF00, match
    yield 0x0000, None


@pytest.fixture
def find_scp():
    ae = make_ae("FINDSCP")
    ae.add_supported_context(StudyFind)
    port = free_port()
    server = ae.start_server(
        (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_FIND, _five_matches)]
    )
    yield port
    server.shutdown()


def test_back_to_back_finds_get_every_match_from_a_late_reactor(find_scp):
    ae = make_ae("FINDSCU", timeout=5)
    ae.add_requested_context(StudyFind)
    assoc = ae.associate(LOOPBACK, find_scp, ae_title="FINDSCP")
    assert assoc.is_established and pause_handshake.guarded(assoc)
    assoc._reactor_checkpoint = _LateWaking(assoc)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    counts = []
    try:
        for _ in range(3):
            matches = 0
            for status, _identifier in assoc.send_c_find(query, StudyFind):
                if status and status.Status == 0xFF00:
                    matches += 1
                    time.sleep(0.1)  # the caller works on a match; the rest wait queued
            counts.append(matches)
    finally:
        assoc.release()
    assert counts == [MATCHES] * 3
    assert assoc.is_released
