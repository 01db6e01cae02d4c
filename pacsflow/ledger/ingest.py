"""Add a validated manifest's studies to the ledger, in bulk.

A manifest is one transaction of executemany INSERTs of :data:`CHUNK` rows each: ORM
objects one by one cost most of the time and memory of a 100,000-row ingest. Columns the
manifest does not give (``ref``, ``status``, ``attempts``, timestamps, and any column
added later with a default) take the defaults of the :class:`Study` model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from pacsflow.ledger.models import Study

if TYPE_CHECKING:  # not at run time: pacsflow.manifest imports pandas, which a worker
    # process that only retrieves studies never needs (0.3-0.5 s of its start, measured)
    from pacsflow.manifest import ManifestRow

#: Rows per INSERT statement: large enough that round trips do not count, small enough
#: that one batch of parameter dicts stays a few MB.
CHUNK = 5_000


@dataclass(frozen=True)
class IngestResult:
    """Counts only: safe to log and to hand to Prefect."""

    added: int
    already_known: int


@dataclass
class _KnownStudies:
    """The keys a project's studies are known by: study UID, and MRN plus accession."""

    uids: set[str] = field(default_factory=set)
    accessions: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def of_project(cls, session: Session, project: str) -> _KnownStudies:
        """Every key of the project, in one query.

        One scan of the project's rows is cheaper than 500-key ``IN`` lists once a
        manifest has more than a few thousand rows, and keys of 100,000 studies are a
        few MB.
        """
        known = cls()
        query = select(Study.study_uid, Study.mrn, Study.accession_number).where(
            Study.project == project
        )
        for uid, mrn, accession in session.execute(query):
            known.add(uid, mrn, accession)
        return known

    def add(self, uid: str | None, mrn: str | None, accession: str | None) -> None:
        if uid:
            self.uids.add(uid)
        if mrn and accession:
            self.accessions.add((mrn, accession))

    def has(self, row: ManifestRow) -> bool:
        """A study is known by its study UID or by its MRN plus accession, whichever an
        earlier manifest gave."""
        by_uid = row.study_uid is not None and row.study_uid in self.uids
        return by_uid or (row.mrn, row.accession_number) in self.accessions


def _values(project: str, row: ManifestRow) -> dict[str, object]:
    """The columns a manifest row fills; the model's defaults fill the rest."""
    return {
        "project": project,
        "mrn": row.mrn,
        "accession_number": row.accession_number,
        "study_date": row.study_date,
        "study_uid": row.study_uid,
        "participant_id": row.participant_id,
        "procedure_id": row.procedure_id,
    }


def ingest_manifest(session: Session, project: str, rows: Iterable[ManifestRow]) -> IngestResult:
    """Add the rows the ledger does not know yet; leave known studies exactly as they are.

    A study is known by its study UID or by its MRN plus accession number, whichever
    the earlier manifest gave. All rows are added in one transaction, :data:`CHUNK`
    rows per INSERT; each new study gets a fresh random ``ref``.
    """
    known = _KnownStudies.of_project(session, project)
    # Core INSERT on the table, not the ORM's insert(Study): the ORM bulk path asks for
    # every new primary key back, and on SQLite that became one statement per row.
    statement = insert(Study.__table__)
    seen = added = 0
    batch: list[dict[str, object]] = []
    for row in rows:
        seen += 1
        if known.has(row):
            continue
        # A later row may name the same study by its other key (UID vs MRN+accession):
        # without this it would break a unique constraint and fail the whole ingest.
        known.add(row.study_uid, row.mrn, row.accession_number)
        batch.append(_values(project, row))
        if len(batch) == CHUNK:
            session.execute(statement, batch)
            added += len(batch)
            batch = []
    if batch:
        session.execute(statement, batch)
        added += len(batch)
    session.commit()
    return IngestResult(added=added, already_known=seen - added)
