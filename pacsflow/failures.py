"""What to do with a study whose step raised, and what may be said about it in Prefect.

Our own errors (:class:`PacsflowError`) are written without identifiers. Other
libraries' are not: a pydicom error can quote a patient's name, a SQLAlchemy error its
SQL parameters, an MRN among them. So the full text goes to the ledger only, and what
Prefect may log or show is the step, the exception type and the study's error class.

**Error classes** (:class:`ErrorClass`, the ledger's ``error_type``) tell a user what to
do about a study without reading its reason: a ``transient`` failure needs nothing but
the next pull; ``source_rejected`` needs the source's administrator; ``deid_failed`` the
project's profile; ``export_failed`` the destination.

A retriable error puts the study back with the source's next retry delay, stretched or
shrunk at random by up to :data:`JITTER` (see :func:`jittered`), while tries remain (see
:func:`pacsflow.ledger.claims.defer`): the worker goes on with other studies instead of
sleeping with the source's slot held. Otherwise the study fails, with its reason, and
the next pull tries it again.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from pacsflow.dicom.integrity import CorruptInstance
from pacsflow.errors import PacsflowError, RetriableError
from pacsflow.ledger import claims
from pacsflow.ledger import repository as repo


class ErrorClass(StrEnum):
    """Why a study did not end exported, as the ledger's ``error_type`` records it.

    Other classes are written where their status is decided: ``ambiguous``
    (:func:`pacsflow.ledger.repository.mark_ambiguous`), for instance.
    """

    NOT_FOUND = "not_found"  #: no source holds it (the last source answered "no match")
    TRANSIENT = "transient"  #: a source or destination down, a timeout: a rerun may cure it
    SOURCE_REJECTED = "source_rejected"  #: the source refused or failed the request for good
    DEID_FAILED = "deid_failed"  #: filtering, de-identification or the PHI checks raised
    EXPORT_FAILED = "export_failed"  #: the destination refused the study for good


class Step(StrEnum):
    """The steps whose failures :func:`describe` classifies."""

    FIND = "find"
    FETCH = "fetch"
    DEIDENTIFY = "de-identify"
    EXPORT = "export"


#: Largest fraction by which a retry delay is changed at random (0.25: 75% to 125%).
#: Without it, the studies a source outage interrupted together all come back together
#: and hit the source in one burst the moment it returns.
JITTER = 0.25

_SOURCE_STEPS = (Step.FIND, Step.FETCH)


@dataclass(frozen=True)
class Failure:
    """One failed step of one study."""

    error_type: str  #: no identifiers: the study's :class:`ErrorClass`
    public: str  #: no identifiers: safe for Prefect's logs and artifacts
    detail: str  #: the full text, for the ledger only
    retriable: bool


@contextmanager
def during(step: Step) -> Iterator[None]:
    """Mark exceptions raised inside the block as failures of ``step``.

    For code that runs several steps under one ``describe`` call (the export lane runs
    de-identification, then the export): an exception that escapes is classified by the
    innermost step it was raised in.
    """
    try:
        yield
    except Exception as exc:
        if not hasattr(exc, "_pacsflow_step"):
            exc._pacsflow_step = step  # type: ignore[attr-defined]
        raise


def _retriable(exc: BaseException) -> bool:
    """Our retriable errors, and the ledger's database down or restarting (a statement
    that was running when PostgreSQL went: the next connection waits for it, see
    :func:`pacsflow.ledger.database.make_engine`)."""
    return isinstance(exc, RetriableError | OperationalError)


def classify(step: str, exc: BaseException) -> ErrorClass:
    """The error class of ``exc`` raised in ``step`` (see :class:`ErrorClass`)."""
    step = getattr(exc, "_pacsflow_step", step)
    if _retriable(exc):
        return ErrorClass.TRANSIENT
    if step in _SOURCE_STEPS or isinstance(exc, CorruptInstance):  # the source sent it so
        return ErrorClass.SOURCE_REJECTED
    if step == Step.EXPORT:
        return ErrorClass.EXPORT_FAILED
    return ErrorClass.DEID_FAILED


def describe(step: str, exc: BaseException) -> Failure:
    """The failure of ``exc`` in ``step``: its class, what Prefect may show, the full text."""
    step = getattr(exc, "_pacsflow_step", step)
    kind = type(exc).__name__
    error_class = classify(step, exc).value
    if isinstance(exc, PacsflowError):
        return Failure(
            error_class, f"{kind}: {exc}", f"{kind}: {exc}", isinstance(exc, RetriableError)
        )
    return Failure(
        error_class,
        f"{step} failed with {kind}; the reason is in the ledger (`pacsflow status`)",
        f"{step}: {kind}: {exc}",
        retriable=_retriable(exc),
    )


def jittered(delay: float, rng: random.Random | None = None, jitter: float = JITTER) -> float:
    """``delay`` seconds changed at random by up to ``jitter`` of itself, either way."""
    rng = rng or random
    return delay * (1 + rng.uniform(-jitter, jitter))


def record(
    session: Session,
    study_id: int,
    owner: str,
    failure: Failure,
    tries: int,
    retry_delays: list[float],
    rng: random.Random | None = None,
) -> float | None:
    """Defer the study for another try, or fail it.

    Returns the delay in seconds after which the study is tried again, or None when it
    failed. ``tries`` counts this pull's attempts at the study's current source, this one
    included: the n-th try waits about ``retry_delays[n - 1]`` (backoff, when the delays
    grow), within :data:`JITTER` of it. ``rng`` makes the jitter reproducible in tests.
    """
    if failure.retriable and tries <= len(retry_delays):
        delay = jittered(retry_delays[tries - 1], rng)
        claims.defer(session, study_id, owner, delay, failure.detail, failure.error_type)
        return delay
    repo.mark_failed(session, study_id, failure.detail, failure.error_type)
    return None
