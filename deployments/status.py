"""What ``pacsflow status`` lists about unfinished studies: ledger ids, masked identifiers.

The person at the terminal needs to recognise a study (``12****89``) and to look it up
in the ledger by id; a full MRN or accession number on a screen or in a pasted log is
what they must not see. The reasons are masked by :func:`repository.failures`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study, StudyStatus

#: Statuses listed study by study, in this order.
LISTED = (
    StudyStatus.NOT_FOUND,
    StudyStatus.FAILED,
    StudyStatus.QUARANTINED,
    StudyStatus.AMBIGUOUS,
    StudyStatus.PARTIAL,
    StudyStatus.EXCLUDED,
)

#: Said for a study whose status is its whole reason (the flows record none for it).
IMPLIED_REASONS = {
    StudyStatus.NOT_FOUND.value: "no source of the project holds it (C-FIND matched nothing)",
}


def mask(value: str | None) -> str:
    """``12345689`` -> ``12****89``: two characters kept at each end of six or more."""
    if not value:
        return ""
    if len(value) < 6:
        return "*" * len(value)
    return value[:2] + "*" * (len(value) - 4) + value[-2:]


@dataclass(frozen=True)
class StudyLine:
    """One listed study: ledger id, status, masked MRN and accession, masked reason."""

    id: int
    status: str
    mrn: str
    accession: str
    reason: str


def listed_studies(session, project: str) -> list[StudyLine]:
    """The project's not-found, failed, quarantined and excluded studies, masked."""
    reasons = {study_id: reason for study_id, reason in repo.failures(session, project, LISTED)}
    query = (
        select(Study)
        .where(Study.project == project, Study.status.in_([s.value for s in LISTED]))
        .order_by(Study.id)
    )
    lines = [
        StudyLine(
            id=study.id,
            status=str(study.status),
            mrn=mask(study.mrn),
            accession=mask(study.accession_number),
            reason=reasons.get(study.id) or IMPLIED_REASONS.get(str(study.status), ""),
        )
        for study in session.scalars(query)
    ]
    order = {status.value: i for i, status in enumerate(LISTED)}
    return sorted(lines, key=lambda line: (order[line.status], line.id))
