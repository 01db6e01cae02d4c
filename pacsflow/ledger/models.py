"""Ledger tables, SQLAlchemy 2 style. Schema changes go through Alembic migrations."""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class StudyStatus(StrEnum):
    """Where a requested study is.

    Final: ``exported``; ``not_found`` (no source holds it); ``excluded`` (the project's
    filters kept none of its series); ``quarantined`` (the PHI gate found identifiers in
    the de-identified output, so nothing was exported: the profile needs fixing);
    ``ambiguous`` (a source holds several studies for the row, or one on another date,
    and the project's ambiguity policy took none: the manifest row needs a study UID);
    ``expanded`` (the policy ``all`` took every match: each became a row of its own,
    see :func:`pacsflow.ledger.repository.expand`); ``partial`` (fewer instances
    arrived than the source announced, even after fetching the missing ones again, and
    the project does not export partial studies: ``expected_instances`` and
    ``received_instances`` say how many; nothing was exported).
    ``failed`` studies are picked up again by the next run.
    """

    PENDING = "pending"
    RETRIEVING = "retrieving"
    EXPORTED = "exported"
    NOT_FOUND = "not_found"
    EXCLUDED = "excluded"
    QUARANTINED = "quarantined"
    AMBIGUOUS = "ambiguous"
    EXPANDED = "expanded"
    PARTIAL = "partial"
    FAILED = "failed"


#: Statuses a run picks up: new rows, rows a killed run left mid-way, earlier failures.
WORK_TO_DO = (StudyStatus.PENDING, StudyStatus.RETRIEVING, StudyStatus.FAILED)
#: Statuses that end an attempt (``failed`` ends it too, but is work to do for the next).
FINAL = (
    StudyStatus.EXPORTED,
    StudyStatus.NOT_FOUND,
    StudyStatus.EXCLUDED,
    StudyStatus.QUARANTINED,
    StudyStatus.AMBIGUOUS,
    StudyStatus.EXPANDED,
    StudyStatus.PARTIAL,
    StudyStatus.FAILED,
)


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Study(Base):
    """One requested study of one project: the manifest's identifiers and its progress."""

    __tablename__ = "studies"
    __table_args__ = (
        # One manifest row per MRN and accession; the rows a row was expanded into share
        # them (each is told apart by its study UID), so they are left out of this one.
        Index(
            "uq_study_project_accession",
            "project",
            "mrn",
            "accession_number",
            unique=True,
            sqlite_where=text("expanded_from IS NULL"),
            postgresql_where=text("expanded_from IS NULL"),
        ),
        UniqueConstraint("project", "study_uid", name="uq_study_project_uid"),
        UniqueConstraint("ref", name="uq_study_ref"),
        Index("ix_studies_claimable", "project", "source_index", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    #: A random handle, unique across ledgers: safe to hash into Prefect cache keys.
    ref: Mapped[str] = mapped_column(String(32), default=lambda: uuid.uuid4().hex)

    # What the manifest asked for (identifiers: never leave the ledger).
    mrn: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[dt.date | None] = mapped_column(Date)
    study_uid: Mapped[str | None] = mapped_column(String(64))
    participant_id: Mapped[str | None] = mapped_column(String(64))
    procedure_id: Mapped[str | None] = mapped_column(String(64))
    #: The row this one was expanded from (ambiguity policy ``all``); None for a
    #: manifest's own row.
    expanded_from: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", name="fk_study_expanded_from")
    )

    # Progress.
    status: Mapped[StudyStatus] = mapped_column(String(16), default=StudyStatus.PENDING, index=True)
    source: Mapped[str | None] = mapped_column(String(64))
    found_study_uid: Mapped[str | None] = mapped_column(String(64))
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    received_instances: Mapped[int | None] = mapped_column(Integer)
    exported_instances: Mapped[int | None] = mapped_column(Integer)
    pseudo_patient_id: Mapped[str | None] = mapped_column(String(64))
    pseudo_study_uid: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The full reason of the last failure; may quote a library's message: ledger only.
    last_error: Mapped[str | None] = mapped_column(Text)
    #: What kind of failure (an exception type, "step: type" for a library's): no
    #: identifiers, so it may be shown in Prefect.
    error_type: Mapped[str | None] = mapped_column(String(64))

    # The queue (see pacsflow.ledger.claims).
    #: Position in the project's sources of the one to ask next (0: the primary).
    source_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Which worker process holds the study, and until when (a lease it renews).
    claimed_by: Mapped[str | None] = mapped_column(String(96))
    claim_expires: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: The pull (one extraction of the project) that last attempted the study.
    pull: Mapped[str | None] = mapped_column(String(32))
    #: Attempts at the current source in that pull (its retry budget is the source's).
    tries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    # The last pre-flight check (see pacsflow.check): C-FIND only, nothing retrieved.
    #: Its class (a pacsflow.check.CheckResult value); None if never checked.
    check_result: Mapped[str | None] = mapped_column(String(16))
    checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Why (match counts and study dates): ledger only, like last_error.
    check_detail: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now, server_default=func.now()
    )
    exported_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:  # no identifiers in reprs: they end up in logs
        return f"Study(id={self.id}, project={self.project!r}, status={self.status})"


class Project(Base):
    """Per-project facts that must not silently change between runs."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Keyed fingerprint of the pseudonymisation key (never the key): a changed key would
    #: give the same patients new pseudonyms, breaking every earlier export's linkage.
    key_fingerprint: Mapped[str | None] = mapped_column(String(64))
    profile_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )
