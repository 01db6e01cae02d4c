"""What can be wrong with a row taken alone, checked a column at a time.

A per-cell Python loop was most of the time of a 100,000-row manifest, so each check
runs over a whole column and yields a problem per row where it fails. A cell refused
for its content (a control character, a formula, its length) is not checked further:
one problem per cell, the one to fix first.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from pacsflow.manifest.files import Table
from pacsflow.manifest.places import Check, Problem
from pacsflow.manifest.rows import KNOWN_COLUMNS, project_slug

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
_FORMULA = re.compile(r"^[=+\-@]")
_ANY_FORMULA = re.compile(r"(?:^|\n)[=+\-@]")  # over a column's cells joined by newlines
_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d")
#: The longest identifier DICOM can carry: PatientID is LO, at most 64 characters
#: (PS3.5 Table 6.2-1); pseudonyms and procedure ids are held to the same.
MAX_IDENTIFIER = 64


def _flag(table: Table, mask: pd.Series, check: Check, describe: Callable[[int, int], str]):
    """A problem for each row where ``mask`` holds; ``describe`` gets (line, row index)."""
    indexes = np.flatnonzero(mask.to_numpy(dtype=bool))
    lines = table.lines[indexes]
    return [
        (line, check, describe(line, index))
        for line, index in zip(lines.tolist(), indexes.tolist(), strict=True)
    ]


def _has_control(column: pd.Series) -> pd.Series:
    """Which cells hold a control character.

    One search over the whole column first: most manifests have none, and then no cell
    needs a search of its own.
    """
    if not _CONTROL.search("".join(column.dropna())):
        return pd.Series(False, index=column.index)
    return column.str.contains(_CONTROL.pattern, na=False)


def content_problems(table: Table) -> tuple[list[Problem], pd.DataFrame]:
    """Cells no check should read further, and which they are (a boolean frame).

    A formula is refused, not neutralised: a cell that starts with ``=``, ``+``, ``-``
    or ``@`` is what a spreadsheet exported instead of a value (``=HYPERLINK(...)``), so
    the identifier meant is unknown; quoting it would query the PACS for the formula's
    text, and the cell would become a live formula again in any sheet built from it.
    """
    problems: list[Problem] = []
    refused = pd.DataFrame(False, index=table.cells.index, columns=list(KNOWN_COLUMNS))
    for column in KNOWN_COLUMNS:
        if table.cells[column].notna().any():
            found, refused[column] = _column_content(table, column)
            problems += found
    return problems, refused


def _column_content(table: Table, column: str) -> tuple[list[Problem], pd.Series]:
    """The content problems of one column, and which of its cells have one."""
    cells, where = table.cells[column], table.columns.cell
    # Each check asks first whether any cell fails it, at C speed: most manifests have
    # no bad cell, and then no cell needs a check of its own.
    values = cells.dropna().tolist()
    none = pd.Series(False, index=cells.index)
    control = _has_control(cells)
    too_long = none
    if column not in ("study_date", "study_uid") and max(map(len, values)) > MAX_IDENTIFIER:
        # (the date and UID checks say what is wrong with long ones)
        too_long = ~control & (cells.str.len() > MAX_IDENTIFIER).fillna(False).astype(bool)
    formula = none
    if _ANY_FORMULA.search("\n".join(values)):
        formula = ~control & ~too_long & cells.str.match(_FORMULA.pattern, na=False)
    problems = _flag(
        table,
        control,
        Check.CONTENT,
        lambda line, _i: (
            f"{where(line, column)}: contains a control character; remove it "
            "(often a pasted line break or tab)"
        ),
    )
    problems += _flag(
        table,
        too_long,
        Check.CONTENT,
        lambda line, i: (
            f"{where(line, column)}: {len(cells.iat[i]):,} characters, more than the "
            f"{MAX_IDENTIFIER} an identifier can have; check that the cell holds one value"
        ),
    )
    problems += _flag(
        table,
        formula,
        Check.CONTENT,
        lambda line, i: (
            f"{where(line, column)}: starts with {cells.iat[i][0]!r} like a spreadsheet "
            "formula; pacsflow refuses formulas, as the value they stand for is unknown: "
            "write the value itself (Excel: copy the column, then Paste Special > Values)"
        ),
    )
    return problems, control | too_long | formula


def cell_problems(table: Table, refused: pd.DataFrame, project: str) -> list[Problem]:
    """What is wrong with each row taken alone (the study date is checked apart)."""
    cells, where = table.cells, table.columns.cell
    problems: list[Problem] = []

    names = cells["project_name"]
    wanted = project_slug(project)
    ours = {name: project_slug(name) == wanted for name in names.dropna().unique()}
    problems += _flag(
        table,
        names.map(ours).eq(False) & ~refused["project_name"],
        Check.PROJECT,
        lambda line, i: (
            f"{where(line, 'project_name')}: belongs to project {names.iat[i]!r}, not "
            f"{project!r}; split the manifest per project"
        ),
    )

    uids = cells["study_uid"]
    valid_uid = (uids.str.len() <= 64) & uids.str.match(_UID.pattern, na=False)
    problems += _flag(
        table,
        uids.notna() & ~valid_uid & ~refused["study_uid"],
        Check.UID,
        lambda line, _i: (
            f"{where(line, 'study_uid')}: not a valid DICOM UID (digits and dots, "
            "no leading zeros, at most 64 characters)"
        ),
    )

    mrns, accessions = cells["mrn"], cells["accession_number"]
    problems += _flag(
        table,
        uids.isna() & (mrns.isna() | accessions.isna()),
        Check.IDENTIFIERS,
        lambda line, i: (
            f"{where(line, _empty_identifier(table, i))}: empty; each row needs a "
            "study_uid or both mrn and accession_number"
        ),
    )
    return problems


def _empty_identifier(table: Table, index: int) -> str:
    """The empty identifier column to name: one the file has, so a user can find it."""
    for column in ("mrn", "accession_number", "study_uid"):
        if column in table.columns and table.cells[column].iat[index] is None:
            return column
    return "mrn" if table.cells["mrn"].iat[index] is None else "accession_number"


def _parse_date(text: str) -> dt.date:
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError("not a date; write YYYY-MM-DD (e.g. 2024-03-01)")


def study_dates(table: Table, refused: pd.DataFrame) -> tuple[pd.Series, list[Problem]]:
    """Each row's study date (NaN where empty or bad) and the problems of the bad ones.

    A manifest has far fewer distinct dates than rows: each is parsed once.
    """
    text = table.cells["study_date"].where(~refused["study_date"], None)
    where = table.columns.cell
    dates: dict[str, dt.date] = {}
    errors: dict[str, str] = {}
    for value in text.dropna().unique():
        try:
            dates[value] = _parse_date(value)
        except ValueError as exc:
            errors[value] = str(exc)
    empty = _flag(
        table,
        text.isna() & ~refused["study_date"],
        Check.DATE,
        lambda line, _i: f"{where(line, 'study_date')}: empty; write the date YYYY-MM-DD",
    )
    bad = _flag(
        table,
        text.isin(list(errors)),
        Check.DATE,
        lambda line, i: f"{where(line, 'study_date')}: {errors[text.iat[i]]}",
    )
    return text.map(dates), empty + bad
