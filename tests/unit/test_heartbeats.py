"""Flow-run heartbeats: the same beats as Prefect's, from a thread that ends with the run."""

import threading
from types import SimpleNamespace

from prefect import flow_engine

from flows import heartbeats


class FakeEngine:
    """What ``send_heartbeats`` uses of Prefect's flow-run engine, recording each beat."""

    def __init__(self, seconds: int | None = 30, final: bool = False) -> None:
        self.heartbeat_seconds = seconds
        self.flow_run = SimpleNamespace(state=SimpleNamespace(is_final=lambda: final))
        self.logger = SimpleNamespace(debug=lambda *a, **k: None)
        self.beats: list[threading.Thread] = []
        self.beaten = threading.Event()

    def _build_heartbeat_event_template(self):
        return "resource", ["related"]

    def _emit_flow_run_heartbeat(self, resource, related) -> None:
        assert (resource, related) == ("resource", ["related"])
        self.beats.append(threading.current_thread())
        self.beaten.set()


def test_flow_runs_of_this_process_use_the_heartbeats_that_stop_with_the_run():
    assert flow_engine._send_heartbeats is heartbeats.send_heartbeats


def test_a_run_beats_once_at_its_start_and_its_heartbeat_thread_is_gone_when_it_ends():
    engine = FakeEngine(seconds=30)
    with heartbeats.send_heartbeats(engine):
        assert engine.beaten.wait(timeout=30)
    assert len(engine.beats) == 1  # the next one was 30 s away
    assert not engine.beats[0].is_alive()


def test_a_final_run_sends_no_heartbeat():
    engine = FakeEngine(seconds=30, final=True)
    with heartbeats.send_heartbeats(engine):
        pass
    assert engine.beats == []


def test_heartbeats_switched_off_start_no_thread():
    engine = FakeEngine(seconds=None)
    before = threading.active_count()
    with heartbeats.send_heartbeats(engine):
        assert threading.active_count() == before
    assert engine.beats == []


def test_a_prefect_whose_heartbeats_look_different_keeps_its_own(monkeypatch):
    def other(engine, join_on_exit=True, something_new=None):
        raise AssertionError("not called")

    monkeypatch.setattr(flow_engine, "_send_heartbeats", other)
    assert heartbeats.install() is False
    assert flow_engine._send_heartbeats is other
