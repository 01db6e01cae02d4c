"""Compiled matchers: does a piece of text hold one of the study's identifiers?"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from pacsflow.deid.phi_gate.elements import TEXT_BYTES
from pacsflow.deid.phi_gate.identifiers import (
    MIN_ID_LENGTH,
    MIN_NAME_PART_LENGTH,
    MIN_NUMERIC_ID_LENGTH,
    MIN_UID_LENGTH,
    OriginalIdentifiers,
)

_SEPARATORS = re.compile(r"[\s\-_/]+")
_SEP = r"[\s\-_/]?"  # at most one separator between two characters of an identifier
_UID_TOKEN = re.compile(r"\d+(?:\.\d+)+")

#
# Speed: this runs on every exported instance. Python's regex engine scans quickly for
# an alternation only when every branch starts with a literal character and the pattern
# is case-sensitive (it then skips to positions holding one of those characters). So
# each value is upper-cased once, one combined pattern without boundary conditions finds
# candidate positions, and only there are the exact rules (with their lookarounds) tried.
# Candidates are rare in clean data, so the exact rules cost almost nothing.


@dataclass(frozen=True)
class _Rule:
    first: str  # the literal upper-case character every match starts with
    body: str  # regex without boundary conditions; starts with ``first``
    head: str = ""  # lookbehind, checked at candidate positions only
    tail: str = ""  # lookahead, likewise


def _id_rule(identifier: str) -> _Rule | None:
    core = _SEPARATORS.sub("", identifier.strip()).upper()
    minimum = MIN_NUMERIC_ID_LENGTH if core.isdigit() else MIN_ID_LENGTH
    if len(core) < minimum:
        return None
    return _Rule(
        first=core[0],
        body=_SEP.join(re.escape(c) for c in core),
        head=r"(?<!\d)" if core[0].isdigit() else "",
        tail=r"(?!\d)" if core[-1].isdigit() else "",
    )


def _unaccented(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _is_unspaced_script(text: str) -> bool:
    """CJK ideographs, kana: scripts written without spaces between words."""
    return any(
        0x3040 <= ord(c) <= 0x30FF or 0x3400 <= ord(c) <= 0x9FFF or 0xF900 <= ord(c) <= 0xFAFF
        for c in text
    )


def _name_rules(part: str) -> list[_Rule]:
    part = part.upper()
    if _is_unspaced_script(part):
        return [_Rule(part[0], re.escape(part))]
    # Whole words: no letter or digit on either side ("_" counts as a separator).
    spellings = {part, _unaccented(part)}
    return [
        _Rule(word[0], re.escape(word), r"(?<![^\W_])", r"(?![^\W_])")
        for word in spellings
        if len(word) >= MIN_NAME_PART_LENGTH
    ]


_MONTHS = ("JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST")
_MONTHS += ("SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER")


def _date_rules(day: datetime.date) -> list[_Rule]:
    """Every common spelling of ``day``, each starting with a literal (see above)."""
    y = f"{day.year:04d}"
    months = [f"{day.month:02d}", str(day.month)]  # 03 and 3
    days = [f"{day.day:02d}", str(day.day)]
    full = _MONTHS[day.month - 1]
    names = {full, full[:3] + r"\.?"} | ({r"SEPT\.?"} if full == "SEPTEMBER" else set())
    ordinal = r"(?:ST|ND|RD|TH)?"
    digit, no_digit = r"(?<!\d)", r"(?!\d)"
    # DA, and the start of a DT (YYYYMMDDHHMMSS): no condition on what follows.
    rules = [_Rule(y[0], f"{y}{day.month:02d}{day.day:02d}", digit)]
    for sep in (r"\-", "/", r"\."):  # ISO, US, European and ACR-NEMA orders
        for m in dict.fromkeys(months):
            for d in dict.fromkeys(days):
                rules += [
                    _Rule(y[0], f"{y}{sep}{m}{sep}{d}", digit, no_digit),
                    _Rule(d[0], f"{d}{sep}{m}{sep}{y}", digit, no_digit),
                    _Rule(m[0], f"{m}{sep}{d}{sep}{y}", digit, no_digit),
                ]
    for name in sorted(names):
        for d in dict.fromkeys(days):
            rules += [  # 12 March 1961, 12th MAR 1961, 12-MAR-1961; March 12, 1961
                _Rule(d[0], rf"{d}{ordinal}[\s\-]*{name}[\s,\-]*{y}", digit, no_digit),
                _Rule(name[0], rf"{name}\s*{d}{ordinal},?\s*{y}", "", no_digit),
            ]
    return rules


class _Finder:
    """Searches upper-cased text for any of a set of rules; see the section comment."""

    def __init__(self, rules: Iterable[_Rule]) -> None:
        rules = list(dict.fromkeys(rules))
        self._scan = re.compile("|".join(r.body for r in rules)) if rules else None
        exact: dict[str, list[re.Pattern[str]]] = {}
        for rule in rules:
            exact.setdefault(rule.first, []).append(re.compile(rule.head + rule.body + rule.tail))
        self._exact = exact

    def search(self, upper: str) -> bool:
        scan = self._scan
        if scan is None:
            return False
        pos = 0
        while (candidate := scan.search(upper, pos)) is not None:
            start = candidate.start()
            for pattern in self._exact.get(upper[start], ()):
                if pattern.match(upper, start):  # lookbehinds see the text before start
                    return True
            pos = start + 1
        return False


class Matcher:
    """The compiled form of one study's :class:`OriginalIdentifiers`."""

    def __init__(self, ids: OriginalIdentifiers) -> None:
        id_rules = [
            rule
            for value in sorted(ids.patient_ids | ids.accession_numbers | ids.other_ids)
            if (rule := _id_rule(value)) is not None
        ]
        date_rules = [rule for day in sorted(ids.birth_dates) for rule in _date_rules(day)]
        name_rules = [rule for part in sorted(ids.name_parts) for rule in _name_rules(part)]
        self._text = _Finder(id_rules + name_rules + date_rules)
        self._binary = _Finder(id_rules + date_rules)  # no names: see module docstring
        self._uids = ids.uids

    def text_leaks(self, text: str, names: bool = True) -> bool:
        """Whether ``text`` holds an identifier. ``names=False`` for coded values (VR CS):
        they hold defined terms such as CT or AXIAL, which a short name part ("CT" of
        the name "CQ500-CT-310") would match by accident; IDs, dates and UIDs still count.
        """
        finder = self._text if names else self._binary
        return finder.search(text.upper()) or self._uid_leaks(text)

    def bytes_leak(self, data: bytes) -> bool:
        stripped = data.rstrip(b"\x00 ")
        if not stripped:
            return False
        if not stripped.translate(None, TEXT_BYTES):  # nothing but text bytes
            try:
                return self.text_leaks(stripped.decode("utf-8"))
            except UnicodeDecodeError:
                return self.text_leaks(stripped.decode("latin-1"))
        text = stripped.decode("latin-1")
        return self._binary.search(text.upper()) or self._uid_leaks(text)

    def _uid_leaks(self, text: str) -> bool:
        uids = self._uids
        if not uids or text.count(".") < 2:  # cheap: most values are not dotted numbers
            return False
        for match in _UID_TOKEN.finditer(text):
            token = match.group()
            if len(token) < MIN_UID_LENGTH or token.count(".") < 2:
                continue  # decimals such as DS values; original UIDs have 3+ components
            if token in uids:
                return True
            # Every run of whole components: an original UID inside a longer dotted number.
            dots = [i for i, c in enumerate(token) if c == "."]
            starts = [0, *(i + 1 for i in dots)]
            ends = [*dots, len(token)]
            for start in starts:
                for end in ends:
                    if end - start >= MIN_UID_LENGTH and token[start:end] in uids:
                        return True
        return False


@lru_cache(maxsize=8)
def matcher_for(ids: OriginalIdentifiers) -> Matcher:
    """Compile once per study: the same ``ids`` object is reused for all its instances."""
    return Matcher(ids)
