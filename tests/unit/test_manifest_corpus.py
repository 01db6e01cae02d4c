"""Malformed manifests, as they arrive from research teams, through the real ingest entry point.

Each refused manifest must give one error with one problem that names the line and
column as a spreadsheet shows them (line 1 is the header, data row 1 is line 2;
columns A, B, C... with the header's name) and says how to fix it, and must leave the
ledger exactly as it was. The entry point is the ``ingest-manifest`` task of
``flows/extract.py`` (what ``pacsflow extract`` and the deployment run), called without
Prefect through ``.fn`` on a SQLite ledger that already holds a project's studies.

What is accepted on purpose is tested too: a byte order mark (Excel's "CSV UTF-8"
writes one), trailing empty lines and empty rows, whitespace around values, and exact
duplicate rows (PIXL's export repeats a study on one row per series).
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

import flows.extract
from pacsflow.errors import ManifestError
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.ledger.models import Base
from pacsflow.manifest import read_manifest
from pacsflow.manifest.places import column_letter

PROJECT = "my-study"
HEADER = "mrn,accession_number,study_date"
#: Line 2 of most cases: a good row, so the bad one is on line 3.
GOOD = "MRN0001,ACC0001,2024-03-01"
PIXL_HEADER = (
    "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,"
    "study_date,study_uid,participant_id"
)
#: Identifiers the cases use; an error message must never show any of them.
IDENTIFIERS = re.compile(r"MRN\d{4}|ACC\d{4}")
#: What a problem starts with: ``line N`` and, where a cell is at fault, its column's
#: letter and header name (no name when the header cell itself cannot be read).
PLACE = re.compile(r"^line \d+(, column [A-Z]+( \([^()]+\))?)?: ")
#: The ledger's studies before each case: MRN9xxx, so a case's own rows are new to it.
KNOWN = "mrn,accession_number,study_date\nMRN9001,ACC9001,2024-01-01\nMRN9002,ACC9002,2024-01-02\n"


# -- the ledger and the entry point ------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A SQLite ledger with a project's studies in it, behind the flow's workspace."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    # The task reads its ledger from the site's blocks; here the workspace is ours.
    monkeypatch.setattr(flows.extract, "workspace", lambda site: SimpleNamespace(sessions=sessions))
    known = tmp_path / "known.csv"
    known.write_text(KNOWN, encoding="utf-8")
    assert ingest(known)["added"] == 2
    yield engine
    engine.dispose()


def ingest(manifest: Path) -> dict[str, int]:
    """What ``pacsflow extract`` runs first: validate the manifest, then add its studies."""
    return flows.extract.ingest_manifest.fn("default", PROJECT, str(manifest))


def snapshot(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of every ledger table, in primary-key order."""
    with engine.connect() as connection:
        return {
            table.name: [
                tuple(row)
                for row in connection.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in Base.metadata.sorted_tables
        }


# -- builders ------------------------------------------------------------------------------


def csv_text(text: str) -> Callable[[Path], Path]:
    return csv_bytes(text.encode("utf-8"))


def csv_bytes(data: bytes, name: str = "manifest.csv") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return build


def rows(*lines: str, header: str = HEADER) -> Callable[[Path], Path]:
    """A CSV of ``header`` and the good row (line 2), then ``lines`` (line 3 on)."""
    return csv_text("\n".join([header, GOOD, *lines]) + "\n")


def parquet(**columns: list) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "manifest.parquet"
        pd.DataFrame(columns).to_parquet(path, index=False)
        return path

    return build


def workbook(folder: Path) -> Path:
    """An .xlsx (a zip of XML parts) that someone renamed to .csv."""
    path = folder / "manifest.csv"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook/>')
        archive.writestr("xl/worksheets/sheet1.xml", "<worksheet><c>MRN0001</c></worksheet>")
    return path


@dataclass(frozen=True)
class Refused:
    """A malformed manifest, where its one problem is, what it says and how to fix it."""

    build: Callable[[Path], Path]
    place: str
    what: str
    fix: str


def pixl(project_name: str) -> Callable[[Path], Path]:
    uid = "1.2.826.0.1.3680043.8.498.1001"
    return csv_text(
        PIXL_HEADER
        + "\n"
        + f"101,MRN0001,ACC0001,My Study,2024-05-01,2024-03-01,{uid}1,P0001\n"
        + f"102,MRN0002,ACC0002,{project_name},2024-05-01,2024-03-01,{uid}2,P0002\n"
    )


REFUSED = {
    "missing column": Refused(
        csv_text("mrn,accession_number\nMRN0001,ACC0001\n"),
        "line 1",
        "missing column(s): study_date.",
        "Expected at least mrn, accession_number, study_date",
    ),
    "renamed column": Refused(
        csv_text("mrn,accession,study_date\nMRN0001,ACC0001,2024-03-01\n"),
        "line 1",
        "missing column(s): mrn and accession_number, or study_uid",
        "column B looks like accession_number: rename it accession_number",
    ),
    "no header line": Refused(
        csv_text(f"{GOOD}\nMRN0002,ACC0002,2024-03-02\n"),
        "line 1",
        "is not a header",
        "the first line must name the columns, e.g. mrn,accession_number,study_date",
    ),
    "column twice": Refused(
        csv_text("mrn,accession_number,study_date,mrn\nMRN0001,ACC0001,2024-03-01,MRN0001\n"),
        "line 1, column D (mrn)",
        "a second mrn column (the first is column A)",
        "keep one of them",
    ),
    "bad date": Refused(
        rows("MRN0002,ACC0002,01/02/2024"),
        "line 3, column C (study_date)",
        "not a date",
        "write YYYY-MM-DD (e.g. 2024-03-01)",
    ),
    "impossible date": Refused(
        rows("MRN0002,ACC0002,2024-02-30"),
        "line 3, column C (study_date)",
        "not a date",
        "write YYYY-MM-DD (e.g. 2024-03-01)",
    ),
    "empty date": Refused(
        rows("MRN0002,ACC0002,"),
        "line 3, column C (study_date)",
        "empty",
        "write the date YYYY-MM-DD",
    ),
    "non-UTF-8 byte": Refused(
        csv_bytes(
            f"{HEADER}\n{GOOD}\nMRN0002,ACC0002,2024-03-02\nMRN\xe9003,ACC0003,2024-03-02\n".encode(
                "latin-1"
            )
        ),
        "line 4, column A (mrn)",
        "holds a byte that is not UTF-8",
        "save it as 'CSV UTF-8 (Comma delimited)'",
    ),
    "UTF-16 text": Refused(
        csv_bytes(f"{HEADER}\n{GOOD}\n".encode("utf-16")),
        "line 1",
        "the file is UTF-16 text",
        "save it as 'CSV UTF-8 (Comma delimited)'",
    ),
    "empty file": Refused(
        csv_text(""),
        "line 1",
        "the file is empty",
        "the first line must be the header",
    ),
    "only a byte order mark and blank lines": Refused(
        csv_bytes(b"\xef\xbb\xbf\n\n\n"),
        "line 1",
        "the file is empty",
        "the first line must be the header",
    ),
    "header only": Refused(
        csv_text(HEADER + "\n"),
        "line 1",
        "the manifest has no rows",
        "Add one row per study",
    ),
    "header and empty rows": Refused(
        csv_text(HEADER + "\n,,\n\n,,\n"),
        "line 1",
        "the manifest has no rows",
        "Add one row per study",
    ),
    "same study, another date": Refused(
        rows("MRN0002,ACC0002,2024-03-02", "MRN0001,ACC0001,2024-03-09"),
        "line 4, column C (study_date)",
        "the same study as line 2 with another study_date",
        "keep one of the two rows",
    ),
    "same accession, another MRN": Refused(
        rows("MRN0002,ACC0002,2024-03-02", "MRN0003,ACC0001,2024-03-01"),
        "line 4, column A (mrn)",
        "line 2 has the same accession_number with another mrn",
        "correct the mrn, or remove the wrong row",
    ),
    "=HYPERLINK formula": Refused(
        rows('MRN0002,"=HYPERLINK(""http://x.test/?"",""ACC0002"")",2024-03-02'),
        "line 3, column B (accession_number)",
        "starts with '=' like a spreadsheet formula",
        "write the value itself (Excel: copy the column, then Paste Special > Values)",
    ),
    "+cmd formula": Refused(
        rows("+cmd|' /C calc'!A0,ACC0002,2024-03-02"),
        "line 3, column A (mrn)",
        "starts with '+' like a spreadsheet formula",
        "write the value itself",
    ),
    "-1+1 formula": Refused(
        rows("MRN0002,-1+1,2024-03-02"),
        "line 3, column B (accession_number)",
        "starts with '-' like a spreadsheet formula",
        "write the value itself",
    ),
    "@SUM formula": Refused(
        rows("@SUM(1+1)*cmd,ACC0002,2024-03-02"),
        "line 3, column A (mrn)",
        "starts with '@' like a spreadsheet formula",
        "write the value itself",
    ),
    "10 MB field": Refused(
        rows("MRN" + "0" * 10_000_000 + ",ACC0002,2024-03-02"),
        "line 3, column A (mrn)",
        "10,000,003 characters, more than the 64 an identifier can have",
        "check that the cell holds one value",
    ),
    "another project's row": Refused(
        pixl("Other Study"),
        "line 3, column D (project_name)",
        "belongs to project 'Other Study', not 'my-study'",
        "split the manifest per project",
    ),
    "parquet, MRN as integers": Refused(
        parquet(mrn=[1, 2], accession_number=["ACC0001", "ACC0002"], study_date=["2024-03-01"] * 2),
        "line 1, column A (mrn)",
        "stored as int64 in the parquet file",
        "store identifiers as text (string)",
    ),
    "parquet, study date as numbers": Refused(
        parquet(mrn=["MRN0001"], accession_number=["ACC0001"], study_date=[20240301.0]),
        "line 1, column C (study_date)",
        "stored as double in the parquet file",
        "store study dates as a date column or as text YYYY-MM-DD",
    ),
    "parquet, impossible date as text": Refused(
        parquet(
            mrn=["MRN0001", "MRN0002"],
            accession_number=["ACC0001", "ACC0002"],
            study_date=["2024-03-01", "2024-02-30"],
        ),
        "line 3, column C (study_date)",
        "not a date",
        "write YYYY-MM-DD",
    ),
    "text named .parquet": Refused(
        csv_bytes(f"{HEADER}\n{GOOD}\n".encode(), name="manifest.parquet"),
        "line 1",
        "not a parquet file pacsflow can read",
        "write it with pandas.DataFrame.to_parquet, or save the table as CSV",
    ),
    "Excel workbook named .csv": Refused(
        workbook,
        "line 1",
        "this is an Excel workbook (or another zip file) named .csv",
        "open it in Excel and save it as 'CSV UTF-8 (Comma delimited)'",
    ),
    "semicolons": Refused(
        csv_text("mrn;accession_number;study_date\nMRN0001;ACC0001;2024-03-01\n"),
        "line 1",
        "the columns are separated by ';', not by commas",
        "replace each separator by a comma",
    ),
    "an unquoted comma": Refused(
        rows("MRN0002,ACC0002,2024-03-02,extra"),
        "line 3",
        "has 4 cells but the header has 3",
        "quote a cell that holds a comma",
    ),
    "a line break inside a cell": Refused(
        rows('"MRN\n0002",ACC0002,2024-03-02'),
        "line 3, column A (mrn)",
        "contains a control character",
        "remove it",
    ),
    "a quote not paired": Refused(
        rows('"MRN0002,ACC0002,2024-03-02', "MRN0003,ACC0003,2024-03-03"),
        "line 3",
        'a quote (") is not paired',
        'put a cell that holds a comma or a quote in quotes, and double each quote inside it ("")',
    ),
    "an empty first line": Refused(
        csv_text(f"\n{HEADER}\n{GOOD}\n"),
        "line 1",
        "is empty; the first line must be the header",
        "remove the empty lines above it",
    ),
    "old Mac line ends (a lone CR) with an extra cell": Refused(
        csv_text(f"{HEADER}\r{GOOD}\rMRN0002,ACC0002,2024-03-02,extra\r"),
        "line 3",
        "has 4 cells but the header has 3",
        "quote a cell that holds a comma",
    ),
    "no identifiers": Refused(
        rows("MRN0002,,2024-03-02"),
        "line 3, column B (accession_number)",
        "empty",
        "each row needs a study_uid or both mrn and accession_number",
    ),
    "lines counted past a blank line and a multi-line note": Refused(
        csv_text(f'{HEADER},notes\n{GOOD},"first\nsecond"\n\nMRN0002,ACC0002,2024-13-01,\n'),
        "line 4, column C (study_date)",
        "not a date",
        "write YYYY-MM-DD",
    ),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_refused_with_one_problem_at_its_place_and_the_ledger_unchanged(
    case: Refused, ledger: Engine, tmp_path: Path
) -> None:
    path = case.build(tmp_path)
    before = snapshot(ledger)
    with pytest.raises(ManifestError) as info:
        ingest(path)
    [problem] = info.value.problems
    assert PLACE.match(problem), problem
    assert problem.startswith(f"{case.place}: "), problem
    assert case.what in problem
    assert case.fix in problem
    assert "nothing was ingested" in str(info.value)
    assert not IDENTIFIERS.search(str(info.value)), "an error must not show a cell's value"
    assert snapshot(ledger) == before


def test_the_corpus_is_large_enough() -> None:
    assert len(REFUSED) >= 20


@pytest.mark.parametrize(
    ("index", "letters"), [(0, "A"), (2, "C"), (25, "Z"), (26, "AA"), (701, "ZZ"), (702, "AAA")]
)
def test_columns_are_lettered_as_a_spreadsheet_does(index: int, letters: str) -> None:
    assert column_letter(index) == letters


# -- anything else ---------------------------------------------------------------------------

GOOD_FILE = (
    f'{HEADER},study_uid\n{GOOD},1.2.3\nMRN0002,ACC0002,20240302,\n"MRN,3",ACC0003,2024-01-01,\n'
).encode()
#: Bytes that break CSV files: separators, quotes, line ends, NUL, BOM and non-UTF-8 bytes.
NASTY = st.sampled_from(list(b',;"\n\r\t\x00\xff\xfe\xef\xbb\xbf=+-@ aZ09.\\'))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A good manifest with a few bytes inserted, deleted or replaced."""
    data = bytearray(GOOD_FILE)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            data[at:at] = bytes([draw(NASTY)])
        elif data:
            at = min(at, len(data) - 1)
            data[at : at + (draw(st.integers(1, 5)) if action == "delete" else 1)] = (
                b"" if action == "delete" else bytes([draw(NASTY)])
            )
    return bytes(data)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=damaged())
def test_any_damage_gives_rows_or_one_error_naming_lines(data: bytes) -> None:
    """No damaged file crashes the reader or gets a problem without its line."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.csv"
        path.write_bytes(data)
        try:
            read_manifest(path, PROJECT)
        except ManifestError as error:
            assert error.problems
            for problem in error.problems:
                assert PLACE.match(problem), problem


# -- accepted on purpose --------------------------------------------------------------------


def added_rows(engine: Engine) -> list[tuple]:
    """(mrn, accession, date) of the studies a case added (the known ones are MRN9xxx)."""
    studies = Base.metadata.tables["studies"]
    query = select(studies.c.mrn, studies.c.accession_number, studies.c.study_date).where(
        studies.c.mrn.not_like("MRN9%")
    )
    with engine.connect() as connection:
        return [(m, a, str(d)) for m, a, d in connection.execute(query.order_by(studies.c.id))]


ACCEPTED = {
    "byte order mark (Excel's CSV UTF-8)": csv_bytes(
        b"\xef\xbb\xbf" + f"{HEADER}\r\n{GOOD}\r\nMRN0002,ACC0002,2024-03-02\r\n".encode()
    ),
    "trailing empty lines and empty rows": csv_text(
        f"{HEADER}\n{GOOD}\nMRN0002,ACC0002,2024-03-02\n\n,,\n   \n\n"
    ),
    "whitespace around values and names": csv_text(
        " MRN , Accession_Number ,study_date \n  MRN0001 ,\tACC0001\t, 2024-03-01\n"
        "MRN0002 ,  ACC0002,20240302  \n"
    ),
    "empty columns after the last one (Excel)": csv_text(
        f"{HEADER},,\n{GOOD},,\nMRN0002,ACC0002,2024-03-02,,\n,,,,\n"
    ),
    "an exact duplicate row": csv_text(f"{HEADER}\n{GOOD}\nMRN0002,ACC0002,2024-03-02\n{GOOD}\n"),
}


@pytest.mark.parametrize("build", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_on_purpose(build: Callable[[Path], Path], ledger: Engine, tmp_path: Path) -> None:
    assert ingest(build(tmp_path))["added"] == 2
    assert added_rows(ledger) == [
        ("MRN0001", "ACC0001", "2024-03-01"),
        ("MRN0002", "ACC0002", "2024-03-02"),
    ]
