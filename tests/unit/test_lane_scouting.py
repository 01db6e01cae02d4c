"""A study a lane was scouting when the ledger failed is given back when the lane ends.

Why: scouting claims a study without making it the pull's (its pull stays as it was), so
the run's sweep of its failed lanes' claims does not see it, and the process's lease
renewals would keep it held, unworked, until the process ended.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from flows import lanes
from flows.lanes import Handoff, _Lane
from pacsflow.config import ProjectConfig, SiteConfig
from pacsflow.ledger import Study, claims
from pacsflow.pipeline import Workspace
from tests.ledger_rows import ledger_with_studies

SITE = SiteConfig(
    sources={
        "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
        "vna": {"ae_title": "VNA", "host": "127.0.0.1", "port": 105},
    },
    destinations={"local": {"path": "/tmp/export"}},
)
PROJECT = ProjectConfig(name="p", sources=["pacs", "vna"], destination="local")


@pytest.fixture
def lane(tmp_path: Path) -> _Lane:
    engine, sessions = ledger_with_studies(tmp_path, PROJECT.name, 5)
    ws = Workspace(site=SITE, sessions=sessions)
    pull = uuid.uuid4().hex  # scouting cursors are kept per process, by pull
    yield _Lane(ws, PROJECT, "pacs", pull, Handoff(4), logging.getLogger("test"))
    engine.dispose()


def _held(lane: _Lane) -> list[int]:
    with lane.ws.sessions() as session:
        return [s.id for s in session.query(Study).filter(Study.claimed_by.is_not(None))]


def test_a_study_left_claimed_by_a_ledger_error_while_scouting_is_given_back(lane, monkeypatch):
    def query_fails(*args, **kwargs):
        raise ConnectionError("the source hung up")

    real_unclaim, tries = claims.unclaim, []

    def unclaim_fails_once(session, study_id, owner):
        tries.append(study_id)
        if len(tries) == 1:
            raise OperationalError("UPDATE studies", {}, Exception("the ledger went away"))
        real_unclaim(session, study_id, owner)

    monkeypatch.setattr(lanes.pipeline, "locate", query_fails)
    monkeypatch.setattr(claims, "unclaim", unclaim_fails_once)
    with pytest.raises(OperationalError):
        lane.scout(finder=None, until=float("inf"))  # type: ignore[arg-type]
    (stuck,) = _held(lane)  # the scouted study: claimed, and its give-back failed

    lane.release_stranded()  # at the lane's end, the ledger back

    assert _held(lane) == []
    assert tries == [stuck, stuck]


def test_a_stranded_study_since_claimed_for_real_by_the_same_process_is_left_to_its_lane(lane):
    """The give-back may have been committed before the error: another lane of this
    process (the same owner) can then claim the study for its pull, and keeps it."""
    with lane.ws.sessions() as session:
        study = claims.claim_next(session, PROJECT.name, 0, lane.ws.owner, lane.pull)
    lane.stranded[study.id] = (None, 0)  # as scouting found it, before that claim

    lane.release_stranded()

    assert _held(lane) == [study.id]
    assert lane.stranded == {}


def test_a_stranded_study_that_cannot_be_given_back_yet_is_logged_by_id(lane, monkeypatch, caplog):
    def ledger_away(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("the ledger went away"))

    lane.stranded[3] = (None, 0)
    monkeypatch.setattr(lane.ws, "sessions", ledger_away)
    lane.release_stranded()
    assert "scouted study 3 not given back (OperationalError)" in caplog.text
    assert lane.stranded == {}
