"""Extraction windows: when a source may be queried, in the source's own timezone.

Many hospitals let research pulls touch their PACS only out of hours. A source declares
its windows in the site config::

    windows:
      timezone: Europe/London
      open: ["mon-fri 20:00-08:00", "sat-sun 00:00-24:00", "mon 00:00-08:00"]

Each entry is ``<days> <HH:MM>-<HH:MM>``: days are ``mon`` ... ``sun``, ranges
(``mon-fri``, ``fri-mon``) and lists (``mon,wed,fri``). An interval whose end is not after
its start crosses midnight and **belongs to the day it starts**: ``mon-fri 20:00-08:00``
opens Friday 20:00 and closes Saturday 08:00, but does not open Monday 00:00-08:00 (that
is Sunday night's, so the example adds ``mon 00:00-08:00``). ``24:00`` ends at midnight.

Times are wall-clock times in ``timezone`` (an IANA name, read with :mod:`zoneinfo`), so a
window stays 20:00-08:00 local across daylight-saving changes. All comparisons are made in
UTC, because Python compares two datetimes of the same zone by their wall times and would
get the repeated hour of an autumn change wrong.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EXAMPLE = '"mon-fri 20:00-08:00" or "sat-sun 00:00-24:00"'

_ENTRY = re.compile(r"^\s*(?P<days>[a-z,\-]+)\s+(?P<start>\d\d:\d\d)\s*-\s*(?P<end>\d\d:\d\d)\s*$")
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class WeeklyInterval:
    """One entry of ``open``: the weekdays it starts on and its start and end in minutes.

    ``end`` may be up to ``start + 24 h``; past 1440 it is on the next day.
    """

    text: str
    days: frozenset[int]  # 0 is Monday, as datetime.weekday()
    start: int  # minutes after the start day's midnight
    end: int

    def on(self, day: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
        """The interval as it falls on ``day`` (which it must start on), in UTC."""
        return _at(day, self.start, zone), _at(day, self.end, zone)


def _at(day: dt.date, minutes: int, zone: ZoneInfo) -> dt.datetime:
    """Local wall time ``minutes`` after ``day``'s midnight, in UTC.

    Days are added on the calendar, not as 24 hours, so 08:00 the next morning is 08:00
    on a 23- or 25-hour day too. A time that a spring change skips (01:30 in London)
    is read with the offset before the change, i.e. an hour later by the clock.
    """
    days, minute = divmod(minutes, _MINUTES_PER_DAY)
    local = dt.datetime.combine(day + dt.timedelta(days=days), dt.time(minute // 60, minute % 60))
    return local.replace(tzinfo=zone).astimezone(dt.UTC)


def _bad(text: object, why: str) -> ValueError:
    return ValueError(f"open entry {text!r}: {why}; write entries like {EXAMPLE}")


def _minutes(text: str, entry: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise _bad(entry, f"{text} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str, entry: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise _bad(entry, f"{part!r} is not a day or a range of days ({', '.join(DAYS)})")
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        # A range may wrap around the week: fri-mon is fri, sat, sun, mon.
        days.update(d % 7 for d in range(a, b + 1 if b >= a else b + 8))
    return frozenset(days)


def parse_interval(value: object) -> WeeklyInterval:
    """Read one ``open`` entry; an error names the entry and shows a good one."""
    if isinstance(value, WeeklyInterval):
        return value
    if not isinstance(value, str):
        raise _bad(value, "expected a string")
    match = _ENTRY.match(value.lower())
    if match is None:
        raise _bad(value, "expected <days> <HH:MM>-<HH:MM>")
    start = _minutes(match["start"], value)
    end = _minutes(match["end"], value)
    if start == _MINUTES_PER_DAY:
        raise _bad(value, "an interval cannot start at 24:00; start it at 00:00 the next day")
    if end == start:
        raise _bad(value, "start and end are the same; for a whole day write 00:00-24:00")
    if end < start:  # crosses midnight: it ends on the next day
        end += _MINUTES_PER_DAY
    return WeeklyInterval(value.strip(), _days(match["days"], value), start, end)


#: An ``open`` entry: a string in YAML and JSON, a :class:`WeeklyInterval` in Python.
Interval = Annotated[
    WeeklyInterval,
    BeforeValidator(parse_interval),
    PlainSerializer(lambda interval: interval.text, return_type=str),
]


class ExtractionWindows(BaseModel):
    """When a source may be queried and retrieved from; outside them studies wait."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = Field(
        description="IANA timezone the times are in, e.g. Europe/London (DST is followed)."
    )
    open: list[Interval] = Field(
        min_length=1,
        description='Weekly intervals, e.g. ["mon-fri 20:00-08:00", "sat-sun 00:00-24:00"]; '
        "one crossing midnight belongs to the day it starts.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a known IANA timezone; write one like Europe/London or UTC"
            ) from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _intervals(windows: ExtractionWindows, now: dt.datetime, days_ahead: int):
    """Every interval that starts between the day before ``now`` and ``days_ahead`` later."""
    zone = windows.zone
    today = now.astimezone(zone).date()
    for offset in range(-1, days_ahead + 1):
        day = today + dt.timedelta(days=offset)
        for interval in windows.open:
            if day.weekday() in interval.days:
                yield interval.on(day, zone)


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(datetime.UTC)")
    return now.astimezone(dt.UTC)


def is_open(windows: ExtractionWindows | None, now: dt.datetime) -> bool:
    """Whether a source with ``windows`` may be queried at ``now``; None is always open."""
    if windows is None:
        return True
    now = _utc(now)
    return any(start <= now < end for start, end in _intervals(windows, now, 0))


def next_opening(windows: ExtractionWindows | None, now: dt.datetime) -> dt.datetime | None:
    """When a source closed at ``now`` opens next (in UTC); None if it is open now.

    Every source with windows opens within a week (``open`` is never empty), so a
    closed source always has a next opening.
    """
    if is_open(windows, now):
        return None
    now = _utc(now)
    assert windows is not None  # is_open is True without windows
    return min(start for start, _ in _intervals(windows, now, 7) if start > now)
