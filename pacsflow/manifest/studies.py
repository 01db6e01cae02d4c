"""One row per study: exact repeats are dropped, rows that disagree are problems."""

from __future__ import annotations

from pacsflow.manifest.places import FIRST_DATA_LINE, Check, Columns, Problem
from pacsflow.manifest.rows import ManifestRow

#: The fields two rows of one study must agree on, in the order a difference is named.
_FIELDS = ("study_date", "participant_id", "mrn", "accession_number", "study_uid")


def _line(row: ManifestRow) -> int:
    return row.row + FIRST_DATA_LINE - 1


def unique_studies(
    candidates: list[ManifestRow], columns: Columns
) -> tuple[list[ManifestRow], list[Problem]]:
    """One row per study, in file order; two rows that disagree about a study are problems.

    ``candidates`` are the rows without problems of their own, in file order. An exact
    repeat is kept once: PIXL's export repeats a study on one row per series.
    """
    problems: list[Problem] = []
    rows: list[ManifestRow] = []
    seen: dict[tuple[str, ...], ManifestRow] = {}
    seen_accessions: dict[tuple[str | None, str | None], ManifestRow] = {}
    patients: dict[str, ManifestRow] = {}  # accession number -> first row with an MRN
    for row in candidates:
        line, key = _line(row), row.study_key
        earlier = seen.get(key)
        by_accession = seen_accessions.get((row.mrn, row.accession_number))
        patient = patients.get(row.accession_number or "")
        if row.mrn and patient is not None and patient.mrn != row.mrn:
            problems.append(
                (
                    line,
                    Check.DUPLICATE,
                    f"{columns.cell(line, 'mrn')}: line {_line(patient)} has the same "
                    "accession_number with another mrn; an accession number belongs to "
                    "one patient: correct the mrn, or remove the wrong row",
                )
            )
        elif (
            row.mrn
            and row.accession_number
            and by_accession
            and (by_accession.study_uid != row.study_uid)
        ):
            problems.append(
                (
                    line,
                    Check.DUPLICATE,
                    f"{columns.cell(line, 'study_uid')}: line {_line(by_accession)} has the "
                    "same mrn and accession_number with another study UID; pacsflow keeps "
                    "one study per accession, so put the second study in a manifest of its own",
                )
            )
        elif earlier is None:
            seen[key] = row
            if row.mrn and row.accession_number:
                seen_accessions[(row.mrn, row.accession_number)] = row
                patients.setdefault(row.accession_number, row)
            rows.append(row)
        elif (differs := _first_difference(earlier, row)) is None:
            continue  # an exact duplicate (PIXL repeats a study per series): keep one
        else:
            problems.append(
                (
                    line,
                    Check.DUPLICATE,
                    f"{columns.cell(line, differs)}: the same study as line {_line(earlier)} "
                    f"with another {differs}; keep one of the two rows",
                )
            )
    return rows, problems


def _first_difference(a: ManifestRow, b: ManifestRow) -> str | None:
    """The first field two rows of one study disagree on, or None if they are the same."""
    for name in _FIELDS:
        if getattr(a, name) != getattr(b, name):
            return name
    return None
