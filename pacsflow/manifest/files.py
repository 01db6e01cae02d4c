"""Read a manifest file (CSV or parquet) into a table of text cells, or refuse the file.

What is refused here is a file that is not a table pacsflow can number by line and
column: an Excel workbook with a .csv name, text that is not UTF-8, another
separator than a comma, a row with more cells than the header, a parquet column of the
wrong type, a first line that is not a header. Each refusal is one problem that names
the line (and the column, when there is one) and says how to fix the file. Messages
never quote a cell: a cell may hold an identifier.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pacsflow.errors import ManifestError
from pacsflow.manifest.places import FIRST_DATA_LINE, Columns, column_letter, place, refuse_file
from pacsflow.manifest.rows import KNOWN_COLUMNS, REQUIRED_COLUMNS

#: How to write a manifest that reads, in the words of the programs people use.
SAVE_AS_CSV = "save it as 'CSV UTF-8 (Comma delimited)' (Excel: File > Save As)"
_WORKBOOK_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")  # .xlsx (a zip), .xls (OLE2)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"
#: Header names people write for a known column, to suggest the rename.
_ALIASES = {
    "mrn": ("patient_id", "patientid", "hospital_number", "mrn_number", "patient"),
    "accession_number": ("accession", "accessionnumber", "accession_no", "acc", "acc_no"),
    "study_date": ("date", "studydate", "exam_date", "scan_date"),
    "study_uid": ("studyinstanceuid", "study_instance_uid", "uid", "studyuid"),
}
_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_null)
_DATE_TYPES = (*_TEXT_TYPES, pa.types.is_date, pa.types.is_timestamp)
#: Parquet columns that must be text (the generation timestamp is not read).
_TEXT_COLUMNS = tuple(
    c for c in KNOWN_COLUMNS if c not in ("study_date", "extract_generated_timestamp")
)


@dataclass(frozen=True)
class Table:
    """The data rows of a manifest: every known column as text or None, and their lines.

    ``cells`` has one column per :data:`KNOWN_COLUMNS` name (all None where the file
    lacks it); ``lines[i]`` is the spreadsheet line of ``cells`` row ``i``. Empty rows
    (blank lines, rows of empty cells, as Excel leaves at the end) are not in it.
    """

    columns: Columns
    cells: pd.DataFrame
    lines: np.ndarray


def read_table(path: Path) -> Table:
    """The manifest at ``path`` as text cells; raises :class:`ManifestError` if unreadable."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file.")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        names, data = _read_parquet(path)
    elif suffix in (".csv", ".txt"):
        names, data = _read_csv(path)
    else:
        raise ManifestError(
            f"{path}: unknown manifest type {suffix!r}; use .csv or .parquet: {SAVE_AS_CSV}."
        )
    columns = Columns(names)
    _check_header(path, columns)
    return _table(path, columns, data)


def _read_csv(path: Path) -> tuple[list[str], pd.DataFrame]:
    """Header names and data rows (all text, positional columns) of a CSV file."""
    raw = path.read_bytes()
    if raw.startswith(_WORKBOOK_MAGIC):
        raise refuse_file(
            path,
            "line 1: this is an Excel workbook (or another zip file) named .csv, not text; "
            f"open it in Excel and {SAVE_AS_CSV}, or write it as parquet",
        )
    if raw.startswith(_UTF16_BOMS):
        raise refuse_file(
            path, f"line 1: the file is UTF-16 text (Excel's 'Unicode Text'); {SAVE_AS_CSV}"
        )
    _check_utf8(path, raw)
    if not raw.removeprefix(_UTF8_BOM).strip():
        raise refuse_file(
            path,
            "line 1: the file is empty; the first line must be the header, "
            "e.g. mrn,accession_number,study_date, and each further line one study",
        )
    try:
        # No header row for pandas: line 1 is checked here, and a duplicate name is not
        # renamed behind our back. Blank lines are kept so rows keep their line numbers;
        # everything is text: MRNs and accession numbers have leading zeros.
        frame = pd.read_csv(
            io.BytesIO(raw),  # pandas decodes bytes faster than it reads a Python str
            encoding="utf-8-sig",
            header=None,
            dtype=object,
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except pd.errors.ParserError:
        raise refuse_file(path, _unsplittable_row(raw.decode("utf-8-sig"))) from None
    except pd.errors.EmptyDataError:  # text, but nothing on line 1
        raise refuse_file(
            path,
            "line 1: is empty; the first line must be the header, e.g. "
            "mrn,accession_number,study_date: remove the empty lines above it",
        ) from None
    names = [str(name).strip().lower() for name in frame.iloc[0]]
    return names, frame.iloc[1:].reset_index(drop=True)


def _check_utf8(path: Path, raw: bytes) -> None:
    """Refuse bytes that are not UTF-8 (with or without the byte order mark Excel writes),
    naming the line and column of the first bad byte."""
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8-sig", errors="replace")
        raise refuse_file(
            path,
            f"{_place_of_end(before)}: holds a byte that is not UTF-8 (the file was saved "
            f"in another encoding, such as Windows-1252); {SAVE_AS_CSV}",
        ) from None


def _records(text: str) -> list[list[str]]:
    """The file as a spreadsheet splits it: one list of cells per line (quotes honoured)."""
    # newline="": a lone CR ends a line too, as it does for pandas and for spreadsheets.
    return list(csv.reader(io.StringIO(text, newline="")))


def _place_of_end(before: str) -> str:
    """Line and column of the character that follows ``before`` (the start of the file)."""
    try:
        records = _records(before + "x")  # the sentinel opens the cell that follows
    except csv.Error:  # a cell larger than the csv module's limit: the line is enough
        return f"line {before.count(chr(10)) + 1}"
    line, index = len(records), len(records[-1]) - 1
    header = [name.strip().lower() for name in records[0]] if line > 1 else []
    return place(line, index, header[index] if index < len(header) else "")


def _unsplittable_row(text: str) -> str:
    """The problem of the first row pandas could not split: more cells than the header,
    or a quote that is not paired (what a spreadsheet shows as cells run together)."""
    number = 0  # the last line split without an error
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        width, number = len(next(reader)), 1
        for number, record in enumerate(reader, start=2):
            if len(record) > width:
                return (
                    f"line {number}: has {len(record)} cells but the header has {width}; "
                    "quote a cell that holds a comma, or remove the extra cells"
                )
    except csv.Error:
        return (
            f'line {number + 1}: a quote (") is not paired, or a cell is over '
            f"{csv.field_size_limit():,} characters; put a cell that holds a comma or a "
            'quote in quotes, and double each quote inside it ("")'
        )
    return f"line 1: the file cannot be split into a header and rows; {SAVE_AS_CSV}"


def _read_parquet(path: Path) -> tuple[list[str], pd.DataFrame]:
    """Header names and data rows of a parquet file, once its column types are checked."""
    try:
        schema = pq.read_schema(path)
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError):
        raise refuse_file(
            path,
            "line 1: not a parquet file pacsflow can read; write it with "
            "pandas.DataFrame.to_parquet, or save the table as CSV",
        ) from None
    names = [str(name).strip().lower() for name in frame.columns]
    columns = Columns(names)
    for field in schema:
        name = str(field.name).strip().lower()
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if name == "study_date":
            if not any(is_type(kind) for is_type in _DATE_TYPES):
                raise refuse_file(
                    path,
                    f"{columns.header(name)}: stored as {kind} in the parquet file; store "
                    "study dates as a date column or as text YYYY-MM-DD",
                )
        elif name in _TEXT_COLUMNS and not any(is_type(kind) for is_type in _TEXT_TYPES):
            raise refuse_file(
                path,
                f"{columns.header(name)}: stored as {kind} in the parquet file; store "
                "identifiers as text (string): as numbers, leading zeros are lost",
            )
    frame.columns = range(len(frame.columns))
    return names, frame.reset_index(drop=True)


