"""The boundary between study processing and Prefect, where patient data must stop.

Our own errors (:class:`PacsflowError`) are written without identifiers. Other
libraries' are not (see :mod:`pacsflow.failures`). Prefect logs a failed task's
exception and may persist it, so such an exception is recorded in full in the ledger
only and replaced by one that names the step and the exception type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pacsflow.errors import PacsflowError, PermanentError
from pacsflow.failures import describe


class StudyStepFailed(PermanentError):
    """A library failed inside a step; the details are in the ledger."""


@contextmanager
def confined(step: str, record: Callable[[str], None] | None = None) -> Iterator[None]:
    """Let PacsflowErrors through; record any other exception and raise a clean one."""
    try:
        yield
    except PacsflowError:
        raise
    except Exception as exc:
        failure = describe(step, exc)
        if record is not None:
            record(failure.detail)
        raise StudyStepFailed(failure.public) from None
