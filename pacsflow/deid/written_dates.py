"""Find dates written in text, in the forms people and systems write them.

Why parse rather than search for spellings: a date has dozens of spellings (orders, with
or without leading zeros, two- or four-digit years, separators, month names in several
languages, ordinals) and a study has several dates. Reading every date-like run of the
text once and comparing what it means with the study's dates is both faster and more
complete than one pattern per spelling.

Runs read, on normalised text (:func:`pacsflow.deid.text.normalize`: upper case, accents
folded, so ``février`` is ``FEVRIER`` and ``März`` is ``MAERZ``):

* ``YYYYMMDD`` (a DA, or the start of a DT), and ``DDMMYYYY`` / ``MMDDYYYY``;
* three numbers with one separator repeated: ``2024-01-15``, ``15/01/2024``,
  ``01.15.24``, ``15-1-24``; a two-digit year means 19YY or 20YY;
* day, month name and year, or month name, day and year, in English, French, German,
  Spanish, Italian, Dutch and Portuguese, full or abbreviated, with ordinals and
  ``de``: ``12th Mar 1961``, ``1er janvier 2024``, ``15. Januar 2024``,
  ``15 de enero de 2024``, ``March 12, 1961``, ``12-MAR-61``.

A dotted run inside a longer dotted number (a UID such as ``1.2.5.24.1``) is not a date.
Every interpretation of a run is returned: ``03/04/2024`` is both 3 April and 4 March.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator

_MONTH_WORDS: dict[int, str] = {
    1: "JANUARY JAN JANVIER JANV JANUAR JAENNER JANNER ENERO ENE GENNAIO GEN JANUARI JANEIRO",
    2: "FEBRUARY FEB FEVRIER FEVR FEV FEBRUAR FEBRERO FEBBRAIO FEBRUARI FEVEREIRO",
    3: "MARCH MAR MARS MAERZ MARZ MRZ MARZO MAART MRT MARCO",
    4: "APRIL APR AVRIL AVR ABRIL ABR APRILE",
    5: "MAY MAI MAYO MAGGIO MAG MEI MAIO",
    6: "JUNE JUN JUIN JUNI JUNIO GIUGNO GIU JUNHO",
    7: "JULY JUL JUILLET JUIL JULI JULIO LUGLIO LUG JULHO",
    8: "AUGUST AUG AOUT AGOSTO AGO AUGUSTUS",
    9: "SEPTEMBER SEP SEPT SEPTEMBRE SEPTIEMBRE SETIEMBRE SETTEMBRE SET SETEMBRO",
    10: "OCTOBER OCT OCTOBRE OKTOBER OKT OCTUBRE OTTOBRE OTT OUTUBRO OUT",
    11: "NOVEMBER NOV NOVEMBRE NOVIEMBRE NOVEMBRO",
    12: "DECEMBER DEC DECEMBRE DEZEMBER DEZ DICIEMBRE DIC DICEMBRE DEZEMBRO",
}
MONTHS: dict[str, int] = {
    word: month for month, words in _MONTH_WORDS.items() for word in words.split()
}
"""Normalised month name or abbreviation -> month number."""

_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
_GAP = r"[\s\-/.,]*(?:DE\s+|DEL\s+)?"  # "15 de enero de 2024", "15-MAR-61", "Mar. 12, 1961"
_ORDINAL = r"(?:ST|ND|RD|TH|ER|E|\.)?"
_DAY_MONTH_YEAR = re.compile(
    rf"(?<!\d)(\d{{1,2}}){_ORDINAL}{_GAP}({_MONTH})(?![A-Z]){_GAP}(\d{{4}}|\d{{2}})(?!\d)"
)
_MONTH_DAY_YEAR = re.compile(
    rf"(?<![A-Z])({_MONTH})(?![A-Z]){_GAP}(\d{{1,2}}){_ORDINAL}[\s,\-/.]*(\d{{4}}|\d{{2}})(?!\d)"
)
_NUMERIC = re.compile(r"(?<![\d.])(\d{1,4})([./\-])(\d{1,2})\2(\d{1,4})(?!\d|\.\d)")
_EIGHT_DIGITS = re.compile(r"(?<!\d)(\d{8})")


def _date(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def _years(text: str) -> list[int]:
    if len(text) == 4:
        return [int(text)]
    if len(text) == 2:
        return [1900 + int(text), 2000 + int(text)]
    return []


def _candidates(triples: list[tuple[list[int], int, int]]) -> set[datetime.date]:
    return {
        found
        for years, month, day in triples
        for year in years
        if (found := _date(year, month, day)) is not None
    }


def find_dates(text: str) -> Iterator[tuple[int, int, set[datetime.date]]]:
    """``(start, end, dates)`` for each date-like run of normalised ``text``."""
    if not any(c.isdigit() for c in text):
        return
    for match in _EIGHT_DIGITS.finditer(text):
        digits = match.group(1)
        a, b, c = int(digits[:4]), int(digits[4:6]), int(digits[6:])
        triples = [([a], b, c)]  # YYYYMMDD, also as the start of a DT
        if not text[match.end() : match.end() + 1].isdigit():
            year = int(digits[4:])
            triples += [([year], int(digits[2:4]), int(digits[:2]))]  # DDMMYYYY
            triples += [([year], int(digits[:2]), int(digits[2:4]))]  # MMDDYYYY
        yield match.start(), match.end(), _candidates(triples)
    for match in _NUMERIC.finditer(text):
        first, _, middle, last = match.groups()
        m = int(middle)
        if len(first) == 4:
            triples = [([int(first)], m, int(last)), ([int(first)], int(last), m)]
        elif len(last) in (2, 4):
            years = _years(last)
            triples = [(years, m, int(first)), (years, int(first), m)]
            if len(first) == 2 and len(last) == 2:  # YY-MM-DD
                triples.append((_years(first), m, int(last)))
        else:
            continue
        yield match.start(), match.end(), _candidates(triples)
    for match in _DAY_MONTH_YEAR.finditer(text):
        day, month, year = match.groups()
        yield match.start(), match.end(), _candidates([(_years(year), MONTHS[month], int(day))])
    for match in _MONTH_DAY_YEAR.finditer(text):
        month, day, year = match.groups()
        yield match.start(), match.end(), _candidates([(_years(year), MONTHS[month], int(day))])