def _check_header(path: Path, columns: Columns) -> None:
    """Refuse a first line that is not a header, or lacks a column every row needs."""
    names = columns.names
    if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
        separator = "';'" if ";" in names[0] else "a tab"
        raise refuse_file(
            path,
            f"line 1: the columns are separated by {separator}, not by commas; "
            f"{SAVE_AS_CSV}, or replace each separator by a comma",
        )
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in KNOWN_COLUMNS and name in seen:
            raise refuse_file(
                path,
                f"line 1, column {column_letter(index)} ({name}): a second {name} column "
                f"(the first is column {column_letter(seen[name])}); keep one of them",
            )
        seen.setdefault(name, index)
    renames = _renames(names)
    if not any(name in KNOWN_COLUMNS for name in names) and not renames:
        # Probably data, not a header: quoting these cells could show an identifier.
        raise refuse_file(
            path,
            "line 1: is not a header (no cell is a column name pacsflow knows); the "
            "first line must name the columns, e.g. mrn,accession_number,study_date",
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    has_ids = {"mrn", "accession_number"} <= set(names) or "study_uid" in columns
    if missing or not has_ids:
        need = missing + ([] if has_ids else ["mrn and accession_number, or study_uid"])
        found = ", ".join(f"{column_letter(i)} ({n})" for i, n in enumerate(names))
        hints = "".join(
            f"; column {column_letter(index)} looks like {known}: rename it {known}"
            for index, known in renames
        )
        raise refuse_file(
            path,
            f"line 1: missing column(s): {', '.join(need)}. Columns found: "
            f"{found or '(none)'}. Expected at least mrn, accession_number, study_date "
            f"(study_uid optional){hints}",
        )


def _renames(names: list[str]) -> list[tuple[int, str]]:
    """(index, known name) for header cells that look like a required column misnamed."""
    wanted = [c for c in ("mrn", "accession_number", "study_date", "study_uid") if c not in names]
    found = []
    for index, name in enumerate(names):
        if name in KNOWN_COLUMNS:
            continue
        for known in wanted:
            close = difflib.get_close_matches(name, [known], n=1, cutoff=0.75)
            if close or name.replace(" ", "_").replace("-", "_") in (known, *_ALIASES[known]):
                found.append((index, known))
                break
    return found


def _table(path: Path, columns: Columns, data: pd.DataFrame) -> Table:
    """Known columns as text, empty rows dropped, each row with its spreadsheet line.

    Every column is made text first: a row is empty only if all its cells are, known
    columns or not.
    """
    text = pd.DataFrame({i: _text_column(data[i]) for i in data.columns})
    filled = text.notna().any(axis=1).to_numpy(dtype=bool) if len(text.columns) else None
    if filled is None or not filled.any():
        raise refuse_file(
            path, "line 1: the manifest has no rows; nothing to extract. Add one row per study"
        )
    absent = pd.Series([None] * int(filled.sum()), dtype=object)
    kept = text[filled].reset_index(drop=True)
    cells = pd.DataFrame(
        {c: kept[columns.index(c)] if c in columns else absent for c in KNOWN_COLUMNS},
        dtype=object,
    )
    lines = np.flatnonzero(filled) + FIRST_DATA_LINE
    return Table(columns=columns, cells=cells, lines=lines)


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
