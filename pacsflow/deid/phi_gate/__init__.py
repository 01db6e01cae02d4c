"""The PHI gate: the last check on a de-identified study before it may be exported.

Why a separate check at all: de-identification is driven by a profile (a table of
attributes and actions), and a profile only knows the attributes it lists. Identifiers
also turn up where no table looks: a surname typed into a description, an MRN in a
vendor's private block, an original UID inside a Retrieve URL, a birth date in an image
comment. The gate does not trust the profile. It takes the study's *original* identifiers
(collected from the files as retrieved, before de-identification) and searches every
value of every de-identified instance for them, including sequences, private elements,
binary private data and the File Meta Information. A study with any hit is quarantined
instead of exported, and the ledger records where the hit was (attribute paths), never
what it was.

Matching rules (deliberate trade-offs; a false positive quarantines a study, which is
safe, but a gate that quarantines everything gets switched off, which is not):

* Patient IDs, accession numbers and other visit identifiers: case-insensitive substring,
  ignoring separators (space, ``-``, ``_``, ``/``): ``MRN-001 234`` matches ``MRN001234``.
  An identifier whose first or last character is a digit must not be glued to further
  digits there, so the MRN ``1234567`` is not found inside ``91234567`` or a DS value.
  Identifiers shorter than :data:`MIN_ID_LENGTH` characters (after removing separators),
  and digits-only identifiers shorter than :data:`MIN_NUMERIC_ID_LENGTH`, are not
  searched: such short values occur by chance everywhere in a header (sizes, counts,
  times), so searching them would quarantine every study.
* Patient name parts: whole words, case-insensitive, in any text (PN components split on
  ``^`` and ``=``, parts split on spaces, commas and hyphens). Only the family, given and
  middle components are used: prefixes and suffixes are titles ("MR", "DR", "JR") that
  occur in ordinary text ("MR BRAIN"). Parts of one character are skipped. Parts with
  accents also match their unaccented spelling (MÜLLER finds MULLER). Parts written in
  scripts without spaces between words (CJK ideographs, kana) match as substrings.
* Birth dates: YYYYMMDD (also as the start of a DT value), YYYY-MM-DD, YYYY/MM/DD,
  YYYY.MM.DD, DD/MM/YYYY, DD.MM.YYYY, DD-MM-YYYY, MM/DD/YYYY, MM-DD-YYYY, MM.DD.YYYY,
  with or without leading zeros in day and month, and English month names: "12 March
  1961", "12th Mar 1961", "12-MAR-1961", "March 12, 1961", "Mar. 12 1961".
* UIDs: every UI value of the original that is not under the DICOM root
  ``1.2.840.10008.`` and does not name a class, syntax or coding scheme (see
  :data:`NON_INSTANCE_UID_KEYWORDS`). Found when it appears as a whole run of components
  in any dotted number of any value: exactly, inside a URL, or as the prefix of a longer
  UID derived from it (``<original>.1`` still carries the original).
* What is searched: the values of every string VR (AE AS CS DA DS DT IS LO LT PN SH ST
  TM UC UI UR UT, each value of a multi-valued element), and the bytes of OB, OW and UN
  elements decoded as text. Binary data that looks like text (no control characters, as
  private strings read as UN do) gets the text rules; other binary data gets every rule
  except name parts, because a short word like "LI" occurs by chance in kilobytes of
  binary. Pixel, overlay, waveform and spectroscopy data are never read: they are
  images and signals, and decoding them would cost more than the whole rest of the check.
  Numeric VRs (US SS UL SL FL FD AT OF OD OL OV SV UV) hold numbers, not text.

The optional ``allows(tag, private_creator)`` callback is the profile's own answer to
"may this attribute survive?": every element it refuses is reported, at any depth.
"""

from __future__ import annotations

from pacsflow.deid.phi_gate.identifiers import (
    MIN_ID_LENGTH,
    MIN_NAME_PART_LENGTH,
    MIN_NUMERIC_ID_LENGTH,
    MIN_UID_LENGTH,
    NON_INSTANCE_UID_KEYWORDS,
    STANDARD_UID_ROOT,
    IdentifierBuilder,
    OriginalIdentifiers,
    identifiers_from,
    merge,
)
from pacsflow.deid.phi_gate.verdict import MAX_SUMMARY_CHARS, GateResult, gate
from pacsflow.deid.phi_gate.walk import Allows, find_leaks

__all__ = [
    "MIN_ID_LENGTH",
    "MIN_NAME_PART_LENGTH",
    "MIN_NUMERIC_ID_LENGTH",
    "MIN_UID_LENGTH",
    "MAX_SUMMARY_CHARS",
    "NON_INSTANCE_UID_KEYWORDS",
    "STANDARD_UID_ROOT",
    "Allows",
    "GateResult",
    "IdentifierBuilder",
    "OriginalIdentifiers",
    "find_leaks",
    "gate",
    "identifiers_from",
    "merge",
]
