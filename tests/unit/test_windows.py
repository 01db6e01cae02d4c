"""Extraction windows: open and next opening at fixed times, across midnight and DST."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import ValidationError

from pacsflow.config import SourceConfig, load_site_config
from pacsflow.errors import ConfigError
from pacsflow.windows import ExtractionWindows, is_open, next_opening

LONDON = ZoneInfo("Europe/London")
OUT_OF_HOURS = ExtractionWindows(
    timezone="Europe/London", open=["mon-fri 20:00-08:00", "sat-sun 00:00-24:00"]
)


def london(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=LONDON)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


# 2026-12-02 is a Wednesday.
@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (london(2026, 12, 2, 12, 0), False),  # Wednesday noon
        (london(2026, 12, 2, 19, 59), False),
        (london(2026, 12, 2, 20, 0), True),  # opens at 20:00 sharp
        (london(2026, 12, 3, 3, 0), True),  # Wednesday's night, into Thursday
        (london(2026, 12, 3, 7, 59), True),
        (london(2026, 12, 3, 8, 0), False),  # closes at 08:00 sharp
        (london(2026, 12, 5, 7, 0), True),  # Saturday morning: Friday's night and Saturday's day
        (london(2026, 12, 6, 23, 59), True),  # Sunday night
        (london(2026, 12, 7, 3, 0), False),  # Monday 03:00 is Sunday night's: not declared
        (london(2026, 12, 7, 20, 30), True),
    ],
)
def test_is_open_in_and_out_of_hours(now, expected):
    assert is_open(OUT_OF_HOURS, now) is expected


def test_an_interval_crossing_midnight_belongs_to_the_day_it_starts():
    """mon-fri 20:00-08:00 does not open Monday's early hours; a `mon 00:00-08:00` does."""
    monday_3am = london(2026, 12, 7, 3, 0)
    assert not is_open(OUT_OF_HOURS, monday_3am)
    with_monday = ExtractionWindows(
        timezone="Europe/London",
        open=["mon-fri 20:00-08:00", "sat-sun 00:00-24:00", "mon 00:00-08:00"],
    )
    assert is_open(with_monday, monday_3am)
    assert is_open(with_monday, london(2026, 12, 5, 7, 0))  # Friday's night still open


def test_no_windows_is_always_open():
    assert is_open(None, utc(2026, 12, 2, 12, 0))
    assert next_opening(None, utc(2026, 12, 2, 12, 0)) is None


def test_next_opening_is_tonight_and_none_while_open():
    assert next_opening(OUT_OF_HOURS, london(2026, 12, 2, 12, 0)) == london(2026, 12, 2, 20, 0)
    assert next_opening(OUT_OF_HOURS, london(2026, 12, 2, 21, 0)) is None


def test_next_opening_skips_to_a_later_day():
    """Monday 08:00 after a weekend: the next opening is Monday 20:00; a Tuesday-only
    window seen on Wednesday opens in six days."""
    assert next_opening(OUT_OF_HOURS, london(2026, 12, 7, 8, 0)) == london(2026, 12, 7, 20, 0)
    tuesdays = ExtractionWindows(timezone="UTC", open=["tue 09:00-10:00"])
    assert next_opening(tuesdays, utc(2026, 12, 2, 9, 30)) == utc(2026, 12, 8, 9, 0)
    assert next_opening(tuesdays, utc(2026, 12, 1, 10, 0)) == utc(2026, 12, 8, 9, 0)


def test_the_answer_does_not_depend_on_the_zone_now_is_given_in():
    now_utc = utc(2026, 12, 2, 19, 30)  # London is on UTC in December
    assert not is_open(OUT_OF_HOURS, now_utc)
    assert next_opening(OUT_OF_HOURS, now_utc) == utc(2026, 12, 2, 20, 0)
    new_york = now_utc.astimezone(ZoneInfo("America/New_York"))
    assert next_opening(OUT_OF_HOURS, new_york) == utc(2026, 12, 2, 20, 0)


def test_spring_forward_keeps_local_wall_times():
    """London moves from GMT to BST on 2026-03-29 at 01:00 UTC: the Saturday-night window
    still closes at 08:00 local, which is now 07:00 UTC, and Monday's opens at 19:00 UTC."""
    nights = ExtractionWindows(timezone="Europe/London", open=["sat 20:00-08:00"])
    assert is_open(nights, utc(2026, 3, 29, 6, 59))
    assert not is_open(nights, utc(2026, 3, 29, 7, 0))  # 08:00 BST
    mondays = ExtractionWindows(timezone="Europe/London", open=["mon 20:00-23:00"])
    assert next_opening(mondays, utc(2026, 3, 29, 12, 0)) == utc(2026, 3, 30, 19, 0)


