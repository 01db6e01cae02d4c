"""Where a process's scouting of a source's queue has got to (``flows.lanes._Lane.scout``).

Scouting asks a source about the studies at the end of its queue, from the highest
ledger id down, so that those it does not hold reach the next source early. The lanes
of one process that serve the same project, source and pull share one cursor: each study
is scouted once per pull and process, and scouting ends where the cursor meets the
lanes, which take studies from the lowest id up. Another process (a chunk run on a
worker) keeps its own cursor; at worst a study is asked about once more there.
"""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session

from pacsflow.ledger import claims
from pacsflow.ledger.models import Study

_lock = threading.Lock()
_cursors: dict[tuple[str, int, str], ScoutCursor] = {}


class ScoutCursor:
    """The lowest ledger id scouted so far for one (project, source, pull)."""

    def __init__(self, project: str, source_index: int, pull: str) -> None:
        self.project, self.source_index, self.pull = project, source_index, pull
        self.below: int | None = None
        #: True once nothing is left to scout: no study below the cursor, or the lanes
        #: have reached it.
        self.done = False
        self._lock = threading.Lock()

    def take(self, session: Session, owner: str) -> Study | None:
        """Claim the next study to scout (:func:`claims.claim_to_scout`), or None."""
        with self._lock:  # two lanes of this process never take the same study
            if self.done:
                return None
            study = claims.claim_to_scout(
                session, self.project, self.source_index, owner, self.pull, self.below
            )
            if study is None:
                self.done = True
                return None
            self.below = study.id
            return study


def scout_cursor(project: str, source_index: int, pull: str) -> ScoutCursor:
    """The process's cursor for the project's queue at ``source_index`` in ``pull``."""
    key = (project, source_index, pull)
    with _lock:
        if key not in _cursors:
            _cursors[key] = ScoutCursor(project, source_index, pull)
        return _cursors[key]
