"""The small exception tree of pacsflow.

Network outcomes are values (see :mod:`pacsflow.dicom.query`); exceptions are for
input that cannot be used and for failures that a retry may cure. Retries happen at
exactly one layer, the Prefect task, which retries only :class:`RetriableError`.
"""

from __future__ import annotations


class PacsflowError(Exception):
    """Base class of every error pacsflow raises on purpose."""


class ConfigError(PacsflowError):
    """A site or project configuration cannot be used; the message names the key."""


class ManifestError(PacsflowError):
    """A manifest cannot be ingested. Nothing was written to the ledger.

    ``problems`` lists every problem found, each naming the row and column, so a
    user can fix the whole file in one pass.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        detail = "".join(f"\n  - {p}" for p in self.problems[:50])
        more = len(self.problems) - 50
        if more > 0:
            detail += f"\n  ... and {more} more"
        super().__init__(message + detail)


class RetriableError(PacsflowError):
    """A failure a later attempt may cure: a source that is down, a timeout, a full disk."""


class SourceUnavailable(RetriableError):
    """A DICOM source could not be reached or did not answer. Never means "not found"."""


class PermanentError(PacsflowError):
    """A failure that repeating will not cure; the study is marked ``failed`` with the reason."""
