"""The hand-off from retrieval to export lanes never leaves a lane waiting forever."""

from __future__ import annotations

import threading

import pytest

from flows.lanes import Handoff, HandoffAbandoned


def test_a_lane_waiting_on_a_full_handoff_is_let_go_when_the_run_abandons_it():
    handoff = Handoff(maxsize=1)
    handoff.put(1)  # full: the export lanes are gone and nobody takes it
    outcome: list[object] = []

    def lane() -> None:
        try:
            handoff.put(2)
            outcome.append("handed on")
        except HandoffAbandoned as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=lane)
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive(), "a full hand-off makes the lane wait for the export lanes"

    handoff.abandon()  # the dispatcher failed
    waiting.join(timeout=5.0)

    assert not waiting.is_alive()
    assert isinstance(outcome[0], HandoffAbandoned)
    assert handoff.abandoned


def test_studies_go_through_in_order_and_each_export_lane_gets_an_end_marker():
    handoff = Handoff(maxsize=5)  # room for the studies and both end markers
    for study_id in (3, 1, 2):
        handoff.put(study_id)
    handoff.close(consumers=2)

    assert [handoff.get() for _ in range(5)] == [3, 1, 2, None, None]
    with pytest.raises(HandoffAbandoned):
        handoff.abandon()
        handoff.put(4)
