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
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
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


@dataclass(frozen=True, slots=True)
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
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, skipinitialspace=True)
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


def _text_column(column: pd.Series) -> pd.Series:
    """The column as :func:`_text` would make each cell, but a column at a time.

    CSV columns are text already and take the fast path; a parquet column of dates,
    numbers or mixed objects goes cell by cell through :func:`_text`.
    """
    if pd.api.types.is_datetime64_any_dtype(column):
        text = column.dt.strftime("%Y-%m-%d").astype(object)
    else:
        text = column.astype(object)  # Python strings: strip and regexes as before
        if pd.api.types.infer_dtype(text, skipna=True) in ("string", "empty"):
            text = text.str.strip()
        else:
            text = text.map(_text).astype(object)  # all-None cells would come back as floats
    return text.where(text.notna() & (text != ""), None)


def _parse_date(text: str) -> dt.date:
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError("not a date; write YYYY-MM-DD (e.g. 2024-03-01)")


def _check_columns(path: Path, frame: pd.DataFrame) -> None:
    """Refuse a file without the columns every row needs, or without any row."""
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


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Every known column as text or None; a column the file lacks is all None."""
    frame = frame.reset_index(drop=True)
    absent = pd.Series([None] * len(frame), dtype=object)
    return pd.DataFrame(
        {c: _text_column(frame[c]) if c in frame.columns else absent for c in KNOWN_COLUMNS}
    )


class _Check(IntEnum):
    """The checks of one row, in the order they run: a row's problems are listed so."""

    CONTROL = 0
    PROJECT = 1
    UID = 2
    IDENTIFIERS = 3
    DATE = 4
    DUPLICATE = 5


#: (row, check, message): sorted, problems read in the order of the file.
_Problem = tuple[int, _Check, str]


def _flag(mask: pd.Series, check: _Check, describe: Callable[[int], str]) -> list[_Problem]:
    """A problem for each row where ``mask`` holds; ``describe`` gets its 1-based number."""
    numbers = np.flatnonzero(mask.to_numpy(dtype=bool)) + 1
    return [(number, check, describe(number)) for number in numbers.tolist()]


def _study_dates(text: pd.Series) -> tuple[pd.Series, list[_Problem]]:
    """Each row's study date (NaN where empty or bad) and the problems of the bad ones.

    A manifest has far fewer distinct dates than rows: each is parsed once.
    """
    dates: dict[str, dt.date] = {}
    errors: dict[str, str] = {}
    for value in text.dropna().unique():
        try:
            dates[value] = _parse_date(value)
        except ValueError as exc:
            errors[value] = str(exc)
    empty = _flag(text.isna(), _Check.DATE, lambda n: f"row {n}, column study_date: empty")
    bad = _flag(
        text.isin(list(errors)),
        _Check.DATE,
        lambda n: f"row {n}, column study_date: {errors[text.iat[n - 1]]}",
    )
    return text.map(dates), empty + bad


def _has_control(column: pd.Series) -> pd.Series:
    """Which cells hold a control character.

    One search over the whole column first: most manifests have none, and then no cell
    needs a search of its own.
    """
    if not _CONTROL.search("".join(column.dropna())):
        return pd.Series(False, index=column.index)
    return column.str.contains(_CONTROL.pattern, na=False)


def _cell_problems(cells: pd.DataFrame, project: str) -> list[_Problem]:
    """What is wrong with each row taken alone (the study date is checked apart)."""
    problems: list[_Problem] = []
    for column in KNOWN_COLUMNS:
        problems += _flag(
            _has_control(cells[column]),
            _Check.CONTROL,
            lambda n, column=column: f"row {n}, column {column}: contains a control character",
        )

    names = cells["project_name"]
    wanted = project_slug(project)
    ours = {name: project_slug(name) == wanted for name in names.dropna().unique()}
    problems += _flag(
        names.map(ours).eq(False),
        _Check.PROJECT,
        lambda n: (
            f"row {n}, column project_name: belongs to project {names.iat[n - 1]!r}, not "
            f"{project!r}; split the manifest per project"
        ),
    )

    uids = cells["study_uid"]
    valid_uid = (uids.str.len() <= 64) & uids.str.match(_UID.pattern, na=False)
    problems += _flag(
        uids.notna() & ~valid_uid,
        _Check.UID,
        lambda n: (
            f"row {n}, column study_uid: not a valid DICOM UID (digits and dots, "
            "no leading zeros, at most 64 characters)"
        ),
    )

    mrns, accessions = cells["mrn"], cells["accession_number"]
    problems += _flag(
        uids.isna() & (mrns.isna() | accessions.isna()),
        _Check.IDENTIFIERS,
        lambda n: (
            f"row {n}, column {'mrn' if mrns.iat[n - 1] is None else 'accession_number'}: "
            "empty; each row needs a study_uid or both mrn and accession_number"
        ),
    )
    return problems


