"""Read a project's manifest (CSV or parquet) into validated rows.

Two shapes are accepted as they are:

- PIXL's export specification: ``procedure_id, mrn, accession_number, project_name,
  extract_generated_timestamp, study_date, study_uid, participant_id`` (``series_uid``
  optional);
- a minimal form: ``mrn, accession_number, study_date`` (``study_uid`` optional).

The whole file is checked before anything is returned, so a bad manifest changes
nothing. Every problem names its place as a spreadsheet shows it (``line 3, column B
(accession_number)``: line 1 is the header) and says how to fix it. Messages never
quote a cell's value: they can reach Prefect's logs when a deployment ingests a
manifest, and a cell may hold an identifier.

The modules, in the order a manifest goes through them: :mod:`.files` (the file as a
table of text), :mod:`.checks` (each row alone), :mod:`.studies` (rows against each
other); :mod:`.places` names lines and columns, :mod:`.rows` holds the result.
"""

from __future__ import annotations

from pathlib import Path

from pacsflow.manifest.checks import MAX_IDENTIFIER, cell_problems, content_problems, study_dates
from pacsflow.manifest.files import read_table
from pacsflow.manifest.places import FIRST_DATA_LINE, refuse
from pacsflow.manifest.rows import KNOWN_COLUMNS, REQUIRED_COLUMNS, ManifestRow, project_slug
from pacsflow.manifest.studies import unique_studies

__all__ = [
    "KNOWN_COLUMNS",
    "MAX_IDENTIFIER",
    "REQUIRED_COLUMNS",
    "ManifestRow",
    "project_slug",
    "read_manifest",
]


def read_manifest(path: str | Path, project: str) -> list[ManifestRow]:
    """Validate the manifest at ``path`` for ``project`` and return its unique studies.

    Raises one :class:`~pacsflow.errors.ManifestError` listing every problem; an empty
    manifest is an error.
    """
    path = Path(path)
    table = read_table(path)
    problems, refused = content_problems(table)
    dates, date_problems = study_dates(table, refused)
    problems += date_problems + cell_problems(table, refused, project)
    bad = {line for line, _check, _message in problems}
    cells, columns = table.cells, table.columns
    candidates = [
        ManifestRow(
            row=line - FIRST_DATA_LINE + 1,
            study_date=study_date,
            mrn=mrn,
            accession_number=accession,
            study_uid=uid,
            participant_id=participant,
            procedure_id=procedure,
        )
        for line, study_date, mrn, accession, uid, participant, procedure in zip(
            table.lines.tolist(),
            dates.tolist(),
            cells["mrn"].tolist(),
            cells["accession_number"].tolist(),
            cells["study_uid"].tolist(),
            cells["participant_id"].tolist(),
            cells["procedure_id"].tolist(),
            strict=True,
        )
        if line not in bad
    ]
    del table, cells, dates  # the rows are all that is needed: don't hold two copies
    rows, duplicates = unique_studies(candidates, columns)
    problems += duplicates
    if problems:
        raise refuse(path, problems)
    return rows
