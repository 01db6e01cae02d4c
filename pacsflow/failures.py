"""What to do with a study whose step raised, and what may be said about it in Prefect.

Our own errors (:class:`PacsflowError`) are written without identifiers. Other
libraries' are not: a pydicom error can quote a patient's name, a SQLAlchemy error its
SQL parameters, an MRN among them. So the full text goes to the ledger only, and what
Prefect may log or show is the step and the exception type.

A retriable error puts the study back with the source's next retry delay while tries
remain (see :func:`pacsflow.ledger.claims.defer`): the worker goes on with other studies
instead of sleeping with the source's slot held. Otherwise the study fails, with its
reason, and the next pull tries it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from pacsflow.errors import PacsflowError, RetriableError
from pacsflow.ledger import claims
from pacsflow.ledger import repository as repo


@dataclass(frozen=True)
class Failure:
    """One failed step of one study."""

    error_type: str  #: no identifiers: the exception type, "step: type" for a library's
    public: str  #: no identifiers: safe for Prefect's logs and artifacts
    detail: str  #: the full text, for the ledger only
    retriable: bool


def describe(step: str, exc: BaseException) -> Failure:
    kind = type(exc).__name__
    if isinstance(exc, PacsflowError):
        return Failure(kind, f"{kind}: {exc}", f"{kind}: {exc}", isinstance(exc, RetriableError))
    return Failure(
        f"{step}: {kind}"[:64],
        f"{step} failed with {kind}; the reason is in the ledger (`pacsflow status`)",
        f"{step}: {kind}: {exc}",
        retriable=False,
    )


def record(
    session: Session,
    study_id: int,
    owner: str,
    failure: Failure,
    tries: int,
    retry_delays: list[float],
) -> bool:
    """Defer the study for another try, or fail it; True when it was deferred.

    ``tries`` counts this pull's attempts at the study's current source, this one included.
    """
    if failure.retriable and tries <= len(retry_delays):
        claims.defer(session, study_id, owner, retry_delays[tries - 1])
        return True
    repo.mark_failed(session, study_id, failure.detail, failure.error_type)
    return False
