"""Keyed, deterministic pseudonyms for patients, UIDs and other identifiers.

Why keyed HMAC and not a plain hash: an MRN or a UID has little entropy, so an unkeyed
hash can be reversed by hashing every candidate. With HMAC-SHA256 and a secret project
key, only the key holder can link a pseudonym back to a source value, and the same key
gives the same pseudonym on every run, so instances retrieved on different days still
reference each other (PS3.15 E.1.1: UIDs replaced "consistently" within a set of
instances). Every kind of pseudonym gets its own domain-separation prefix so that a UID
pseudonym can never equal a patient pseudonym computed from the same text.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from dataclasses import dataclass, field

from pacsflow.errors import ConfigError

MIN_KEY_BYTES = 16
"""Shortest key accepted: 128 bits, the HMAC security level we rely on."""

NEW_KEY_BYTES = 32

# PS3.5 9.1: a UID is at most 64 characters. 128 bits as a decimal integer is at most
# 39 digits, so "2.25." + 39 digits = 44 characters (PS3.5 B.2, ISO/IEC 9834-8 UUID-derived).
_UID_ROOT = "2.25."

MAX_DATE_SHIFT_DAYS = 1095
"""Largest date shift, in days (about three years). See :meth:`Pseudonymizer.date_shift_days`."""


def new_key() -> str:
    """Return a fresh random 32-byte key as hex, for a new project's secrets store."""
    return secrets.token_hex(NEW_KEY_BYTES)


def _b32(digest: bytes) -> str:
    # 10 bytes = 80 bits = exactly 16 base32 characters, no padding. Upper-case A-Z and
    # 2-7 only, so it is valid in LO, SH, CS and PN (PS3.5 Table 6.2-1).
    return base64.b32encode(digest[:10]).decode("ascii")


@dataclass(frozen=True)
class Pseudonymizer:
    """Deterministic pseudonyms under one secret key (HMAC-SHA256).

    The key is excluded from ``repr`` so it never lands in a log or a Prefect result.
    """

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise ConfigError(f"pseudonymisation key must be bytes, got {type(self.key).__name__}")
        if len(self.key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"pseudonymisation key is {len(self.key)} bytes; at least {MIN_KEY_BYTES} "
                "bytes are required (generate one with pacsflow.deid.pseudonyms.new_key())"
            )

    @classmethod
    def from_hex(cls, hex_key: str) -> Pseudonymizer:
        """Build from a hex key as stored in configuration (see :func:`new_key`)."""
        try:
            key = bytes.fromhex(hex_key.strip())
        except (ValueError, AttributeError) as exc:
            raise ConfigError("pseudonymisation key is not a valid hex string") from exc
        return cls(key)

    def _mac(self, message: bytes) -> bytes:
        return hmac.digest(self.key, message, "sha256")

    def uid(self, original: str) -> str:
        """Return the ``2.25.`` UID that replaces ``original``.

        The first 128 bits of the HMAC, read as an unsigned integer, form a UUID-derived
        UID (PS3.5 B.2). ``str(int)`` never has a leading zero, as PS3.5 9.1 requires.
        """
        digest = self._mac(b"uid\x00" + original.encode("utf-8"))
        return _UID_ROOT + str(int.from_bytes(digest[:16], "big"))

    def patient_id(self, mrn: str) -> str:
        """Return a 16-character pseudonym for a patient identifier (MRN)."""
        return _b32(self._mac(b"patient\x00" + mrn.encode("utf-8")))

    def hash_text(self, value: str, purpose: str) -> str:
        """Return a 16-character pseudonym for ``value`` in the namespace ``purpose``.

        ``purpose`` (e.g. ``"accession"``) separates domains, so the same text used as an
        accession number and as a study ID gets unrelated pseudonyms. 16 characters fit SH.
        """
        if "\x00" in purpose:
            raise ValueError("purpose must not contain NUL characters")
        message = b"text\x00" + purpose.encode("utf-8") + b"\x00" + value.encode("utf-8")
        return _b32(self._mac(message))

    def date_shift_days(self, patient_key: str) -> int:
        """Return the days to add to every date of one patient: in ``[-1095, -1]``, never 0.

        PS3.15 E.3.6 (Retain Longitudinal Temporal Information with Modified Dates): dates
        are shifted so that intervals within one patient survive. ``patient_key`` is the
        MRN (or the source's PatientID), so every study of that patient moves by the same
        offset, in every run of the project. Shifts go backwards only, so a shifted date is
        never in the future; the range of three years hides the true date to within that
        window for anyone without the key. The same key and patient give the same shift;
        another project's key gives an unrelated one.
        """
        if not patient_key:
            raise ValueError(
                "patient_key is empty; pass the MRN or PatientID so that all of one "
                "patient's studies shift by the same number of days"
            )
        digest = self._mac(b"date-shift\x00" + patient_key.encode("utf-8"))
        return -(int.from_bytes(digest[:8], "big") % MAX_DATE_SHIFT_DAYS + 1)