def read_manifest(path: str | Path, project: str) -> list[ManifestRow]:
    """Validate the manifest at ``path`` for ``project`` and return its unique studies.

    Raises :class:`ManifestError` listing every problem; an empty manifest is an error.
    Each check runs over a whole column at once: a per-cell Python loop was most of the
    time of a 100,000-row manifest.
    """
    path = Path(path)
    frame = _read_table(path)
    _check_columns(path, frame)
    cells = _cells(frame)
    del frame  # the text cells are all that is needed: don't hold two copies

    dates, problems = _study_dates(cells["study_date"])
    problems += _cell_problems(cells, project)
    bad = {number for number, _check, _message in problems}
    candidates = [
        ManifestRow(
            row=number,
            study_date=study_date,
            mrn=mrn,
            accession_number=accession,
            study_uid=uid,
            participant_id=participant,
            procedure_id=procedure,
        )
        for number, study_date, mrn, accession, uid, participant, procedure in zip(
            range(1, len(cells) + 1),
            dates.tolist(),
            cells["mrn"].tolist(),
            cells["accession_number"].tolist(),
            cells["study_uid"].tolist(),
            cells["participant_id"].tolist(),
            cells["procedure_id"].tolist(),
            strict=True,
        )
        if number not in bad
    ]
    del cells, dates
    rows, duplicates = _unique_studies(candidates)
    problems += duplicates
    if problems:
        problems.sort(key=lambda problem: problem[:2])
        raise ManifestError(
            f"{path}: {len(problems)} problem(s); nothing was ingested.",
            problems=[message for _row, _check, message in problems],
        )
    return rows


def _unique_studies(candidates: list[ManifestRow]) -> tuple[list[ManifestRow], list[_Problem]]:
    """One row per study, in file order; two rows that disagree about a study are problems.

    ``candidates`` are the rows without problems of their own, in file order.
    """
    problems: list[_Problem] = []
    rows: list[ManifestRow] = []
    seen: dict[tuple[str, ...], ManifestRow] = {}
    seen_accessions: dict[tuple[str | None, str | None], ManifestRow] = {}
    for row in candidates:
        number, key = row.row, row.study_key
        earlier = seen.get(key)
        by_accession = seen_accessions.get((row.mrn, row.accession_number))
        if (
            row.mrn
            and row.accession_number
            and by_accession
            and (by_accession.study_uid != row.study_uid)
        ):
            problems.append(
                (
                    number,
                    _Check.DUPLICATE,
                    f"row {number}, column study_uid: row {by_accession.row} has the same mrn "
                    "and accession_number with another study UID; pacsflow keeps one study "
                    "per accession, so put the second study in a manifest of its own",
                )
            )
        elif earlier is None:
            seen[key] = row
            if row.mrn and row.accession_number:
                seen_accessions[(row.mrn, row.accession_number)] = row
            rows.append(row)
        elif _same_request(earlier, row):
            continue  # an exact duplicate (PIXL repeats a study per series): keep one
        else:
            problems.append(
                (
                    number,
                    _Check.DUPLICATE,
                    f"row {number}: the same study as row {earlier.row} with different values "
                    "(study_date, participant_id or identifiers); keep one of the two rows",
                )
            )
    return rows, problems


def _same_request(a: ManifestRow, b: ManifestRow) -> bool:
    return (a.study_date, a.mrn, a.accession_number, a.study_uid, a.participant_id) == (
        b.study_date,
        b.mrn,
        b.accession_number,
        b.study_uid,
        b.participant_id,
    )