def test_fall_back_day_is_25_hours_long_and_the_repeated_hour_is_not_confused():
    """On 2026-10-25 London's clocks go back at 02:00 BST (01:00 UTC): 01:00-02:00 happens
    twice. A whole-day window lasts 25 hours; one ending at 01:30 ends at the first."""
    sunday = ExtractionWindows(timezone="Europe/London", open=["sun 00:00-24:00"])
    assert is_open(sunday, utc(2026, 10, 24, 23, 0))  # 00:00 BST, the day's start
    assert is_open(sunday, utc(2026, 10, 25, 23, 59))  # 23:59 GMT, the 25th hour
    assert not is_open(sunday, utc(2026, 10, 26, 0, 0))
    early = ExtractionWindows(timezone="Europe/London", open=["sat 22:00-01:30"])
    assert is_open(early, utc(2026, 10, 25, 0, 29))  # 01:29 BST, first pass
    assert not is_open(early, utc(2026, 10, 25, 0, 30))  # 01:30 BST
    assert not is_open(early, utc(2026, 10, 25, 1, 15))  # 01:15 GMT, second pass: closed


def test_day_lists_ranges_and_wrapping_ranges():
    weekend_nights = ExtractionWindows(timezone="UTC", open=["fri-mon 22:00-23:00"])
    days_open = [
        is_open(weekend_nights, utc(2026, 12, 7 + d, 22, 30)) for d in range(7)
    ]  # Mon 7th .. Sun 13th
    assert days_open == [True, False, False, False, True, True, True]
    listed = ExtractionWindows(timezone="UTC", open=["mon,wed 10:00-11:00"])
    assert [is_open(listed, utc(2026, 12, 7 + d, 10, 30)) for d in range(3)] == [
        True,
        False,
        True,
    ]


def test_a_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(OUT_OF_HOURS, dt.datetime(2026, 12, 2, 12, 0))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("weekdays 20:00-08:00", "'weekdays' is not a day"),
        ("mon-fri 8pm-8am", "expected <days> <HH:MM>-<HH:MM>"),
        ("mon 25:00-08:00", "25:00 is not a time of day"),
        ("mon 20:00-20:00", "for a whole day write 00:00-24:00"),
        ("mon 24:00-08:00", "cannot start at 24:00"),
    ],
)
def test_a_bad_entry_is_named_with_an_example_of_a_good_one(entry, message):
    with pytest.raises(ValidationError, match=message) as caught:
        ExtractionWindows(timezone="UTC", open=[entry])
    assert repr(entry) in str(caught.value)
    assert '"mon-fri 20:00-08:00"' in str(caught.value)


def test_a_bad_timezone_and_an_empty_list_are_refused():
    with pytest.raises(ValidationError, match="'Europe/Londn' is not a known IANA timezone"):
        ExtractionWindows(timezone="Europe/Londn", open=["mon 00:00-24:00"])
    with pytest.raises(ValidationError, match="open"):
        ExtractionWindows(timezone="UTC", open=[])


def test_a_source_reads_windows_from_yaml_and_round_trips_through_json():
    source = SourceConfig.model_validate(
        yaml.safe_load(
            """
            ae_title: MAINPACS
            host: pacs.example
            port: 104
            windows:
              timezone: Europe/London
              open: ["mon-fri 20:00-08:00", "sat-sun 00:00-24:00"]
            """
        )
    )
    assert source.windows == OUT_OF_HOURS
    dumped = source.model_dump(mode="json")
    assert dumped["windows"] == {
        "timezone": "Europe/London",
        "open": ["mon-fri 20:00-08:00", "sat-sun 00:00-24:00"],
    }
    assert SourceConfig.model_validate(dumped) == source
    assert SourceConfig(ae_title="A", host="h", port=104).windows is None


def test_a_site_file_with_a_bad_entry_names_its_key(tmp_path):
    path = tmp_path / "pacsflow.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "pacs": {
                        "ae_title": "P",
                        "host": "h",
                        "port": 104,
                        "windows": {"timezone": "UTC", "open": ["weekdays 20:00-08:00"]},
                    }
                },
                "destinations": {"local": {"path": str(tmp_path)}},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"sources\.pacs\.windows\.open\.0: .*'weekdays'"):
        load_site_config(path)
