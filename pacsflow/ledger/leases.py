"""Keeping this process's claims alive while it works on them.

A claim lasts :data:`~pacsflow.ledger.claims.DEFAULT_LEASE`; a thread renews all of the
process's claims every third of that, in one statement. If the process dies, renewal
stops and the claims run out, so another worker takes the studies over.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from pacsflow.ledger import claims

LOGGER = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews ``owner``'s claims in a daemon thread until :meth:`stop`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        owner: str,
        lease: dt.timedelta = claims.DEFAULT_LEASE,
    ) -> None:
        self.sessions = sessions
        self.owner = owner
        self.lease = lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pacsflow-leases", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        interval = self.lease.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                with self.sessions() as session:
                    claims.renew(session, self.owner, self.lease)
            except Exception:  # a ledger that is briefly down: try again next interval
                LOGGER.warning("could not renew this worker's claims; retrying", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
