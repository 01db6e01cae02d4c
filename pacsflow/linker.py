"""The linker table: how the research team joins its manifest rows to the pseudonyms.

One row per exported study of a project, from the ledger: the manifest's
``procedure_id`` (empty when the manifest had none), the pseudonymous patient id, the
pseudonymous study UID and when the study was exported. It never holds an MRN, an
accession number or an original UID: the columns are chosen here, by name, and
nothing else of a ledger row is read. Like PIXL's image linker, it is written as
parquet and sent to the project's destination when that destination takes files.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacsflow.export.protocol import Destination, FileDestination
from pacsflow.ledger.models import Study, StudyStatus

#: The columns of the linker table, in order; nothing else is ever written.
COLUMNS = ("procedure_id", "pseudo_patient_id", "pseudo_study_uid", "exported_at")
FILE_NAME = "linker.parquet"


def linker_table(session: Session, project: str) -> pd.DataFrame:
    """The project's exported studies, one row each, in ledger order."""
    query = (
        select(
            Study.procedure_id, Study.pseudo_patient_id, Study.pseudo_study_uid, Study.exported_at
        )
        .where(Study.project == project, Study.status == StudyStatus.EXPORTED)
        .order_by(Study.id)
    )
    rows = [
        (procedure, patient, study, _utc(exported))
        for procedure, patient, study, exported in session.execute(query)
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["exported_at"] = pd.to_datetime(frame["exported_at"], utc=True)
    for column in COLUMNS[:3]:
        frame[column] = frame[column].astype("string")
    return frame


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite gives back naive datetimes; the ledger writes UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def write_linker(frame: pd.DataFrame, folder: Path) -> Path:
    """Write ``frame`` to ``folder/linker.parquet``, replacing an older one atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FILE_NAME
    partial = folder / f".{FILE_NAME}.{uuid.uuid4().hex[:8]}"
    frame.to_parquet(partial, index=False)
    os.replace(partial, target)
    return target


@dataclass(frozen=True)
class LinkerExport:
    """Where the linker went: the local file, and the destination's copy (None if it
    cannot take files, e.g. a DICOM node)."""

    local: Path
    rows: int
    sent_to: str | None


def export_linker(
    session: Session, project: str, destination: Destination, folder: Path
) -> LinkerExport:
    """Write the project's linker under ``folder`` and send it to ``destination``."""
    frame = linker_table(session, project)
    local = write_linker(frame, folder)
    sent_to = None
    if isinstance(destination, FileDestination):
        sent_to = destination.send_file(local, project)
    return LinkerExport(local, len(frame), sent_to)
