"""The retrieval subflow: a project's waiting studies, primary source first, then the next.

``process-studies`` runs in one worker process. It starts retrieval lanes
(:mod:`flows.lanes`) for each of the project's sources while studies are waiting for that
source, never more than the source's ``max_concurrent`` from this run (the tag limit
``source:<name>`` then bounds all runs together), and a few export lanes fed by them. It
polls the ledger, not futures of studies: work in flight is bounded by the lanes, and
memory does not grow with the manifest. Several runs of it (chunks of one pull, on other
workers) share the work through the ledger's claims. A source outside its extraction
window (:mod:`pacsflow.windows`) gets no lanes: its studies wait, shown in the progress
artifact, and the run sleeps until the window opens.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import time
from collections import Counter

from prefect import flow
from prefect.futures import PrefectFuture, wait
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows import clock, lanes
from flows.lanes import close_handoff, export_lane, open_handoff, retrieval_lane
from flows.limits import source_tag
from flows.progress import Progress, WindowWait
from flows.runtime import FRESH, workspace
from flows.stages import stage_times_artifact
from pacsflow.config import ProjectConfig, SiteConfig
from pacsflow.ledger import claims
from pacsflow.windows import next_opening

#: How often the dispatcher looks at the ledger for studies waiting for a source.
POLL_SECONDS = 0.2
#: How often a run gives back, and works on again, studies its failed lanes held. A lane
#: fails on what the study's own retries do not cover (the ledger cut off mid-query);
#: past this the studies are given back for the next pull only by their leases.
ORPHAN_ROUNDS = 3
#: Export lanes per process: de-identification is CPU-bound, and on 2 cores more threads
#: only contend for the GIL.
EXPORT_LANES = 2
#: Longest sleep while every remaining study waits for a closed source's window, so the
#: run notices within a minute if the clock jumped (a host suspended and resumed).
WINDOW_CHECK_SECONDS = 60.0
#: Threads for lanes; a thread is made only when a lane is submitted, and the dispatcher
#: submits at most the sources' limits plus the export lanes.
MAX_THREADS = 64


def _closed(site: SiteConfig, sources: list[str], now: dt.datetime) -> dict[int, dt.datetime]:
    """The project's sources (by index) whose windows are closed at ``now``: when each opens."""
    closed = {}
    for index, name in enumerate(sources):
        opening = next_opening(site.sources[name].windows, now)
        if opening is not None:
            closed[index] = opening
    return closed


def _waits(
    site: SiteConfig, sources: list[str], held: dict[int, int], closed: dict[int, dt.datetime]
) -> list[WindowWait]:
    waits = []
    for index, n in sorted(held.items()):
        windows = site.sources[sources[index]].windows
        assert windows is not None  # only a source with windows is ever closed
        waits.append(WindowWait(sources[index], n, closed[index].astimezone(windows.zone)))
    return waits


def _idle_pause(
    to_deferred: dt.timedelta | None, to_opening: dt.timedelta | None, max_wait: dt.timedelta
) -> float | None:
    """Seconds the dispatcher sleeps while no lane runs and no study is ready; None: stop.

    ``to_deferred`` is the time until the first study put back after a transient error
    is claimable, ``to_opening`` until a closed source with studies waiting opens. The
    run stops when neither exists, or when the window is further away than ``max_wait``
    (its studies stay pending, so the next scheduled pull takes them).
    """
    if to_deferred is not None and (to_opening is None or to_deferred <= to_opening):
        return min(max(to_deferred.total_seconds(), POLL_SECONDS), 5.0)
    if to_opening is None or to_opening > max_wait:
        return None
    # Until the window opens, looking again at least every minute.
    return min(max(to_opening.total_seconds(), POLL_SECONDS), WINDOW_CHECK_SECONDS)


