"""What flows do to the ledger, as plain functions over an injected ``Session``."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from pacsflow.errors import PermanentError
from pacsflow.ledger.models import FINAL, WORK_TO_DO, Project, Study, StudyStatus
from pacsflow.manifest import ManifestRow

_CHUNK = 500  # keeps IN (...) lists within every database's parameter limit


@dataclass(frozen=True)
class IngestResult:
    """Counts only: safe to log and to hand to Prefect."""

    added: int
    already_known: int


def _existing_keys(session: Session, project: str, rows: list[ManifestRow]) -> set[tuple]:
    keys: set[tuple] = set()
    uids = [r.study_uid for r in rows if r.study_uid]
    pairs = [(r.mrn, r.accession_number) for r in rows if r.mrn and r.accession_number]
    for start in range(0, len(uids), _CHUNK):
        chunk = uids[start : start + _CHUNK]
        query = select(Study.study_uid).where(Study.project == project, Study.study_uid.in_(chunk))
        keys.update(("uid", uid) for uid in session.scalars(query))
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start : start + _CHUNK]
        query = select(Study.mrn, Study.accession_number).where(
            Study.project == project, tuple_(Study.mrn, Study.accession_number).in_(chunk)
        )
        keys.update(("acc", mrn, acc) for mrn, acc in session.execute(query))
    return keys


def _is_known(row: ManifestRow, known: set[tuple]) -> bool:
    by_uid = row.study_uid is not None and ("uid", row.study_uid) in known
    by_acc = ("acc", row.mrn, row.accession_number) in known
    return by_uid or by_acc


def ingest_manifest(session: Session, project: str, rows: Iterable[ManifestRow]) -> IngestResult:
    """Add the rows the ledger does not know yet; leave known studies exactly as they are.

    A study is known by its study UID or by its MRN plus accession number, whichever
    the earlier manifest gave. All rows are added in one transaction.
    """
    rows = list(rows)
    known = _existing_keys(session, project, rows)
    added = 0
    for row in rows:
        if _is_known(row, known):
            continue
        session.add(
            Study(
                project=project,
                mrn=row.mrn,
                accession_number=row.accession_number,
                study_date=row.study_date,
                study_uid=row.study_uid,
                participant_id=row.participant_id,
                procedure_id=row.procedure_id,
                status=StudyStatus.PENDING,
                attempts=0,
            )
        )
        # A later row may name the same study by its other key (UID vs MRN+accession):
        # without this it would break a unique constraint and fail the whole ingest.
        if row.study_uid:
            known.add(("uid", row.study_uid))
        if row.mrn and row.accession_number:
            known.add(("acc", row.mrn, row.accession_number))
        added += 1
    session.commit()
    return IngestResult(added=added, already_known=len(rows) - added)


def studies_to_process(session: Session, project: str) -> list[tuple[int, str]]:
    """(id, ref) of the project's studies still to do; finished ones are never returned."""
    query = (
        select(Study.id, Study.ref)
        .where(Study.project == project, Study.status.in_([s.value for s in WORK_TO_DO]))
        .order_by(Study.id)
    )
    return [(row.id, row.ref) for row in session.execute(query)]


def count_to_process(session: Session, project: str) -> int:
    """How many of the project's studies a new pull would work on."""
    return session.scalar(
        select(func.count())
        .select_from(Study)
        .where(Study.project == project, Study.status.in_([s.value for s in WORK_TO_DO]))
    )


def pull_counts(session: Session, project: str, pull: str) -> dict[str, int]:
    """The statuses of the studies one pull has attempted (for its progress and report)."""
    query = (
        select(Study.status, func.count())
        .where(Study.project == project, Study.pull == pull)
        .group_by(Study.status)
    )
    return {str(status): n for status, n in session.execute(query)}


def pull_failures(session: Session, project: str, pull: str, limit: int = 200) -> list[tuple]:
    """(ledger id, status, error type) of the pull's studies that did not export.

    Error types hold no identifiers (see pacsflow.failures), so they may be shown in Prefect.
    """
    query = (
        select(Study.id, Study.status, Study.error_type)
        .where(
            Study.project == project,
            Study.pull == pull,
            Study.status.in_([StudyStatus.FAILED.value, StudyStatus.QUARANTINED.value]),
        )
        .order_by(Study.id)
        .limit(limit)
    )
    return [tuple(row) for row in session.execute(query)]


def get_study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise LookupError(f"no study with ledger id {study_id}")
    return study


def status_counts(session: Session, project: str) -> dict[str, int]:
    """Count of the project's studies per status, every status present (zeros included)."""
    query = (
        select(Study.status, func.count()).where(Study.project == project).group_by(Study.status)
    )
    counts = {status.value: 0 for status in StudyStatus}
    counts.update({str(status): n for status, n in session.execute(query)})
    return counts


def source_counts(session: Session, project: str) -> dict[str, int]:
    """Exported studies per source, to show where the fallback was needed."""
    query = (
        select(Study.source, func.count())
        .where(Study.project == project, Study.status == StudyStatus.EXPORTED)
        .group_by(Study.source)
    )
    return {str(source): n for source, n in session.execute(query)}


