"""Keeping this process's claims alive while it works on them.

A claim lasts :data:`~pacsflow.ledger.claims.DEFAULT_LEASE`; a thread renews all of the
process's claims every third of that, in one statement. If the process dies, renewal
stops and the claims run out, so another worker takes the studies over.

The thread runs only while some lane holds the keeper (:meth:`LeaseKeeper.held`): a
worker process that has finished its lanes, or a ledger that was dropped, is left alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker

from pacsflow.ledger import claims

LOGGER = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews ``owner``'s claims in a daemon thread while any lane holds it."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        owner: str,
        lease: dt.timedelta = claims.DEFAULT_LEASE,
    ) -> None:
        self.sessions = sessions
        self.owner = owner
        self.lease = lease
        self._lock = threading.Lock()
        self._users = 0
        self._stop: threading.Event | None = None

    @property
    def running(self) -> bool:
        return self._stop is not None

    @contextlib.contextmanager
    def held(self) -> Iterator[LeaseKeeper]:
        """Keep renewing for as long as the block runs (lanes nest and overlap)."""
        with self._lock:
            self._users += 1
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(
                    target=self._run, args=(self._stop,), name="pacsflow-leases", daemon=True
                ).start()
        try:
            yield self
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._stop is not None:
                    self._stop.set()
                    self._stop = None

    def renew_now(self) -> int:
        """Renew every claim of the owner once; returns how many it holds."""
        with self.sessions() as session:
            return claims.renew(session, self.owner, self.lease)

    def _run(self, stop: threading.Event) -> None:
        interval = self.lease.total_seconds() / 3
        while not stop.wait(interval):
            try:
                self.renew_now()
            except Exception:  # a ledger that is briefly down: try again next interval
                LOGGER.warning("could not renew this worker's claims; retrying", exc_info=True)
