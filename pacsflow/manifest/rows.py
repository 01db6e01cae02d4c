"""What a validated manifest row holds, and the columns a manifest may have."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

#: Every manifest needs these columns; it also needs mrn and accession_number, or study_uid.
REQUIRED_COLUMNS = ("study_date",)
#: The columns pacsflow reads; any other column is ignored.
KNOWN_COLUMNS = (
    "procedure_id",
    "mrn",
    "accession_number",
    "project_name",
    "extract_generated_timestamp",
    "study_date",
    "study_uid",
    "participant_id",
    "series_uid",
)


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One requested study. ``row`` is the 1-based data row it came from.

    A spreadsheet shows that row as line ``row + 1``: line 1 is the header.
    """

    row: int
    study_date: dt.date
    mrn: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    participant_id: str | None = None
    procedure_id: str | None = None

    @property
    def study_key(self) -> tuple[str, ...]:
        """What makes two rows the same study: the UID if given, else MRN and accession."""
        if self.study_uid:
            return ("uid", self.study_uid)
        return ("acc", self.mrn or "", self.accession_number or "")


def project_slug(name: str) -> str:
    """PIXL writes project names freely ("My Project"); compare them as slugs."""
    return re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
