"""Where a problem is, said as a spreadsheet shows it, and the error that lists them.

Line 1 is the header, so the first data row is line 2; columns are lettered A, B, C...
in the order of the file, followed by the header's name: ``line 3, column B
(accession_number)``. A user opens the file in Excel or LibreOffice and goes straight
to that cell. A parquet file is numbered the same way, as a spreadsheet opening it would.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path

from pacsflow.errors import ManifestError

#: The line a spreadsheet shows the first data row on.
FIRST_DATA_LINE = 2


def column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: the letters a spreadsheet heads column ``index`` with."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def place(line: int, index: int | None = None, name: str = "") -> str:
    """``line 3``, ``line 3, column B`` or ``line 3, column B (mrn)``: as much as is known."""
    if index is None:
        return f"line {line}"
    return f"line {line}, column {column_letter(index)}" + (f" ({name})" if name else "")


class Columns:
    """The file's header: which letter each column name sits under."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._indexes: dict[str, int] = {}
        for index, name in enumerate(names):
            self._indexes.setdefault(name, index)

    def __contains__(self, name: object) -> bool:
        return name in self._indexes

    def index(self, name: str) -> int:
        """The position of the first column called ``name`` (0 is column A)."""
        return self._indexes[name]

    def cell(self, line: int, name: str) -> str:
        """``line 3, column B (mrn)``; a column the file lacks is named as absent."""
        if name not in self._indexes:
            return f"line {line}, column {name} (not in the file)"
        return place(line, self._indexes[name], name)

    def header(self, name: str) -> str:
        """The header cell of column ``name``: ``line 1, column B (mrn)``."""
        return self.cell(1, name)


class Check(IntEnum):
    """The checks of one row, in the order they run: a row's problems are listed so."""

    FILE = 0
    CONTENT = 1
    PROJECT = 2
    UID = 3
    IDENTIFIERS = 4
    DATE = 5
    DUPLICATE = 6


#: (line, check, message): sorted, problems read in the order of the file.
Problem = tuple[int, Check, str]


def refuse(path: Path, problems: list[Problem]) -> ManifestError:
    """The one error a bad manifest raises: every problem, in the order of the file."""
    problems = sorted(problems, key=lambda problem: problem[:2])
    return ManifestError(
        f"{path}: {len(problems)} problem(s); nothing was ingested.",
        problems=[message for _line, _check, message in problems],
    )


def refuse_file(path: Path, message: str) -> ManifestError:
    """The error of a file that cannot be read as a table at all (``message`` names the line)."""
    return refuse(path, [(1, Check.FILE, message)])
