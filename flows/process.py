"""The retrieval subflow: a project's waiting studies, primary source first, then the next.

``process-studies`` runs in one worker process. It starts retrieval lanes
(:mod:`flows.lanes`) for each of the project's sources while studies are waiting for that
source, never more than the source's ``max_concurrent`` from this run (the tag limit
``source:<name>`` then bounds all runs together), and a few export lanes fed by them. It
polls the ledger, not futures of studies: work in flight is bounded by the lanes, and
memory does not grow with the manifest. Several runs of it (chunks of one pull, on other
workers) share the work through the ledger's claims.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

from prefect import flow
from prefect.futures import PrefectFuture, wait
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.lanes import LANE_SECONDS, close_handoff, export_lane, open_handoff, retrieval_lane
from flows.limits import source_tag
from flows.progress import Progress
from flows.runtime import workspace
from pacsflow.config import ProjectConfig
from pacsflow.ledger import claims

#: How often the dispatcher looks at the ledger for studies waiting for a source.
POLL_SECONDS = 0.2
#: Export lanes per process: de-identification is CPU-bound, and on 2 cores more threads
#: only contend for the GIL.
EXPORT_LANES = 2
#: Threads for lanes; a thread is made only when a lane is submitted, and the dispatcher
#: submits at most the sources' limits plus the export lanes.
MAX_THREADS = 64


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
    lane_seconds: float = LANE_SECONDS,
) -> dict[str, int]:
    """Work on ``project``'s waiting studies until none is left for this pull.

    ``pull`` names the extraction (a study that fails in it waits for the next pull);
    ``total`` is how many studies the pull started with, for the progress artifact.
    Returns what the lanes did, by outcome.
    """
    logger = get_run_logger()
    ws = workspace(site, ttl=0)  # as the blocks are now; tasks reuse it
    handoff = open_handoff(maxsize=2 * export_lanes)
    exporters = [export_lane.submit(site, project, i, handoff.key) for i in range(export_lanes)]
    running: dict[str, list[PrefectFuture]] = {name: [] for name in project.sources}
    done: list[PrefectFuture] = []
    started = Counter()
    progress = Progress(ws, project.name, pull, total, chunk)
    try:
        while True:
            for name, futures in running.items():
                # Whether the lane's thread has returned: local, no API call (a future's
                # .state asks the server each time).
                done += [f for f in futures if f.wrapped_future.done()]
                running[name] = [f for f in futures if not f.wrapped_future.done()]
            with ws.sessions() as session:
                waiting = claims.claimable_counts(session, project.name, pull)
            for index, name in enumerate(project.sources):
                room = ws.site.sources[name].max_concurrent - len(running[name])
                # One new lane per source per tick: slot requests made all at once collide
                # on a SQLite-backed server, which answers 503 and makes clients back off 2 s.
                for _ in range(min(room, waiting.get(index, 0), 1)):
                    started[name] += 1
                    lane = retrieval_lane.with_options(tags=[source_tag(name)]).submit(
                        site, project, name, started[name], pull, handoff.key, lane_seconds
                    )
                    running[name].append(lane)
            progress.update()
            if not any(running.values()) and not waiting:
                with ws.sessions() as session:
                    deferred = claims.next_deferred(session, project.name)
                if deferred is None:
                    break
                # Studies put back after a transient error: wait for the first of them.
                if deferred.tzinfo is None:  # SQLite keeps UTC without a zone
                    deferred = deferred.replace(tzinfo=dt.UTC)
                wait_for = deferred - dt.datetime.now(dt.UTC)
                time.sleep(min(max(wait_for.total_seconds(), POLL_SECONDS), 5.0))
                continue
            time.sleep(POLL_SECONDS)
    finally:
        handoff.close(export_lanes)
        wait(exporters)
        close_handoff(handoff)
    outcomes: Counter[str] = Counter()
    for future in done + exporters:
        result = future.result(raise_on_failure=False)
        if isinstance(result, dict):
            outcomes.update(result)
        else:
            outcomes["lane_failed"] += 1
    progress.update(force=True)
    logger.info(
        "lanes started: %s; outcomes: %s",
        dict(started),
        {k: v for k, v in sorted(outcomes.items())},
    )
    return dict(outcomes)
