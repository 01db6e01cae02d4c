"""The ledger as the queue: studies are claimed, worked on under a lease, and handed on.

Every worker process, in every flow run, on every machine, takes its next study with
:func:`claim_next`. One statement picks and takes it (``UPDATE ... WHERE id = (SELECT ...
FOR UPDATE SKIP LOCKED) RETURNING``; SQLite runs each statement alone), so two runs never
work on one study. A claim is a lease: the owning process renews it (:func:`renew`), and a
killed process's studies become claimable again when it runs out, or at once when the
owner is known to be gone (:func:`release_dead`).

A study's ``source_index`` says which of its project's sources it waits for: a lane for
source *i* claims only studies at *i*; "not there" moves a study on (:func:`pass_on`). A
transient failure puts the study back with a delay (:func:`defer`) instead of sleeping
with the source's slot held. A study that failed in a pull is not claimed again by that
pull (``pull`` records who tried); the next pull picks it up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection

from sqlalchemy import and_, case, func, not_, or_, select, update
from sqlalchemy.orm import Session

from pacsflow.ledger.models import FINAL, WORK_TO_DO, Study, StudyStatus
from pacsflow.processes import process_is_gone

#: How long a claim holds without renewal. The owner renews it every third of this.
DEFAULT_LEASE = dt.timedelta(seconds=60)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _claimable(project: str, pull: str, now: dt.datetime):
    """Waiting for some source, free (no live lease), and not failed in this pull."""
    return and_(
        Study.project == project,
        Study.status.in_([s.value for s in WORK_TO_DO]),
        or_(Study.claim_expires.is_(None), Study.claim_expires < now),
        # Failed in this pull already: the next pull tries again, not this one.
        not_(and_(Study.status == StudyStatus.FAILED.value, Study.pull == pull)),
    )


def claim_next(
    session: Session,
    project: str,
    source_index: int,
    owner: str,
    pull: str,
    lease: dt.timedelta = DEFAULT_LEASE,
) -> Study | None:
    """Take the project's next study waiting for source ``source_index``; None if none is.

    The study becomes ``retrieving``, held by ``owner`` until the lease ends.
    """
    now = _now()
    return _take(
        session,
        and_(_claimable(project, pull, now), Study.source_index == source_index),
        Study.id,
        status=StudyStatus.RETRIEVING.value,
        claimed_by=owner,
        claim_expires=now + lease,
        attempts=Study.attempts + 1,
        # A new pull starts the retry budget again.
        tries=case((Study.pull == pull, Study.tries + 1), else_=1),
        pull=pull,
        last_error=None,
        error_type=None,
    )


def _take(session: Session, condition, order, **values: object) -> Study | None:
    """Set ``values`` on the first study by ``order`` that meets ``condition``, in one
    statement, and return it; None if no study does."""
    candidate = select(Study.id).where(condition).order_by(order).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    statement = (
        update(Study)
        # The condition again: on PostgreSQL a row changed meanwhile is re-checked.
        .where(Study.id == candidate.scalar_subquery(), condition)
        .values(**values)
        .returning(Study.id)
        .execution_options(synchronize_session=False)
    )
    study_id = session.execute(statement).scalar_one_or_none()
    session.commit()
    if study_id is None:
        return None
    return session.get(Study, study_id, populate_existing=True)


def claim_to_scout(
    session: Session,
    project: str,
    source_index: int,
    owner: str,
    pull: str,
    below: int | None = None,
    lease: dt.timedelta = DEFAULT_LEASE,
) -> Study | None:
    """Take the project's last study (highest id, under ``below``) waiting for source
    ``source_index``, only to ask that source whether it holds it; None if none is.

    Unlike :func:`claim_next` this is not an attempt: status, tries and pull stay as they
    are, so a study scouted and given back (:func:`unclaim`) is as it was. Lanes claim
    from the lowest id, scouting from the highest, so they meet instead of competing.
    """
    now = _now()
    condition = and_(_claimable(project, pull, now), Study.source_index == source_index)
    if below is not None:
        condition = and_(condition, Study.id < below)
    return _take(session, condition, Study.id.desc(), claimed_by=owner, claim_expires=now + lease)


def unclaim(session: Session, study_id: int, owner: str) -> None:
    """Give back a study taken by :func:`claim_to_scout`, claimable again at once."""
    _change(session, study_id, owner, claimed_by=None, claim_expires=None)


def renew(session: Session, owner: str, lease: dt.timedelta = DEFAULT_LEASE) -> int:
    """Extend every claim ``owner`` holds; returns how many it holds."""
    result = session.execute(
        update(Study)
        .where(Study.claimed_by == owner, Study.status.notin_([s.value for s in FINAL]))
        .values(claim_expires=_now() + lease)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount


def _held(study_id: int, owner: str):
    return and_(Study.id == study_id, Study.claimed_by == owner)


def _change(session: Session, study_id: int, owner: str, **values: object) -> None:
    """Apply one transition to a study ``owner`` holds; a lost claim is an error."""
    result = session.execute(
        update(Study)
        .where(_held(study_id, owner))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        raise ClaimLost(
            f"study {study_id} is no longer held by this worker (its lease ran out and "
            "another worker took it); this worker leaves it alone"
        )


class ClaimLost(RuntimeError):
    """The lease on a study ran out while this worker still worked on it."""


def defer(
    session: Session,
    study_id: int,
    owner: str,
    delay: float,
    reason: str | None = None,
    error_type: str | None = None,
) -> None:
    """Give the study back, claimable again after ``delay`` seconds (a transient failure).

    ``reason`` and ``error_type`` say why while it waits (``pacsflow status`` during a
    source outage); the next claim clears them.
    """
    _change(
        session,
        study_id,
        owner,
        claimed_by=None,
        claim_expires=_now() + dt.timedelta(seconds=delay),
        last_error=reason[:2000] if reason else None,
        error_type=error_type,
    )


def pass_on(session: Session, study_id: int, owner: str, n_sources: int) -> StudyStatus:
    """The source answered "not there": wait for the next source, or end ``not_found``."""
    study = session.get(Study, study_id, populate_existing=True)
    if study is None:
        raise LookupError(f"no study with ledger id {study_id}")
    if study.source_index + 1 < n_sources:
        _change(
            session,
            study_id,
            owner,
            source_index=study.source_index + 1,
            tries=0,
            claimed_by=None,
            claim_expires=None,
        )
        return StudyStatus.RETRIEVING
    _change(
        session,
        study_id,
        owner,
        status=StudyStatus.NOT_FOUND.value,
        source=None,
        error_type="not_found",  # pacsflow.failures.ErrorClass.NOT_FOUND
        claimed_by=None,
        claim_expires=None,
    )
    return StudyStatus.NOT_FOUND


def release(session: Session, owner: str) -> int:
    """Give back every unfinished study ``owner`` holds (a run that stops early)."""
    return _release_held(session, owner)


def release_orphans(
    session: Session, owner: str, project: str, pull: str, keep: Collection[int] = ()
) -> int:
    """Give back the studies of ``pull`` that ``owner`` holds, except ``keep``; how many.

    For a run with no retrieval lane left: a claim it still holds, other than a study its
    export lanes have in hand, belongs to a lane that failed. That lane cannot give it
    back (a ledger cut off mid-claim may commit the claim and lose the answer), and the
    run's own lease renewals would keep it held for as long as the process lives.
    """
    return _release_held(
        session,
        owner,
        Study.project == project,
        Study.pull == pull,
        Study.id.notin_(list(keep)),
    )


def _release_held(session: Session, owner: str, *conditions) -> int:
    """End ``owner``'s claims on its unfinished studies that meet ``conditions``."""
    result = session.execute(
        update(Study)
        .where(
            Study.claimed_by == owner,
            Study.status.notin_([s.value for s in FINAL]),
            *conditions,
        )
        .values(claimed_by=None, claim_expires=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount


def release_dead(
    session: Session, project: str, is_gone: Callable[[str], bool] = process_is_gone
) -> int:
    """Release the project's studies held by processes that are gone; returns how many."""
    owners = session.scalars(
        select(Study.claimed_by)
        .where(Study.project == project, Study.claimed_by.is_not(None))
        .distinct()
    ).all()
    released = 0
    for owner in owners:
        if is_gone(owner):
            released += release(session, owner)
    return released


def claimable_counts(session: Session, project: str, pull: str) -> dict[int, int]:
    """Studies claimable now, per source index (what lanes could start on)."""
    query = (
        select(Study.source_index, func.count())
        .where(_claimable(project, pull, _now()))
        .group_by(Study.source_index)
    )
    return {index: n for index, n in session.execute(query)}


def next_deferred(session: Session, project: str) -> dt.datetime | None:
    """When the earliest deferred study (given back with a delay) becomes claimable."""
    return session.scalar(
        select(func.min(Study.claim_expires)).where(
            Study.project == project,
            Study.claimed_by.is_(None),
            Study.claim_expires.is_not(None),
            Study.status.in_([s.value for s in WORK_TO_DO]),
        )
    )
