"""One deployment name, one way of running it: served by ``pacsflow serve`` or on a pool.

``pacsflow serve`` and ``pacsflow deploy --pool`` register the same deployment names.
The server upserts a registration, and keeps what the new one leaves out: a deployment
first put on a work pool and then served keeps the pool and its pull steps, and its
served runs crash; one served and then put on a pool, while the serve process still
polls, has its runs taken by both. So each command first asks the server how the names
are registered now, and stops with the fix unless told to replace the other way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

#: A served deployment polled within this long has a live serve process: its runner asks
#: for runs every 10 s (``PREFECT_RUNNER_POLL_FREQUENCY``).
LIVE_POLL_SECONDS = 30


class RegistrationConflict(Exception):
    """The names are registered the other way; the message says how to go on."""


@dataclass(frozen=True)
class Registration:
    """How the server runs one deployment now."""

    name: str  # "flow/deployment"
    id: UUID
    pool: str | None  # None: served (by `pacsflow serve` or another runner)
    polled: bool  # a serve process polled it within LIVE_POLL_SECONDS
    paused: bool = False  # a serve process that stopped pauses what it served


def current_registrations(names: list[str]) -> list[Registration]:
    """The registrations of ``names`` the server has now (names it lacks are left out)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    recent = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LIVE_POLL_SECONDS)
    found = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            found.append(
                Registration(
                    name=name,
                    id=deployment.id,
                    pool=deployment.work_pool_name,
                    polled=deployment.last_polled is not None and deployment.last_polled > recent,
                    paused=bool(deployment.paused),
                )
            )
    return found


def pool_registrations(names: list[str]) -> list[Registration]:
    """Those of ``names`` registered on a work pool: serving them would crash their runs."""
    return [r for r in current_registrations(names) if r.pool is not None]


def live_served_registrations(names: list[str]) -> list[Registration]:
    """Those of ``names`` a serve process is polling: a pool would share their runs with it."""
    return [r for r in current_registrations(names) if r.pool is None and r.polled]


def served_elsewhere(names: list[str]) -> list[Registration]:
    """Those of ``names`` another serve process serves now: polled lately and not paused."""
    return [r for r in live_served_registrations(names) if not r.paused]


def delete_registrations(registrations: list[Registration]) -> None:
    """Delete these deployments (their past flow runs stay on the server)."""
    if not registrations:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for registration in registrations:
            client.delete_deployment(registration.id)


def describe(registrations: list[Registration]) -> str:
    """``a/b (work pool 'p'), c/d (served)`` for an error message."""
    return ", ".join(
        f"{r.name} ({f'work pool {r.pool!r}' if r.pool else 'served'})" for r in registrations
    )
