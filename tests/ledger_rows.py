"""Studies put in a test's ledger: a manifest row for a study, or a few pending rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pacsflow.ledger import checks, make_engine, migrate, session_factory
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


def ledger_with_studies(folder: Path, project: str, n: int) -> tuple[Engine, sessionmaker[Session]]:
    """A migrated ledger in ``folder`` with ``n`` pending studies of ``project`` (ids 1..n);
    the caller disposes of the engine."""
    engine = make_engine(f"sqlite:///{folder / 'ledger.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    rows = [
        ManifestRow(row=i, study_date=dt.date(2024, 1, 1), mrn=f"M{i}", accession_number=f"A{i}")
        for i in range(1, n + 1)
    ]
    with sessions() as session:
        repo.ingest_manifest(session, project, rows)
    return engine, sessions
