"""How the dispatcher treats closed sources: which wait, how long it sleeps, what it shows."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from flows.process import POLL_SECONDS, WINDOW_CHECK_SECONDS, _closed, _idle_pause, _waits
from flows.progress import WindowWait, waiting_note
from pacsflow.config import SiteConfig

SITE = SiteConfig(
    sources={
        "vna": {"ae_title": "VNA", "host": "h", "port": 104},
        "pacs": {
            "ae_title": "PACS",
            "host": "h",
            "port": 104,
            "windows": {"timezone": "Europe/London", "open": ["mon-fri 20:00-08:00"]},
        },
    },
    destinations={"local": {"path": "/tmp/export"}},
)
WEDNESDAY_NOON = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(hours=24)


def test_only_the_source_outside_its_window_is_closed_with_its_opening():
    closed = _closed(SITE, ["vna", "pacs"], WEDNESDAY_NOON)
    assert closed == {1: dt.datetime(2026, 12, 2, 20, 0, tzinfo=dt.UTC)}
    assert _closed(SITE, ["vna", "pacs"], WEDNESDAY_NOON + 9 * HOUR) == {}


def test_waiting_studies_are_shown_per_source_in_its_own_timezone():
    closed = _closed(SITE, ["vna", "pacs"], WEDNESDAY_NOON)
    waits = _waits(SITE, ["vna", "pacs"], {1: 5}, closed)
    assert waits == [WindowWait("pacs", 5, closed[1].astimezone(ZoneInfo("Europe/London")))]
    assert waiting_note(waits) == (
        " Waiting for an extraction window: 5 for source pacs (opens Wed 02 Dec 20:00 "
        "Europe/London)."
    )
    assert waiting_note([]) == ""


def test_an_idle_run_sleeps_until_the_window_opens_looking_every_minute():
    assert _idle_pause(None, dt.timedelta(seconds=3), DAY) == 3.0
    assert _idle_pause(None, 8 * HOUR, DAY) == WINDOW_CHECK_SECONDS
    assert _idle_pause(None, dt.timedelta(0), DAY) == POLL_SECONDS


def test_a_window_further_away_than_max_wait_ends_the_run():
    assert _idle_pause(None, 8 * HOUR, 7 * HOUR) is None
    assert _idle_pause(None, dt.timedelta(seconds=1), dt.timedelta(0)) is None  # 0: never wait


def test_a_deferred_study_due_first_is_waited_for_even_if_the_window_is_far():
    assert _idle_pause(dt.timedelta(seconds=2), 8 * HOUR, dt.timedelta(0)) == 2.0
    assert _idle_pause(dt.timedelta(seconds=30), None, DAY) == 5.0


def test_nothing_to_wait_for_ends_the_run():
    assert _idle_pause(None, None, DAY) is None
