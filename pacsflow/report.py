"""The per-study report: every ledger row of a project, identifiers included.

It is for the data team that runs the pulls, who must be able to tell which of the
research team's manifest rows were exported, from where, under which pseudonyms, and why
the others were not. So unlike the linker (:mod:`pacsflow.linker`) and everything shown in
Prefect, it holds MRNs, accession numbers and original UIDs. It is written to a local file
only (``pacsflow report``) and never passes through Prefect.
"""

from __future__ import annotations

import os
import uuid
from enum import StrEnum
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacsflow.errors import ConfigError
from pacsflow.ledger.models import Study


class ReportFormat(StrEnum):
    """The file formats of the report."""

    CSV = "csv"
    PARQUET = "parquet"


#: Report column -> ledger column, in the report's order. Only these are read.
COLUMNS: dict[str, str] = {
    "ledger_id": "id",
    "procedure_id": "procedure_id",
    "participant_id": "participant_id",
    "mrn": "mrn",
    "accession_number": "accession_number",
    "study_date": "study_date",
    "manifest_study_uid": "study_uid",
    "found_study_uid": "found_study_uid",
    "expanded_from": "expanded_from",
    "status": "status",
    "source": "source",
    "expected_instances": "expected_instances",
    "received_instances": "received_instances",
    "exported_instances": "exported_instances",
    "pseudo_patient_id": "pseudo_patient_id",
    "pseudo_study_uid": "pseudo_study_uid",
    "attempts": "attempts",
    "error_type": "error_type",
    "reason": "last_error",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "exported_at": "exported_at",
}
_TIMES = ("created_at", "updated_at", "exported_at")
_COUNTS = ("ledger_id", "expanded_from", "expected_instances", "received_instances")
_COUNTS += ("exported_instances", "attempts")


def study_report(session: Session, project: str) -> pd.DataFrame:
    """One row per ledger study of ``project``, in ledger order (see :data:`COLUMNS`).

    Raises :class:`ConfigError` naming the projects the ledger knows when it has no
    study of ``project`` (a typo would otherwise write an empty file).
    """
    columns = [getattr(Study, name) for name in COLUMNS.values()]
    query = select(*columns).where(Study.project == project).order_by(Study.id)
    frame = pd.DataFrame(session.execute(query).all(), columns=list(COLUMNS))
    if frame.empty:
        known = sorted(session.scalars(select(Study.project).distinct()))
        raise ConfigError(
            f"the ledger has no studies of project {project!r} (it knows: "
            f"{', '.join(known) or 'none yet'}); pass one of those slugs to --project"
        )
    for column in _TIMES:  # SQLite gives back naive datetimes: utc=True reads them as UTC,
        frame[column] = pd.to_datetime(frame[column], utc=True)  # which the ledger writes
    for column in _COUNTS:
        frame[column] = frame[column].astype("Int64")
    frame["study_date"] = pd.to_datetime(frame["study_date"]).dt.date
    for column in set(COLUMNS) - set(_TIMES) - set(_COUNTS) - {"study_date"}:
        frame[column] = frame[column].astype("string")
    return frame


def write_report(frame: pd.DataFrame, path: Path, fmt: ReportFormat) -> Path:
    """Write ``frame`` to ``path`` as CSV or parquet, replacing an older file atomically.

    The file is created readable by its owner only (mode 0600): it holds identifiers.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        if fmt == ReportFormat.PARQUET:
            frame.to_parquet(out, index=False)
        else:
            frame.to_csv(out, index=False)
    os.replace(partial, path)
    return path
