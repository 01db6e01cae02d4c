"""How de-identification reads text: one normal form and one idea of a word, shared by
the cleaner (:mod:`pacsflow.deid.clean`) and the PHI gate (:mod:`pacsflow.deid.phi_gate`).

Why shared: if the cleaner and the gate disagreed about what a word is, or about the
shortest word worth looking at, a cleaned description would still hold what the gate
looks for, and every study with such a description would be quarantined for nothing.

The normal form of a text, computed one character at a time so that every character of
the result can be traced back to the character of the original it came from (which is
what lets the cleaner replace exactly the matched characters of the original):

1. NFKC compatibility forms: full-width ``ＤＯＥ`` is ``DOE``, a decomposed ``u`` plus
   combining diaeresis is ``ü`` (Unicode TR15);
2. common transliterations of Latin letters that German, Scandinavian and other names
   carry: ``ü`` -> ``ue``, ``ö`` -> ``oe``, ``ä`` -> ``ae``, ``ß`` -> ``ss``, ``æ`` ->
   ``ae``, ``ø`` -> ``oe``, ``å`` -> ``aa``, ``œ`` -> ``oe``, ``þ`` -> ``th``, ``ł`` -> ``l``;
3. remaining accents folded away (``é`` -> ``e``), then upper case.

Identifiers get several spellings (:func:`spellings`): the normal form, the accents merely
dropped (``MÜLLER`` -> ``MULLER``), and an ASCII transliteration undone (``MUELLER`` ->
``MULLER``), so any of ``Müller``, ``Mueller``, ``MULLER`` and ``Ｍüller`` is found.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MIN_WORD_LENGTH = 2
"""Shortest name word (in a script written with spaces) that the cleaner removes and the
gate looks for. One letter is an initial: it occurs in any text. Scripts written without
spaces (CJK ideographs, kana, Hangul) have no such minimum: one ideograph is a name."""

TOKEN = re.compile(r"[^\W_]+")
"""A word of normalised text: letters and digits; ``_`` and punctuation separate words."""

_TRANSLITERATIONS = {
    "Ä": "AE",
    "Ö": "OE",
    "Ü": "UE",
    "ß": "SS",
    "ẞ": "SS",
    "Æ": "AE",
    "Ø": "OE",
    "Å": "AA",
    "Œ": "OE",
    "Þ": "TH",
    "Ð": "D",
    "Ł": "L",
    "Đ": "D",
    "Ħ": "H",
    "ı": "I",
}
_TRANSLITERATIONS |= {k.lower(): v for k, v in _TRANSLITERATIONS.items() if k.lower() != k}


@lru_cache(maxsize=8192)
def _fold_char(char: str) -> str:
    out = []
    for c in unicodedata.normalize("NFKC", char):
        mapped = _TRANSLITERATIONS.get(c)
        if mapped is None:
            decomposed = unicodedata.normalize("NFKD", c)
            mapped = "".join(d for d in decomposed if not unicodedata.combining(d))
        out.append(mapped.upper())
    return "".join(out)


def normalize(text: str) -> str:
    """The normal form of ``text`` (see the module docstring)."""
    if text.isascii():
        return text.upper()
    return "".join(_fold_char(c) for c in text)


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """The normal form and, for each of its characters, the index in ``text`` it came
    from (plus one final entry, ``len(text)``, for spans that end at the end)."""
    if text.isascii():
        return text.upper(), [*range(len(text)), len(text)]
    chars: list[str] = []
    offsets: list[int] = []
    for index, c in enumerate(text):
        folded = _fold_char(c)
        chars.append(folded)
        offsets.extend([index] * len(folded))
    offsets.append(len(text))
    return "".join(chars), offsets


def _accents_dropped(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


_UNDO_TRANSLITERATION = re.compile(r"(?<=[A-Z])(AE|OE|UE)")


def spellings(word: str) -> set[str]:
    """The normal forms under which ``word`` (an identifier) may appear in a text."""
    forms = {normalize(word), _accents_dropped(word)}
    if word.isascii():
        forms.add(_UNDO_TRANSLITERATION.sub(lambda m: m.group()[0], word.upper()))
    return {f for f in forms if f}


def is_unspaced_script(text: str) -> bool:
    """CJK ideographs, kana, Hangul: scripts in which a name is not a separate word
    (Korean attaches particles to it, Chinese and Japanese use no spaces)."""
    return any(
        0x1100 <= (o := ord(c)) <= 0x11FF
        or 0x3040 <= o <= 0x30FF
        or 0x3130 <= o <= 0x318F
        or 0x3400 <= o <= 0x9FFF
        or 0xAC00 <= o <= 0xD7AF
        or 0xF900 <= o <= 0xFAFF
        for c in text
    )
