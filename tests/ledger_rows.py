"""A study's manifest row put in a test's ledger, as `pacsflow extract` ingests it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from pacsflow.ledger import checks
from pacsflow.ledger import repository as repo
from pacsflow.manifest import ManifestRow


def ingest_study(
    sessions: Callable[[], Session],
    project: str,
    study: Sequence[Dataset],
    study_date: dt.date,
    **columns: str,
) -> int:
    """Ingest the row a project would hand over for ``study`` (its first instance's MRN
    and accession number, ``study_date`` and any other ``columns``); its ledger id."""
    first = study[0]
    row = ManifestRow(
        row=1,
        study_date=study_date,
        mrn=str(first.PatientID),
        accession_number=str(first.AccessionNumber),
        **columns,
    )
    with sessions() as session:
        repo.ingest_manifest(session, project, [row])
        [study_id], _done = checks.manifest_studies(session, project, [row])
    return study_id
