"""A lane whose source's extraction window has closed claims and queries nothing more.

Why: outside its windows a source gets no C-FIND, C-MOVE or C-GET. A lane's look-ahead
thread was started while the window was open and can outlast it: claiming study after
study the source lacks, or scouting the end of the queue beside a slow retrieval.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

import flows.clock
from flows.lanes import Handoff, _Lane
from pacsflow.config import ProjectConfig, SiteConfig
from pacsflow.ledger import Study, StudyStatus
from pacsflow.pipeline import Workspace
from tests.ledger_rows import ledger_with_studies

SITE = SiteConfig(
    sources={
        "vna": {
            "ae_title": "VNA",
            "host": "127.0.0.1",
            "port": 104,
            "windows": {"timezone": "UTC", "open": ["mon-fri 20:00-08:00"]},
        },
        "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 105},
    },
    destinations={"local": {"path": "/tmp/export"}},
)
PROJECT = ProjectConfig(name="p", sources=["vna", "pacs"], destination="local")
WEDNESDAY_NOON = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)  # vna is closed


class NoQueries:
    """An association that fails the test if anything is sent on it."""

    def __getattr__(self, name: str):
        pytest.fail(f"the closed source was sent a request ({name})")


@pytest.fixture
def lane(tmp_path: Path, monkeypatch) -> _Lane:
    engine, sessions = ledger_with_studies(tmp_path, PROJECT.name, 5)
    monkeypatch.setattr(flows.clock, "now", lambda: WEDNESDAY_NOON)
    ws = Workspace(site=SITE, sessions=sessions)
    yield _Lane(ws, PROJECT, "vna", "pull-1", Handoff(4), logging.getLogger("test"))
    engine.dispose()


def _untouched(lane: _Lane) -> bool:
    with lane.ws.sessions() as session:
        studies = session.query(Study).all()
    return all(s.status == StudyStatus.PENDING and s.claimed_by is None for s in studies)


def test_a_lane_claims_no_study_once_its_source_has_closed(lane):
    assert lane.next_located(NoQueries()) is None
    assert _untouched(lane)


def test_a_lane_scouts_nothing_once_its_source_has_closed(lane):
    lane.scout(NoQueries(), until=float("inf"))
    assert _untouched(lane)
