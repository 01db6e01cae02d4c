"""What a user watching a run in the Prefect UI sees: progress, and at the end a report.

Everything here is counts, statuses, ledger ids and identifier-free error types.
"""

from __future__ import annotations

import time

from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import FINAL
from pacsflow.pipeline import Workspace


class Progress:
    """A progress artifact for one pull, updated from the ledger every few seconds."""

    def __init__(
        self, ws: Workspace, project: str, pull: str, total: int, chunk: int = 0, every: float = 2.0
    ) -> None:
        self.ws, self.project, self.pull, self.total, self.every = ws, project, pull, total, every
        self._last = 0.0
        self._id = create_progress_artifact(
            progress=0.0,
            description=f"Studies of project {project} finished in this pull (chunk {chunk}), "
            f"of {total}.",
        )

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        with self.ws.sessions() as session:
            counts = repo.pull_counts(session, self.project, self.pull)
        finished = sum(n for status, n in counts.items() if status in FINAL)
        percent = 100.0 * finished / self.total if self.total else 100.0
        update_progress_artifact(self._id, progress=min(percent, 100.0))


def report(ws: Workspace, project: str, pull: str) -> dict[str, int]:
    """Table artifacts: the project's counts per status, and this pull's failures by id."""
    with ws.sessions() as session:
        counts = repo.status_counts(session, project)
        failed = repo.pull_failures(session, project, pull)
    create_table_artifact(
        key=f"{project}-status",
        table=[{"status": status, "studies": n} for status, n in counts.items()],
        description=f"Studies per status for project {project} (no patient data).",
    )
    if failed:
        create_table_artifact(
            key=f"{project}-failures",
            table=[
                {"ledger id": study_id, "status": status, "reason": error_type or ""}
                for study_id, status, error_type in failed
            ],
            description="Studies of this pull that failed, were quarantined or were ambiguous, "
            "by ledger id; "
            "`pacsflow status` shows each one's full reason.",
        )
    return counts
