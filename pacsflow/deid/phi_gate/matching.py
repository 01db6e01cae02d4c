"""Compiled matchers: does a piece of text hold one of the study's identifiers, and where?

Every text is normalised first (:mod:`pacsflow.deid.text`), so full-width letters,
decomposed accents and transliterations match; each identifier is searched under all
its spellings. What is looked for depends on the kind of value (:class:`Context`):

* IDs (patient, accession, visit, order, issuer, phone): anywhere, ignoring separators
  (space, ``-``, ``_``, ``/``): ``MRN-001 234`` matches ``MRN001234``. An ID whose first
  or last character is a digit must not be glued to further digits there. IDs shorter
  than :data:`MIN_ID_LENGTH` (digits only: :data:`MIN_NUMERIC_ID_LENGTH`) are skipped:
  such short values occur by chance everywhere in a header.
* Dates (birth date and the study's other dates): every date written in the value, in
  any common form or language (:mod:`pacsflow.deid.written_dates`), compared by meaning.
* UIDs: an original UID as a whole run of components of any dotted number.
* Institutions, addresses, stations: as whole-word phrases.
* Name parts, as whole words. A distinctive part (four letters or more, and not an
  ordinary word of radiology or a name particle, :data:`ORDINARY_WORDS`) counts in any
  value that holds letters, coded values (CS) and binary data included. A short or
  ordinary part ("LI", "LE", "BONE", "HEAD") counts only in person names and free text
  (:attr:`Context.TEXT`): in a coded value or a technical attribute such as Convolution
  Kernel it is a defined term, not a name. Parts in scripts written without spaces (CJK,
  Hangul) are found inside words; a one-character part only in names and free text.

Speed: a study's instances repeat the same values, so each verdict is remembered per
(value, context) for the life of the matcher, which lives as long as the study.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from pacsflow.deid.phi_gate.elements import TEXT_BYTES
from pacsflow.deid.phi_gate.identifiers import (
    MIN_ID_LENGTH,
    MIN_NAME_PART_LENGTH,
    MIN_NUMERIC_ID_LENGTH,
    MIN_UID_LENGTH,
    OriginalIdentifiers,
)
from pacsflow.deid.text import (
    TOKEN,
    is_unspaced_script,
    normalize,
    normalize_with_offsets,
    spellings,
)
from pacsflow.deid.written_dates import find_dates

_SEPARATORS = re.compile(r"[\s\-_/]+")
_SEP = r"[\s\-_/]?"  # at most one separator between two characters of an identifier
_UID_TOKEN = re.compile(r"\d+(?:\.\d+)+")
_MEMO_LIMIT = 200_000  # verdicts remembered per study before the memo starts over

DISTINCTIVE_LENGTH = 4
"""Name parts this long or longer, unless ordinary words, are found in any value."""

_ORDINARY_WORDS = """
    ABDOMEN ANKLE AORTA ARM AXIAL BACK BODY BONE BOTH BRAIN BREAST CARDIAC CHEST COLON
    CONTRAST CORONAL DERIVED DETAIL EDGE ELBOW FACE FINGER FOOT FRONT HAND HEAD HEART
    HIP JAW KIDNEY KNEE LEFT LEG LIVER LUNG LUNGS NECK NORMAL ORBIT ORIGINAL PELVIS
    PLAIN PRIMARY RIGHT ROUTINE SAGITTAL SCOUT SECONDARY SHARP SHOULDER SKULL SMOOTH
    SOFT SPINE STANDARD TISSUE TOE WRIST SPIRAL HELICAL SINUS HEEL LOW HIGH LONG SHORT
    WHITE BLACK DELLA DELLE DELLO SANTA SAINT SAINTE SAN SAO VAN VON DER DEN TER TEN LES
    DES DOS DAS
