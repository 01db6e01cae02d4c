"""Extraction windows on the sandbox: a closed source is not touched, and its studies go
when the window opens (or wait for the next pull when it is too far away).

The flows read the time through :func:`flows.clock.now`; these tests move that clock to
just before a window opens, so the run's wait is seconds, not until a real evening. The
sandbox PACS records every C-FIND, C-MOVE and C-GET it serves, with wall-clock times: the
source's own record shows it was not queried while closed.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import yaml

from pacsflow.config import load_project_config, load_site_config
from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import FINAL, Study
from tests.prefect_records import run_logs

pytestmark = pytest.mark.integration

#: Seconds between the dispatcher's first look at the clock and the window's opening.
LEAD = 5.0
#: 2026-12-02 is a Wednesday; the windows below open at 20:00 UTC every day.
OPENING = dt.datetime(2026, 12, 2, 20, 0, tzinfo=dt.UTC)
NIGHTS = {"timezone": "UTC", "open": ["mon-sun 20:00-08:00"]}


class StartingClock:
    """A clock that reads ``start`` at its first call and then runs at real speed.

    Records the real wall time of that first call, so a test knows when, in the PACS's
    activity log, the fake time reaches a given instant.
    """

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.first_call_wall: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            if self.first_call_wall is None:
                self.first_call_wall = time.time()
        return self.start + dt.timedelta(seconds=time.time() - self.first_call_wall)

    def wall_time_of(self, instant: dt.datetime) -> float:
        assert self.first_call_wall is not None, "the flow never read the clock"
        return self.first_call_wall + (instant - self.start).total_seconds()


def _set_windows(sandbox, source: str, windows: dict) -> None:
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["sources"][source]["windows"] = windows
    sandbox.config_path.write_text(yaml.safe_dump(data))


def _run_logs(state) -> str:
    """Every log line of the flow run and of its subflow runs."""
    return "\n".join(run_logs(state.state_details.flow_run_id))


def test_studies_wait_for_the_primary_window_and_all_go_once_it_opens(
    sandbox_factory, prefect_api, monkeypatch
):
    import flows.clock
    import flows.progress
    from blocks.site import save_site
    from flows.extract import extract_project

    sandbox = sandbox_factory(n_studies=8)
    _set_windows(sandbox, "primary", NIGHTS)
    site = load_site_config(sandbox.config_path)
    save_site(site)
    clock = StartingClock(OPENING - dt.timedelta(seconds=LEAD))
    monkeypatch.setattr(flows.clock, "now", clock)
    shown = []  # what the progress artifact said, in order (the UI shows the latest)
    real_update = flows.progress.update_progress_artifact

    def spy(artifact_id, progress, description=None, **kwargs):
        shown.append(description)
        return real_update(artifact_id, progress, description, **kwargs)

    monkeypatch.setattr(flows.progress, "update_progress_artifact", spy)

    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )

    assert state.is_completed(), state.message
    opened_at = clock.wall_time_of(OPENING)
    operations = sandbox.primary.activity + sandbox.secondary.activity
    assert operations, "the sandbox PACS recorded nothing"
    early = [op for op in operations if op.started_wall < opened_at]
    assert early == [], f"queried before the window opened: {early}"
    counts = state.result()
    assert counts["exported"] == 8 - sandbox.expected["neither"]
    assert counts["not_found"] == sandbox.expected["neither"]
    assert "8 studies wait for source primary, whose extraction window opens" in _run_logs(state)
    note = "Waiting for an extraction window: 8 for source primary (opens Wed 02 Dec 20:00 UTC)"
    assert note in shown[0]
    assert "Waiting" not in shown[-1]  # the run's last word: nothing waits any more


def test_a_window_further_than_max_wait_leaves_its_studies_for_the_next_pull(
    sandbox_factory, prefect_api, monkeypatch
):
    """The secondary is closed for hours and the project waits 0: the run ends with the
    primary's studies exported and the rest pending; the next pull, in the window,
    finishes them."""
    import flows.clock
    from blocks.site import save_site
    from flows.extract import extract_project

    sandbox = sandbox_factory(n_studies=8)
    _set_windows(sandbox, "secondary", NIGHTS)
    project_data = yaml.safe_load(sandbox.project_path.read_text())
    project_data["max_wait_hours"] = 0
    sandbox.project_path.write_text(yaml.safe_dump(project_data))
    site = load_site_config(sandbox.config_path)
    project = load_project_config(sandbox.project_path)
    save_site(site)
    monkeypatch.setattr(flows.clock, "now", StartingClock(OPENING - dt.timedelta(hours=8)))
    run = {"project": str(sandbox.project_path), "manifest": str(sandbox.manifest_path)}

    first = extract_project(**run, return_state=True)

    assert first.is_completed(), first.message
    expected = sandbox.expected
    in_primary = expected["primary"] + expected["both"]
    assert first.result()["exported"] == in_primary
    assert sandbox.secondary.activity == []
    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        rows = session.query(Study).filter(Study.project == project.name).all()
    waiting = [r for r in rows if r.status not in {s.value for s in FINAL}]
    assert len(waiting) == expected["secondary"] + expected["neither"]
    assert all(r.source_index == 1 and r.claimed_by is None for r in waiting)
    assert "stay pending for the next pull" in _run_logs(first)

    monkeypatch.setattr(flows.clock, "now", StartingClock(OPENING + dt.timedelta(hours=1)))
    second = extract_project(**run, return_state=True)

    assert second.is_completed(), second.message
    assert second.result()["exported"] == 8 - expected["neither"]
    assert second.result()["not_found"] == expected["neither"]
    with sessions() as session:
        assert repo.source_counts(session, project.name)["secondary"] == expected["secondary"]


def test_lanes_stop_claiming_when_the_window_closes_and_finish_the_study_in_hand(
    sandbox_factory, prefect_api, monkeypatch
):
    """The primary's window closes a few seconds into the run: its lanes take no new study
    (each may finish the one it holds), and the rest wait for the next pull."""
    import flows.clock
    from blocks.site import save_site
    from flows.extract import extract_project
    from pacsflow.sandbox.activity import RETRIEVALS, OperationKind

    sandbox = sandbox_factory(n_studies=40)
    # A busy archive: the run cannot finish in time. At 1 s per retrieval its four lanes
    # did the primary's ~24 studies inside the 10 s before the closing once lanes lost
    # their idle polling; at 3 s they need ~18 s.
    sandbox.primary.retrieve_delay = 3.0
    _set_windows(sandbox, "primary", NIGHTS)
    project_data = yaml.safe_load(sandbox.project_path.read_text())
    project_data["max_wait_hours"] = 0
    sandbox.project_path.write_text(yaml.safe_dump(project_data))
    site = load_site_config(sandbox.config_path)
    save_site(site)
    closing = OPENING + dt.timedelta(hours=12)  # 08:00 the next morning
    clock = StartingClock(closing - dt.timedelta(seconds=2 * LEAD))
    monkeypatch.setattr(flows.clock, "now", clock)

    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )

    assert state.is_completed(), state.message
    closed_at = clock.wall_time_of(closing)
    finds = [op for op in sandbox.primary.activity if op.kind == OperationKind.FIND]
    assert [op for op in finds if op.started_wall < closed_at], "nothing ran while open"
    # A study starts with a C-FIND: after the closing, only the studies lanes held then.
    late = [op for op in finds if op.started_wall >= closed_at]
    assert len(late) <= site.sources["primary"].max_concurrent
    # The retrievals under way at the closing finish; none starts after it (a study a
    # lane found ahead waits for the next pull). The margin is the lane's own step from
    # asking the clock to sending the request.
    moves = [op for op in sandbox.primary.activity if op.kind in RETRIEVALS]
    assert [op for op in moves if op.started_wall < closed_at], "nothing was retrieved"
    assert not [op for op in moves if op.started_wall >= closed_at + 0.5]
    with session_factory(make_engine(site.ledger))() as session:
        rows = session.query(Study).all()
    assert [r for r in rows if r.status not in {s.value for s in FINAL}], "nothing was left"
    assert all(r.claimed_by is None for r in rows)
    assert "the extraction window of primary has closed: no more claims" in _run_logs(state)
