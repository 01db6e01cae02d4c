"""What a user watching a run in the Prefect UI sees: progress, and at the end a report.

Everything here is counts, statuses, ledger ids and identifier-free error types.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from uuid import UUID

from prefect.artifacts import ProgressArtifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import FINAL
from pacsflow.pipeline import Workspace


@dataclass(frozen=True)
class WindowWait:
    """Studies that wait for a source whose extraction window is closed."""

    source: str
    studies: int
    opens: dt.datetime  # in the source's timezone, as its windows are written


def waiting_note(waits: list[WindowWait]) -> str:
    """The sentence the progress artifact adds while studies wait for a window."""
    if not waits:
        return ""
    parts = [
        f"{w.studies} for source {w.source} (opens {w.opens:%a %d %b %H:%M} {w.opens.tzinfo})"
        for w in waits
    ]
    return " Waiting for an extraction window: " + "; ".join(parts) + "."


def pull_run_id() -> UUID | None:
    """The extract-project run this flow run works for: its parent if it has one (the
    process-studies subflow and chunk runs), else itself. The user watches that run's
    page, so the progress goes there rather than on a subflow nobody opens."""
    return UUID(flow_run.get_parent_flow_run_id() or flow_run.get_id())


class Progress:
    """A progress artifact for one pull, updated from the ledger every few seconds.

    It sits on the pull's extract-project run and has the key ``<project>-progress``, so
    the Artifacts page shows each project's latest pull too.
    """

    def __init__(
        self, ws: Workspace, project: str, pull: str, total: int, chunk: int = 0, every: float = 2.0
    ) -> None:
        self.ws, self.project, self.pull, self.total, self.every = ws, project, pull, total, every
        self._last = 0.0
        self._description = (
            f"Studies of project {project} finished in this pull (chunk {chunk}), of {total}."
        )
        self._id = (
            ProgressArtifact(
                key=f"{project}-progress",
                progress=0.0,
                description=self._description,
                flow_run_id=pull_run_id(),
            )
            .create()
            .id
        )

    def update(self, force: bool = False, waits: list[WindowWait] | None = None) -> None:
        """Show the finished fraction, and which studies wait for a closed source."""
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        with self.ws.sessions() as session:
            counts = repo.pull_counts(session, self.project, self.pull)
        finished = sum(n for status, n in counts.items() if status in FINAL)
        percent = 100.0 * finished / self.total if self.total else 100.0
        update_progress_artifact(
            self._id,
            progress=min(percent, 100.0),
            description=self._description + waiting_note(waits or []),
        )


def report(ws: Workspace, project: str, pull: str) -> dict[str, int]:
    """Table artifacts: counts per status (the project's, and this pull's), this pull's
    counts per failure reason and per error class, and its failures by ledger id."""
    with ws.sessions() as session:
        counts = repo.status_counts(session, project)
        this_pull = repo.pull_counts(session, project, pull)
        reasons = repo.pull_reason_counts(session, project, pull)
        failed = repo.pull_failures(session, project, pull)
        classes = repo.error_class_counts(session, project, pull)
    create_table_artifact(
        key=f"{project}-status",
        table=[
            {"status": status, "studies": n, "this pull": this_pull.get(status, 0)}
            for status, n in counts.items()
        ],
        description=f"Studies per status for project {project}, all pulls and this one "
        "(no patient data).",
    )
    if reasons:
        create_table_artifact(
            key=f"{project}-failure-reasons",
            table=[
                {"status": status, "reason": reason or "(none recorded)", "studies": n}
                for status, reason, n in reasons
            ],
            description="Studies of this pull that failed, were quarantined or were ambiguous, "
            "per reason (no patient data).",
        )
    if classes:
        create_table_artifact(
            key=f"{project}-error-classes",
            table=[
                {"status": status, "error class": kind, "studies": n} for status, kind, n in classes
            ],
            description="Why studies of this pull were not exported, by error class: "
            "not_found (no source holds it), transient (a rerun may cure it), "
            "source_rejected (ask the source's administrator), deid_failed (check the "
            "profile), export_failed (check the destination), ambiguous (see the policy).",
        )
    if failed:
        create_table_artifact(
            key=f"{project}-failures",
            table=[
                {"ledger id": study_id, "status": status, "error class": error_type or ""}
                for study_id, status, error_type in failed
            ],
            description="Studies of this pull that failed, were quarantined, ambiguous or "
            "partial, by ledger id; "
            "`pacsflow status` shows each one's full reason.",
        )
    return counts
