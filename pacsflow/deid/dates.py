"""Shift DA and DT values by whole days (PS3.15 E.3.6, modified dates).

Why whole days and the same offset per patient: intervals between a patient's studies
are what longitudinal research needs, and they survive any constant shift; the time of
day and the time-zone suffix are kept as they were, so a DT stays valid (PS3.5 Table
6.2-1). A value that is not a valid date is blanked rather than kept: it cannot be
shifted, and leaving it as is would leak the real date next to shifted ones.
"""

from __future__ import annotations

import datetime
import re

# PS3.5 Table 6.2-1, DT: YYYY[MM[DD[HH[MM[SS[.F{1-6}]]]]]][&ZZXX]
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$")


def _shift(day: datetime.date, days: int) -> datetime.date | None:
    try:
        return day + datetime.timedelta(days=days)
    except OverflowError:  # before 0001-01-01 or after 9999-12-31
        return None


def shift_da(value: str, days: int) -> str:
    """Shift one DA value (``YYYYMMDD``; ``YYYY.MM.DD`` of ACR-NEMA is read too).

    A range (``A-B``, as in queries) shifts both ends. Anything unparsable becomes "".
    """
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        return "-".join(shift_da(part, days) if part else "" for part in value.split("-", 1))
    digits = value.replace(".", "") if len(value) == 10 else value
    try:
        day = datetime.datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return ""
    shifted = _shift(day, days)
    return shifted.strftime("%Y%m%d") if shifted else ""


def shift_dt(value: str, days: int) -> str:
    """Shift one DT value; a DT with no time part (``YYYYMMDD``) stays date-only.

    A DT of lower precision is shifted at its own precision: ``YYYYMM`` from the middle
    of the month, ``YYYY`` from the middle of the year, so the result stays a plausible
    value of the same form. Anything unparsable becomes "".
    """
    value = value.strip()
    match = _DT.match(value)
    if not match:
        return ""
    year, month, day, time, zone = match.groups()
    try:
        anchor = datetime.date(int(year), int(month or 7), int(day or (15 if month else 1)))
    except ValueError:
        return ""
    shifted = _shift(anchor, days)
    if shifted is None:
        return ""
    if day:
        date_part = shifted.strftime("%Y%m%d")
    elif month:
        date_part = shifted.strftime("%Y%m")
    else:
        date_part = f"{shifted.year:04d}"
    return date_part + (time or "") + (zone or "")


def shift_value(value: object, vr: str, days: int) -> object:
    """Shift a DA or DT element value (one string or a list of them); TM is returned as is."""
    if vr == "TM" or value is None:
        return value
    shift = shift_da if vr == "DA" else shift_dt
    if isinstance(value, str):
        return shift(value, days)
    return [shift(str(v), days) for v in value]  # type: ignore[attr-defined]