def update_study(session: Session, study_id: int, **values: object) -> None:
    """Set columns of one study and commit; unknown column names are a programming error.

    A final status also ends the study's claim, so no worker holds a finished study.
    """
    study = get_study(session, study_id)
    if values.get("status") in FINAL:
        values = {"claimed_by": None, "claim_expires": None, **values}
    for name, value in values.items():
        if not hasattr(Study, name):
            raise AttributeError(f"Study has no column {name!r}")
        setattr(study, name, value)
    session.commit()


def start_attempt(session: Session, study_id: int) -> Study:
    study = get_study(session, study_id)
    study.status = StudyStatus.RETRIEVING
    study.attempts = (study.attempts or 0) + 1
    study.last_error = None
    session.commit()
    return study


def mark_exported(session: Session, study_id: int, exported_instances: int) -> None:
    update_study(
        session,
        study_id,
        status=StudyStatus.EXPORTED,
        exported_instances=exported_instances,
        exported_at=dt.datetime.now(dt.UTC),
        last_error=None,
    )


def mark_failed(
    session: Session, study_id: int, reason: str, error_type: str | None = None
) -> None:
    """End the attempt as ``failed``; the next pull starts the study again at the primary.

    ``reason`` may quote a library's message (ledger only); ``error_type`` must not hold
    identifiers: it is what Prefect's reports show.
    """
    update_study(
        session,
        study_id,
        status=StudyStatus.FAILED,
        last_error=reason[:2000],
        error_type=(error_type or "")[:64] or None,
        source_index=0,
    )


def _redacted(study: Study) -> str:
    """The study's reason with its own ledger identifiers masked.

    Our messages carry none, but a library error recorded in full (see
    ``flows/boundary.py``) may quote an MRN or a UID; reports should not.
    """
    reason = study.last_error or ""
    for label, value in (
        ("mrn", study.mrn),
        ("accession", study.accession_number),
        ("study uid", study.study_uid),
        ("study uid", study.found_study_uid),
        ("participant", study.participant_id),
    ):
        if value and len(value) >= 3:
            reason = reason.replace(value, f"<{label}>")
    return reason


def failures(
    session: Session, project: str, statuses: tuple[StudyStatus, ...] = (StudyStatus.FAILED,)
) -> list[tuple[int, str]]:
    """(ledger id, reason) of the project's studies in ``statuses``, identifiers masked."""
    query = (
        select(Study)
        .where(Study.project == project, Study.status.in_([s.value for s in statuses]))
        .order_by(Study.id)
    )
    return [(study.id, _redacted(study)) for study in session.scalars(query)]


class KeyChanged(PermanentError):
    """The project's pseudonymisation key differs from the one its exports were made with."""


def check_project_key(
    session: Session, project: str, fingerprint: str, force: bool = False
) -> None:
    """Record the key's fingerprint; refuse a different key once anything was exported.

    A new key would give the same patients and studies new pseudonyms, so a top-up could
    not be linked to earlier exports. ``force`` accepts the change deliberately.
    """
    row = session.get(Project, project)
    if row is None:
        session.add(Project(name=project, key_fingerprint=fingerprint))
        session.commit()
        return
    if row.key_fingerprint in (None, fingerprint):
        row.key_fingerprint = fingerprint
        session.commit()
        return
    exported = session.scalar(
        select(func.count())
        .select_from(Study)
        .where(Study.project == project, Study.status == StudyStatus.EXPORTED)
    )
    if exported and not force:
        raise KeyChanged(
            f"project {project!r}: the pseudonymisation key is not the one its {exported} "
            "exported studies were made with, so new exports would not link to them. Restore "
            "the original key in the project's Secret block, or pass --force-key-change to "
            "accept new pseudonyms."
        )
    row.key_fingerprint = fingerprint
    session.commit()


def record_profile(session: Session, project: str, fingerprint: str) -> None:
    """Remember which de-identification profile the project's latest run used."""
    row = session.get(Project, project) or Project(name=project)
    row.profile_fingerprint = fingerprint
    session.add(row)
    session.commit()


#: Final statuses a user may send back to the queue (exported never: it is done).
REQUEUEABLE = (StudyStatus.NOT_FOUND, StudyStatus.EXCLUDED, StudyStatus.QUARANTINED)


def requeue(session: Session, project: str, status: StudyStatus) -> int:
    """Set the project's studies in ``status`` back to pending; returns how many.

    For a quarantined study after its profile was fixed, a not-found one that may since
    have reached the PACS, or an excluded one after the filters changed.
    """
    if status not in REQUEUEABLE:
        raise ValueError(
            f"status {status.value!r} cannot be re-queued; choose one of "
            f"{[s.value for s in REQUEUEABLE]}"
        )
    studies = session.scalars(
        select(Study).where(Study.project == project, Study.status == status)
    ).all()
    for study in studies:
        study.status = StudyStatus.PENDING
        study.last_error = None
        # A new handle means a new Prefect cache key: the cached final status of the
        # earlier attempt must not answer for the new one.
        study.ref = uuid.uuid4().hex
    session.commit()
    return len(studies)
