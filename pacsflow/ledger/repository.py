"""What flows do to the ledger, as plain functions over an injected ``Session``."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pacsflow.errors import PermanentError
from pacsflow.ledger.ingest import IngestResult, ingest_manifest  # noqa: F401 (callers use repo.)
from pacsflow.ledger.models import FINAL, WORK_TO_DO, Project, Study, StudyStatus


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


def error_class_counts(
    session: Session, project: str, pull: str | None = None
) -> list[tuple[str, str, int]]:
    """(status, error class, studies) of the project's studies that carry an error class
    (see :class:`pacsflow.failures.ErrorClass`), or of one pull's only.

    Deferred studies count too: while a source is down they wait as ``retrieving`` with
    class ``transient``. Error classes hold no identifiers, so they may be shown in Prefect.
    """
    condition = and_(Study.project == project, Study.error_type.is_not(None))
    if pull is not None:
        condition = and_(condition, Study.pull == pull)
    query = (
        select(Study.status, Study.error_type, func.count())
        .where(condition)
        .group_by(Study.status, Study.error_type)
        .order_by(Study.status, Study.error_type)
    )
    return [(str(status), str(kind), n) for status, kind, n in session.execute(query)]


#: Final statuses a person must look at: the study was not exported and will not be by itself.
NEEDS_ATTENTION = (
    StudyStatus.FAILED,
    StudyStatus.QUARANTINED,
    StudyStatus.AMBIGUOUS,
    StudyStatus.PARTIAL,
)


def pull_failures(session: Session, project: str, pull: str, limit: int = 200) -> list[tuple]:
    """(ledger id, status, error type) of the pull's studies that failed, were
    quarantined, ambiguous or partial.

    Error types hold no identifiers (see pacsflow.failures), so they may be shown in Prefect.
    """
    query = (
        select(Study.id, Study.status, Study.error_type)
        .where(
            Study.project == project,
            Study.pull == pull,
            Study.status.in_([s.value for s in NEEDS_ATTENTION]),
        )
        .order_by(Study.id)
        .limit(limit)
    )
    return [tuple(row) for row in session.execute(query)]


def pull_reason_counts(session: Session, project: str, pull: str) -> list[tuple[str, str, int]]:
    """(status, error type, studies) of the pull's studies that failed, were quarantined
    or were ambiguous, most frequent first.

    Error types hold no identifiers (see pacsflow.failures), so they may be shown in Prefect.
    """
    query = (
        select(Study.status, Study.error_type, func.count())
        .where(
            Study.project == project,
            Study.pull == pull,
            Study.status.in_([s.value for s in NEEDS_ATTENTION]),
        )
        .group_by(Study.status, Study.error_type)
        .order_by(func.count().desc(), Study.status, Study.error_type)
    )
    return [(str(status), error or "", n) for status, error, n in session.execute(query)]


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


def mark_exported(
    session: Session, study_id: int, exported_instances: int, shortfall: str | None = None
) -> None:
    """End the study ``exported``. ``shortfall``: why a partial study (allowed by its
    project) lacks instances; it is kept as the reason, with ``error_type="partial"``, so
    `pacsflow status` can tell such an export from a complete one."""
    update_study(
        session,
        study_id,
        status=StudyStatus.EXPORTED,
        exported_instances=exported_instances,
        exported_at=dt.datetime.now(dt.UTC),
        last_error=shortfall,
        error_type="partial" if shortfall else None,
    )


def mark_partial(session: Session, study_id: int, reason: str) -> None:
    """End the study ``partial``: instances are still missing after the re-fetches, and
    its project does not export partial studies. ``reason`` gives both counts (no
    identifiers); ``expected_instances`` and ``received_instances`` hold them."""
    update_study(
        session,
        study_id,
        status=StudyStatus.PARTIAL,
        last_error=reason,
        error_type="partial",
    )


def partially_exported(session: Session, project: str) -> list[tuple[int, str]]:
    """(ledger id, reason) of the project's studies exported with instances missing."""
    query = (
        select(Study)
        .where(
            Study.project == project,
            Study.status == StudyStatus.EXPORTED,
            Study.error_type == "partial",
        )
        .order_by(Study.id)
    )
    return [(study.id, _redacted(study)) for study in session.scalars(query)]