def _until_a_lane_ends(running: dict[str, list[PrefectFuture]], timeout: float) -> None:
    """Sleep up to ``timeout`` seconds, waking as soon as one of the ``running`` lanes ends.

    A lane's end frees a slot: the next lane starts at once rather than at the next poll
    (up to :data:`POLL_SECONDS` of an idle slot at every hand-over, and at the pull's end
    before the export lanes are told to finish).
    """
    threads = [f.wrapped_future for futures in running.values() for f in futures]
    if threads:
        concurrent.futures.wait(threads, timeout=timeout, return_when="FIRST_COMPLETED")
    else:
        time.sleep(timeout)


def _lane_result(future: PrefectFuture, logger) -> object:
    """What a lane returned, or the exception it failed with.

    A lane whose work is done can still fail afterwards in Prefect's own bookkeeping:
    giving its slot back makes a new API client, and while the Prefect server restarts
    that client's first request fails at once (Prefect retries a refused connection
    only on a client that has connected before). The studies it handled are in the
    ledger either way, and the ones it still held go back by :func:`claims.release_orphans`;
    the failure must not fail the pull.
    """
    try:
        return future.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 (recorded as a failed lane, the run goes on)
        # The class only: a message from below may quote a query, and logs go to Prefect.
        logger.warning("a lane ended with %s after its work", type(exc).__name__)
        return exc


def _process_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    project = params["project"]
    name = project["name"] if isinstance(project, dict) else project.name
    return f"process-{name}-{params.get('chunk', 0)}"


