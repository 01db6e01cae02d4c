"""The verdict on a study: passed, or the attribute paths that leaked (never values)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pacsflow.deid.phi_gate.identifiers import OriginalIdentifiers
from pacsflow.deid.phi_gate.walk import Allows, find_leaks

MAX_SUMMARY_CHARS = 1000
"""Upper bound on :meth:`GateResult.summary`, so a ledger row or a log line stays small."""


@dataclass(frozen=True)
class GateResult:
    """Verdict on a study: safe to store and log, as it holds counts and paths only."""

    passed: bool
    paths: tuple[str, ...] = ()
    instances: int = 0
    failed_instances: int = 0

    def __post_init__(self) -> None:
        if self.passed == bool(self.paths):
            raise ValueError("a gate result passes exactly when it has no paths")

    def summary(self, max_chars: int = MAX_SUMMARY_CHARS) -> str:
        """One line for the ledger and logs, at most ``max_chars`` characters.

        E.g. ``PHI gate failed: 2 of 6 instances; 2 attributes: PatientName; ...``.
        """
        instances = f"{self.instances} instance{'' if self.instances == 1 else 's'}"
        if self.passed:
            return f"PHI gate passed: {instances}"
        attributes = f"{len(self.paths)} attribute{'' if len(self.paths) == 1 else 's'}"
        head = f"PHI gate failed: {self.failed_instances} of {instances}; {attributes}: "
        text = head
        for index, path in enumerate(self.paths):
            piece = ("; " if index else "") + path
            remaining = len(self.paths) - index - 1
            reserve = len(f" (+{remaining} more)") if remaining else 0
            if len(text) + len(piece) + reserve > max_chars:
                return (text + f" (+{len(self.paths) - index} more)")[:max_chars]
            text += piece
        return text[:max_chars]


def gate(
    datasets: Iterable[Dataset], ids: OriginalIdentifiers, allows: Allows | None = None
) -> GateResult:
    """Check every de-identified instance of a study; the union of paths decides.

    ``datasets`` may be a generator reading files one by one. An empty study passes:
    whether a study may be exported empty is decided elsewhere.
    """
    paths: dict[str, None] = {}
    instances = failed = 0
    for ds in datasets:
        instances += 1
        found = find_leaks(ds, ids, allows)
        if found:
            failed += 1
            paths.update(dict.fromkeys(found))
    return GateResult(
        passed=not paths, paths=tuple(paths), instances=instances, failed_instances=failed
    )
