"""Ledger tables, SQLAlchemy 2 style. Schema changes go through Alembic migrations."""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum

from sqlalchemy import Date, DateTime, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class StudyStatus(StrEnum):
    """Where a requested study is.

    Final: ``exported``; ``not_found`` (no source holds it); ``excluded`` (the project's
    filters kept none of its series); ``quarantined`` (the PHI gate found identifiers in
    the de-identified output, so nothing was exported: the profile needs fixing).
    ``failed`` studies are picked up again by the next run.
    """

    PENDING = "pending"
    RETRIEVING = "retrieving"
    EXPORTED = "exported"
    NOT_FOUND = "not_found"
    EXCLUDED = "excluded"
    QUARANTINED = "quarantined"
    FAILED = "failed"


#: Statuses a run picks up: new rows, rows a killed run left mid-way, earlier failures.
WORK_TO_DO = (StudyStatus.PENDING, StudyStatus.RETRIEVING, StudyStatus.FAILED)


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Study(Base):
    """One requested study of one project: the manifest's identifiers and its progress."""

    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("project", "mrn", "accession_number", name="uq_study_project_accession"),
        UniqueConstraint("project", "study_uid", name="uq_study_project_uid"),
        UniqueConstraint("ref", name="uq_study_ref"),
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
    last_error: Mapped[str | None] = mapped_column(Text)

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
