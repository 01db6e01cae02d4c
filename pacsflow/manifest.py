"""Read a project's manifest (CSV or parquet) into validated rows.

Two shapes are accepted as they are:

- PIXL's export specification: ``procedure_id, mrn, accession_number, project_name,
  extract_generated_timestamp, study_date, study_uid, participant_id`` (``series_uid``
  optional);
- a minimal form: ``mrn, accession_number, study_date`` (``study_uid`` optional).

The whole file is checked before anything is returned: every problem is reported with
its row number (1 is the first data row) and column, so a bad manifest changes nothing.
Messages never quote a cell's value: they can reach Prefect's logs when a deployment
ingests a manifest, and a cell may hold an identifier.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pacsflow.errors import ManifestError

REQUIRED_COLUMNS = ("study_date",)
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
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d")


@dataclass(frozen=True)
class ManifestRow:
    """One requested study. ``row`` is the 1-based data row it came from."""

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


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            # Everything as text: MRNs and accession numbers have leading zeros.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        else:
            raise ManifestError(f"{path}: unknown manifest type {suffix!r}; use .csv or .parquet")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ManifestError(f"{path}: cannot be read as a table: {exc}") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return frame


def _text(value: object) -> str | None:
    """Cell to stripped text; empty, NaN and None become None."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NaT:
        return None
    if isinstance(value, dt.datetime | dt.date | pd.Timestamp):
        return value.strftime("%Y-%m-%d")
    text = str(value).strip()
    return text or None


def _parse_date(text: str) -> dt.date:
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError("not a date; write YYYY-MM-DD (e.g. 2024-03-01)")


def read_manifest(path: str | Path, project: str) -> list[ManifestRow]:
    """Validate the manifest at ``path`` for ``project`` and return its unique studies.

    Raises :class:`ManifestError` listing every problem; an empty manifest is an error.
    """
    path = Path(path)
    frame = _read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    has_ids = {"mrn", "accession_number"} <= set(frame.columns) or "study_uid" in frame.columns
    if missing or not has_ids:
        need = missing + ([] if has_ids else ["mrn and accession_number, or study_uid"])
        raise ManifestError(
            f"{path}: missing column(s): {', '.join(need)}. Columns found: "
            f"{', '.join(frame.columns) or '(none)'}. Expected at least "
            "mrn, accession_number, study_date (study_uid optional)."
        )
    if frame.empty:
        raise ManifestError(f"{path}: the manifest has no rows; nothing to extract.")

    problems: list[str] = []
    rows: list[ManifestRow] = []
    seen: dict[tuple[str, ...], ManifestRow] = {}
    seen_accessions: dict[tuple[str | None, str | None], ManifestRow] = {}
    wanted = project_slug(project)
    columns = [c for c in KNOWN_COLUMNS if c in frame.columns]
    for number, record in enumerate(frame[columns].itertuples(index=False), start=1):
        cells = {col: _text(val) for col, val in zip(columns, record, strict=True)}
        before = len(problems)
        for col, value in cells.items():
            if value is not None and _CONTROL.search(value):
                problems.append(f"row {number}, column {col}: contains a control character")
        name = cells.get("project_name")
        if name is not None and project_slug(name) != wanted:
            problems.append(
                f"row {number}, column project_name: belongs to project {name!r}, not "
                f"{project!r}; split the manifest per project"
            )
        uid = cells.get("study_uid")
        if uid is not None and (len(uid) > 64 or not _UID.match(uid)):
            problems.append(
                f"row {number}, column study_uid: not a valid DICOM UID (digits and dots, "
                "no leading zeros, at most 64 characters)"
            )
        if uid is None and not (cells.get("mrn") and cells.get("accession_number")):
            absent = [c for c in ("mrn", "accession_number") if not cells.get(c)]
            problems.append(
                f"row {number}, column {absent[0]}: empty; each row needs a study_uid or "
                "both mrn and accession_number"
            )
        study_date = None
        if cells.get("study_date") is None:
            problems.append(f"row {number}, column study_date: empty")
        else:
            try:
                study_date = _parse_date(cells["study_date"])
            except ValueError as exc:
                problems.append(f"row {number}, column study_date: {exc}")
        if len(problems) > before or study_date is None:
            continue
        row = ManifestRow(
            row=number,
            study_date=study_date,
            mrn=cells.get("mrn"),
            accession_number=cells.get("accession_number"),
            study_uid=uid,
            participant_id=cells.get("participant_id"),
            procedure_id=cells.get("procedure_id"),
        )
        earlier = seen.get(row.study_key)
        by_accession = seen_accessions.get((row.mrn, row.accession_number))
        if (
            row.mrn
            and row.accession_number
            and by_accession
            and (by_accession.study_uid != row.study_uid)
        ):
            problems.append(
                f"row {number}, column study_uid: row {by_accession.row} has the same mrn and "
                "accession_number with another study UID; pacsflow keeps one study per "
                "accession, so put the second study in a manifest of its own"
            )
        elif earlier is None:
            seen[row.study_key] = row
            if row.mrn and row.accession_number:
                seen_accessions[(row.mrn, row.accession_number)] = row
            rows.append(row)
        elif _same_request(earlier, row):
            continue  # an exact duplicate (PIXL repeats a study per series): keep one
        else:
            problems.append(
                f"row {number}: the same study as row {earlier.row} with different values "
                "(study_date, participant_id or identifiers); keep one of the two rows"
            )
    if problems:
        raise ManifestError(
            f"{path}: {len(problems)} problem(s); nothing was ingested.", problems=problems
        )
    return rows


def _same_request(a: ManifestRow, b: ManifestRow) -> bool:
    return (a.study_date, a.mrn, a.accession_number, a.study_uid, a.participant_id) == (
        b.study_date,
        b.mrn,
        b.accession_number,
        b.study_uid,
        b.participant_id,
    )