"""
ORDINARY_WORDS = frozenset(_ORDINARY_WORDS.split())
"""Words of radiology (body parts, kernels, orientations, image types) and name particles
that are also surnames: treated like short parts (see the module docstring)."""


class Context(Enum):
    """What kind of value a text is, which decides what is looked for in it."""

    TEXT = "text"  # person names and free text: everything
    CODE = "code"  # coded and technical values (CS, AE, kernels, code meanings)
    NUMBER = "number"  # DA DT TM DS IS UI: IDs, dates, UIDs
    BINARY = "binary"  # bytes that are not text: as CODE


@dataclass(frozen=True)
class _Rule:
    first: str  # the literal upper-case character every match starts with
    body: str  # regex without boundary conditions; starts with ``first``
    head: str = ""  # lookbehind, checked at candidate positions only
    tail: str = ""  # lookahead, likewise


def _id_rule(identifier: str) -> _Rule | None:
    core = _SEPARATORS.sub("", normalize(identifier.strip()))
    minimum = MIN_NUMERIC_ID_LENGTH if core.isdigit() else MIN_ID_LENGTH
    if len(core) < minimum:
        return None
    return _Rule(
        first=core[0],
        body=_SEP.join(re.escape(c) for c in core),
        head=r"(?<!\d)" if core[0].isdigit() else "",
        tail=r"(?!\d)" if core[-1].isdigit() else "",
    )


class _Finder:
    """Searches normalised text for any of a set of rules.

    Python's regex engine scans quickly for an alternation only when every branch starts
    with a literal character; so one combined pattern without boundary conditions finds
    candidate positions, and only there are the exact rules (with lookarounds) tried.
    """

    def __init__(self, rules: Iterable[_Rule]) -> None:
        rules = list(dict.fromkeys(rules))
        self._scan = re.compile("|".join(r.body for r in rules)) if rules else None
        exact: dict[str, list[str]] = {}
        for rule in rules:
            exact.setdefault(rule.first, []).append(rule.head + rule.body + rule.tail)
        self._exact = exact
        # Compiled when the scan first finds a candidate starting with that character:
        # compiling is most of the cost of a study's Matcher, and most studies' texts
        # hold no candidate at all once de-identified.
        self._compiled: dict[str, list[re.Pattern[str]]] = {}

    def _patterns(self, first: str) -> list[re.Pattern[str]]:
        patterns = self._compiled.get(first)
        if patterns is None:
            patterns = self._compiled[first] = [re.compile(p) for p in self._exact.get(first, ())]
        return patterns

    def spans(self, upper: str) -> Iterator[tuple[int, int]]:
        scan = self._scan
        if scan is None:
            return
        pos = 0
        while (candidate := scan.search(upper, pos)) is not None:
            start = candidate.start()
            for pattern in self._patterns(upper[start]):
                if (match := pattern.match(upper, start)) is not None:
                    yield start, match.end()
                    break
            pos = start + 1


class Matcher:
    """The compiled form of one study's :class:`OriginalIdentifiers`."""

    def __init__(self, ids: OriginalIdentifiers) -> None:
        self._ids = _Finder(
            rule
            for value in sorted(ids.patient_ids | ids.accession_numbers | ids.other_ids)
            if (rule := _id_rule(value)) is not None
        )
        strong: set[str] = set()
        weak: set[str] = set()
        unspaced: dict[str, bool] = {}  # part -> counts outside names and free text
        for part in ids.name_parts:
            if is_unspaced_script(part):
                for form in spellings(part):
                    unspaced[form] = len(form) > 1
                continue
            for form in spellings(part):
                if len(form) < MIN_NAME_PART_LENGTH:
                    continue
                distinctive = len(form) >= DISTINCTIVE_LENGTH and form not in ORDINARY_WORDS
                (strong if distinctive else weak).add(form)
        self._strong = frozenset(strong)
        self._weak = frozenset(weak - strong)
        self._unspaced = tuple(sorted(unspaced.items(), key=lambda kv: -len(kv[0])))
        phrases: dict[str, list[tuple[str, ...]]] = {}
        for phrase in ids.phrases:
            for form in spellings(phrase):
                words = tuple(TOKEN.findall(form))
                if words:
                    phrases.setdefault(words[0], []).append(words)
        self._phrases = phrases
        self._dates: frozenset[datetime.date] = ids.birth_dates | ids.dates
        self._uids = ids.uids
        self._memo: dict[tuple[str, Context], bool] = {}

    # --- the gate's question ---------------------------------------------------------

    def leaks(self, text: str, context: Context = Context.TEXT) -> bool:
        """Whether ``text`` holds an identifier of the study."""
        key = (text, context)
        memo = self._memo
        found = memo.get(key)
        if found is None:
            if len(memo) > _MEMO_LIMIT:
                memo.clear()
            found = memo[key] = next(self._hits(normalize(text), context), None) is not None
            if not found and self._uids and text.count(".") >= 2:
                found = memo[key] = next(self._uid_hits(text), None) is not None
        return found

    def bytes_leak(self, data: bytes) -> bool:
        """Whether binary data holds an identifier; text-like bytes are read as text."""
        stripped = data.rstrip(b"\x00 ")
        if not stripped:
            return False
        if not stripped.translate(None, TEXT_BYTES):  # nothing but text bytes
            try:
                return self.leaks(stripped.decode("utf-8"))
            except UnicodeDecodeError:
                return self.leaks(stripped.decode("latin-1"))
        return self.leaks(stripped.decode("latin-1"), Context.BINARY)

    # --- the cleaner's question ------------------------------------------------------

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where in ``text`` (free text) the study's identifiers are: (start, end) pairs
        in ``text``'s own indices, sorted and merged."""
        normal, offsets = normalize_with_offsets(text)
        found = [(offsets[s], offsets[e]) for s, e in self._hits(normal, Context.TEXT)]
        found += list(self._uid_hits(text))
        merged: list[tuple[int, int]] = []
        for start, end in sorted(found):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    # --- the rules -------------------------------------------------------------------

    def _hits(self, normal: str, context: Context) -> Iterator[tuple[int, int]]:
        yield from self._ids.spans(normal)
        if self._dates:
            for start, end, dates in find_dates(normal):
                if not dates.isdisjoint(self._dates):
                    yield start, end
        if context is Context.NUMBER:
            return
        free = context is Context.TEXT
        strong, weak, phrases = self._strong, self._weak, self._phrases
        if strong or weak or phrases:
            words = [(m.group(), m.start(), m.end()) for m in TOKEN.finditer(normal)]
            for index, (word, start, end) in enumerate(words):
                if word in strong or (free and word in weak):
                    yield start, end
                for phrase in phrases.get(word, ()):
                    following = words[index : index + len(phrase)]
                    if tuple(w for w, _, _ in following) == phrase:
                        yield start, following[-1][2]
        if self._unspaced and not normal.isascii():
            for part, anywhere in self._unspaced:
                if anywhere or free:
                    position = normal.find(part)
                    while position >= 0:
                        yield position, position + len(part)
                        position = normal.find(part, position + 1)

    def _uid_hits(self, text: str) -> Iterator[tuple[int, int]]:
        uids = self._uids
        if not uids or text.count(".") < 2:  # cheap: most values are not dotted numbers
            return
        for match in _UID_TOKEN.finditer(text):
            token = match.group()
            if len(token) < MIN_UID_LENGTH or token.count(".") < 2:
                continue  # decimals such as DS values; original UIDs have 3+ components
            # Every run of whole components: an original UID inside a longer dotted number.
            dots = [i for i, c in enumerate(token) if c == "."]
            starts = [0, *(i + 1 for i in dots)]
            ends = [*dots, len(token)]
            if any(
                end - start >= MIN_UID_LENGTH and token[start:end] in uids
                for start in starts
                for end in ends
            ):
                yield match.start(), match.end()


_MATCHERS: dict[int, tuple[OriginalIdentifiers, Matcher]] = {}


def matcher_for(ids: OriginalIdentifiers) -> Matcher:
    """Compile once per study: the same ``ids`` object is reused for all its instances.

    Keyed by identity, not equality: hashing a study's identifiers (thousands of UIDs)
    for every instance would cost more than the check itself.
    """
    entry = _MATCHERS.get(id(ids))
    if entry is None or entry[0] is not ids:
        if len(_MATCHERS) >= 8:
            _MATCHERS.pop(next(iter(_MATCHERS)))
        entry = _MATCHERS[id(ids)] = (ids, Matcher(ids))
    return entry[1]