@flow(
    name="process-studies",
    flow_run_name=_process_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_THREADS),
)
def process_studies(
    project: ProjectConfig,
    pull: str,
    site: str = "default",
    total: int = 0,
    chunk: int = 0,
    export_lanes: int = EXPORT_LANES,
    lane_seconds: float | None = None,
) -> dict[str, int]:
    """Work on ``project``'s waiting studies until none is left for this pull.

    ``pull`` names the extraction (a study that fails in it waits for the next pull);
    ``total`` is how many studies the pull started with, for the progress artifact.
    Studies waiting for a source whose extraction window is closed get no lane (and hold
    no slot); the run sleeps until the window opens, unless that is more than the
    project's ``max_wait_hours`` away: then it ends and leaves them pending for the next
    pull. Every ``lane_seconds`` (default :data:`flows.lanes.LANE_SECONDS`) a lane gives
    its source's slot back if another run waits for one. Returns what the lanes did, by
    outcome.
    """
    logger = get_run_logger()
    lane_seconds = lane_seconds or lanes.LANE_SECONDS
    ws = workspace(site, ttl=FRESH)  # as the blocks are now; tasks reuse it
    started_at = time.monotonic()
    handoff = open_handoff(maxsize=2 * export_lanes)
    exporters = [export_lane.submit(site, project, i, handoff.key) for i in range(export_lanes)]
    running: dict[str, list[PrefectFuture]] = {name: [] for name in project.sources}
    done: list[PrefectFuture] = []
    started = Counter()
    progress = Progress(ws, project.name, pull, total, chunk)
    max_wait = dt.timedelta(hours=project.max_wait_hours)
    waits: list[WindowWait] = []
    orphan_rounds = 0
    try:
        while True:
            for name, futures in running.items():
                # Whether the lane's thread has returned: local, no API call (a future's
                # .state asks the server each time).
                done += [f for f in futures if f.wrapped_future.done()]
                running[name] = [f for f in futures if not f.wrapped_future.done()]
            full = all(
                len(running[name]) >= ws.site.sources[name].max_concurrent
                for name in project.sources
            )
            if full:  # no lane could start: no need to count the ledger's waiting studies
                progress.update(waits=waits)
                _until_a_lane_ends(running, POLL_SECONDS)
                continue
            with ws.sessions() as session:
                waiting = claims.claimable_counts(session, project.name, pull)
            now = clock.now()
            closed = _closed(ws.site, project.sources, now)
            # Studies of a closed source are not ready: no lane, no slot, until it opens.
            ready = {i: n for i, n in waiting.items() if i not in closed}
            held = {i: n for i, n in waiting.items() if i in closed}
            before = {(w.source, w.opens) for w in waits}
            waits = _waits(ws.site, project.sources, held, closed)
            for w in waits:
                if (w.source, w.opens) not in before:  # once per source and opening
                    logger.info(
                        "%s studies wait for source %s, whose extraction window opens %s",
                        w.studies,
                        w.source,
                        w.opens.isoformat(timespec="minutes"),
                    )
            for index, name in enumerate(project.sources):
                room = ws.site.sources[name].max_concurrent - len(running[name])
                # As many lanes as the source has room and studies for. (Slot requests made
                # all at once collide on a SQLite-backed server, which answers 503; the
                # local server replays those itself, deployments/server_process.py.)
                for _ in range(min(room, ready.get(index, 0))):
                    started[name] += 1
                    lane = retrieval_lane.with_options(tags=[source_tag(name)]).submit(
                        site, project, name, started[name], pull, handoff.key, lane_seconds
                    )
                    running[name].append(lane)
            progress.update(waits=waits)
            if not any(running.values()) and not ready:
                if orphan_rounds < ORPHAN_ROUNDS:
                    with ws.sessions() as session:
                        orphans = claims.release_orphans(
                            session, ws.owner, project.name, pull, keep=handoff.in_hand()
                        )
                    if orphans:  # claimable again: lanes start on them
                        orphan_rounds += 1
                        logger.warning("%s studies held by failed lanes are free again", orphans)
                        continue
                with ws.sessions() as session:
                    deferred = claims.next_deferred(session, project.name)
                    # Counted again after it: a delay that ran out since the count above
                    # would look like no work left and end the run with studies waiting
                    # (seen when a source outage had deferred many at once). The time is
                    # taken before that count, so a delay that runs out after it still
                    # reads as time to wait, never as "claimable already" (a run ended so
                    # with 17 studies deferred, in CI).
                    checked = dt.datetime.now(dt.UTC)
                    again = claims.claimable_counts(session, project.name, pull)
                if any(n for i, n in again.items() if i not in closed):
                    continue
                if deferred is not None and deferred.tzinfo is None:
                    deferred = deferred.replace(tzinfo=dt.UTC)  # SQLite keeps UTC without a zone
                # Leases and delays are on the ledger's clock, the real one; windows are
                # on flows.clock (which a test may move): each is compared with its own.
                to_deferred = deferred - checked if deferred else None
                if to_deferred is not None and to_deferred <= dt.timedelta(0):
                    to_deferred = None  # claimable already: counted above
                opening = min((closed[i] for i in held), default=None)
                to_opening = opening - now if opening is not None else None
                pause = _idle_pause(to_deferred, to_opening, max_wait)
                if pause is None:
                    if held:
                        logger.warning(
                            "the next extraction window opens %s, more than max_wait_hours=%s "
                            "from now: %s studies stay pending for the next pull",
                            opening.isoformat(timespec="minutes"),
                            project.max_wait_hours,
                            sum(held.values()),
                        )
                    break
                time.sleep(pause)
                continue
            _until_a_lane_ends(running, POLL_SECONDS)
    except BaseException:
        # A retrieval lane still running would wait forever to hand a study to export
        # lanes that are about to stop, and this run with it (seen when the ledger's
        # PostgreSQL restarted under the dispatcher). Its study stays claimed until its
        # lease runs out, and the next pull takes it.
        handoff.abandon()
        raise
    finally:
        handoff.close(export_lanes)
        wait(exporters)
        close_handoff(handoff)
    outcomes: Counter[str] = Counter()
    for future in done + exporters:
        result = _lane_result(future, logger)
        if isinstance(result, dict):
            outcomes.update(result)
        else:
            outcomes["lane_failed"] += 1
    progress.update(force=True, waits=waits)
    stage_times_artifact(handoff.times, project.name, time.monotonic() - started_at)
    logger.info(
        "lanes started: %s; outcomes: %s",
        dict(started),
        {k: v for k, v in sorted(outcomes.items())},
    )
    return dict(outcomes)
