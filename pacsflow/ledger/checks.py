"""What a pre-flight check reads from and writes to the ledger (see :mod:`pacsflow.check`).

A check never changes a study's place in the queue (status, ``source_index``, claims):
it records what the sources said, in the ``check_*`` columns and, for a study it found,
in ``source``, ``found_study_uid`` and ``expected_instances``, as the extraction's own
C-FIND would. It writes only to studies still to do that no worker holds, so a check
running beside an extraction never overwrites what a lane is working on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from pacsflow.ledger.models import WORK_TO_DO, Study

if TYPE_CHECKING:  # pandas, which pacsflow.manifest imports, is no run-time need here
    from pacsflow.manifest import ManifestRow

#: Ids per ``IN`` list, well below SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def manifest_studies(
    session: Session, project: str, rows: Iterable[ManifestRow]
) -> tuple[list[int], int]:
    """The ledger ids of the manifest's rows still to do, and how many rows are done.

    A row is its study by UID or by MRN plus accession number, as in ingest; rows that an
    ambiguity policy ``all`` expanded into are not manifest rows and are left out.
    """
    by_uid: dict[str, tuple[int, str]] = {}
    by_accession: dict[tuple[str, str], tuple[int, str]] = {}
    query = select(
        Study.id, Study.status, Study.study_uid, Study.mrn, Study.accession_number
    ).where(Study.project == project, Study.expanded_from.is_(None))
    for study_id, status, uid, mrn, accession in session.execute(query):
        if uid:
            by_uid[uid] = (study_id, str(status))
        if mrn and accession:
            by_accession[(mrn, accession)] = (study_id, str(status))
    to_do = {s.value for s in WORK_TO_DO}
    ids: dict[int, None] = {}  # ordered and without repeats: two rows may name one study
    done: set[int] = set()
    for row in rows:
        hit = by_uid.get(row.study_uid or "") or by_accession.get(
            (row.mrn or "", row.accession_number or "")
        )
        if hit is None:  # ingested just before, so this is not expected
            continue
        study_id, status = hit
        if status in to_do:
            ids[study_id] = None
        else:
            done.add(study_id)
    return list(ids), len(done)


def _writable(study_id: int, now: dt.datetime):
    """Still to do, and held by no worker (or by one whose lease ran out)."""
    return and_(
        Study.id == study_id,
        Study.status.in_([s.value for s in WORK_TO_DO]),
        or_(Study.claimed_by.is_(None), Study.claim_expires < now),
    )


def record_check(
    session: Session,
    study_id: int,
    result: str,
    *,
    source: str | None = None,
    found_study_uid: str | None = None,
    expected_instances: int | None = None,
    detail: str | None = None,
) -> bool:
    """Record one study's check; False (nothing written) if a worker holds it or it is done.

    ``source`` is where the study was found (or found ambiguous); for any other result
    the found study and its instance count are cleared, so the row never pairs this
    check's result with an earlier attempt's study.
    """
    now = _now()
    outcome = session.execute(
        update(Study)
        .where(_writable(study_id, now))
        .values(
            check_result=result,
            checked_at=now,
            check_detail=detail,
            source=source,
            found_study_uid=found_study_uid,
            expected_instances=expected_instances,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return outcome.rowcount == 1


def record_unchecked(session: Session, study_ids: list[int], result: str, detail: str) -> int:
    """Record that the studies were not asked (a closed window, a source that is down).

    Only the ``check_*`` columns change: what an earlier check or attempt found stays.
    Returns how many were written.
    """
    now = _now()
    written = 0
    for start in range(0, len(study_ids), _CHUNK):
        chunk = study_ids[start : start + _CHUNK]
        outcome = session.execute(
            update(Study)
            .where(
                Study.id.in_(chunk),
                Study.status.in_([s.value for s in WORK_TO_DO]),
                or_(Study.claimed_by.is_(None), Study.claim_expires < now),
            )
            .values(check_result=result, checked_at=now, check_detail=detail)
            .execution_options(synchronize_session=False)
        )
        written += outcome.rowcount
    session.commit()
    return written


def studies_with_results(
    session: Session, study_ids: list[int], results: list[str]
) -> list[tuple[int, str]]:
    """(ledger id, check result) of those of ``study_ids`` whose last check is in ``results``."""
    found: list[tuple[int, str]] = []
    for start in range(0, len(study_ids), _CHUNK):
        query = select(Study.id, Study.check_result).where(
            Study.id.in_(study_ids[start : start + _CHUNK]), Study.check_result.in_(results)
        )
        found += [(study_id, str(result)) for study_id, result in session.execute(query)]
    return sorted(found)