def mark_ambiguous(session: Session, study_id: int, source: str, reason: str) -> None:
    """End the study ``ambiguous``: ``source`` holds it, but not as exactly one study.

    ``reason`` comes from :func:`pacsflow.dicom.matching.choose`: counts and dates, no
    identifiers. The study is not tried at another source (see ``pipeline.locate``).
    """
    update_study(
        session,
        study_id,
        status=StudyStatus.AMBIGUOUS,
        source=source,
        found_study_uid=None,
        last_error=reason,
        error_type="ambiguous",
    )


def expand(session: Session, study_id: int, source: str, study_uids: list[str]) -> int:
    """Turn one manifest row into one row per study it matched (ambiguity policy ``all``).

    Why rows, not a list on the one row: everything that follows a study (its claim and
    lease, found UID, instance counts, pseudonyms, export record and the Prefect cache
    key on its ``ref``) is per study, so each matched study gets its own row and the rest
    of pacsflow needs no change. A new row copies the manifest row's identifiers and date,
    gets its ``study_uid`` (unique per project, so a rerun or a later manifest naming the
    study by UID never adds it twice), waits for the same ``source``'s lanes, and points
    back with ``expanded_from``. The manifest row ends ``expanded``, in the same
    transaction, so a killed run leaves either no new rows or all of them. Returns how
    many rows were added (a study the project already has is not added again).
    """
    parent = get_study(session, study_id)
    known = set(
        session.scalars(
            select(Study.study_uid).where(
                Study.project == parent.project, Study.study_uid.in_(study_uids)
            )
        )
    )
    added = [uid for uid in dict.fromkeys(study_uids) if uid not in known]
    for uid in added:
        session.add(
            Study(
                project=parent.project,
                mrn=parent.mrn,
                accession_number=parent.accession_number,
                study_date=parent.study_date,
                study_uid=uid,
                participant_id=parent.participant_id,
                procedure_id=parent.procedure_id,
                expanded_from=parent.id,
                source_index=parent.source_index,
            )
        )
    parent.status = StudyStatus.EXPANDED
    parent.source = source
    parent.last_error = (
        f"{len(study_uids)} studies match; policy all retrieves each as its own row "
        f"({len(added)} added)"
    )
    parent.error_type = None
    parent.claimed_by = parent.claim_expires = None
    session.commit()
    return len(added)


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
    row = _project_row(session, project)
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
    row = _project_row(session, project)
    row.profile_fingerprint = fingerprint
    session.commit()


def _project_row(session: Session, project: str) -> Project:
    """The project's row, created if missing.

    Two runs of a new project start together (the UI, a schedule): both find no row and
    insert; the loser's insert fails on the primary key and it reads the winner's row.
    """
    row = session.get(Project, project)
    if row is not None:
        return row
    session.add(Project(name=project))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
    return session.get(Project, project)


#: Final statuses a user may send back to the queue (exported never: it is done).
REQUEUEABLE = (
    StudyStatus.NOT_FOUND,
    StudyStatus.EXCLUDED,
    StudyStatus.QUARANTINED,
    StudyStatus.AMBIGUOUS,
    StudyStatus.PARTIAL,
)


def requeue(session: Session, project: str, status: StudyStatus) -> int:
    """Set the project's studies in ``status`` back to pending; returns how many.

    For a quarantined study after its profile was fixed, a not-found one that may since
    have reached the PACS, an excluded one after the filters changed, an ambiguous one
    after the project's ambiguity policy changed, or a partial one once the source holds
    (or the project accepts) what was missing.
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
