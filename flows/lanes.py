"""Lanes: long-lived tasks that each hold one slot of a source and work study after study.

A Prefect task (and its slot acquisition) per study per stage costs more than a small
study's transfer, so work is batched: a **retrieval lane** is one task run tagged
``source:<name>``; the task engine acquires one slot of that tag's concurrency limit for
it, and the lane keeps it while it claims studies waiting for its source from the ledger
(:mod:`pacsflow.ledger.claims`) and finds and fetches them one after another. A study the
source does not hold moves on to the project's next source, whose lanes take it from
there. A fetched study is handed to an **export lane** of the same process (de-identify,
PHI gate, export: CPU work that must not hold a source's slot) through a bounded queue.

A lane ends when no study is waiting for its source, or, every ``lane_seconds``, when
another run's lane waits for the source's slot, so that projects take turns; the
dispatcher (:mod:`flows.process`) starts another while work remains. A lane nobody waits
for keeps its slot: handing one over costs seconds of an idle source. Lanes return
counts; per-study failures are logged by ledger id and identifier-free reason, and
recorded in full in the ledger.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from contextlib import nullcontext

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run

from flows import clock
from flows.cache import exported_before, remember_export
from flows.limits import image_limit_name, image_slots, others_wait_for, source_tag
from flows.runtime import profile, pseudonymizer, workspace
from flows.stages import StageTimes
from pacsflow import failures, pipeline
from pacsflow.config import ProjectConfig
from pacsflow.dicom.association import SourceAssociation
from pacsflow.ledger import claims
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study, StudyStatus
from pacsflow.windows import is_open

LOGGER = logging.getLogger(__name__)

#: Default seconds between a retrieval lane's looks for another run waiting for its slot
#: (it then gives the slot back; if work remains, a new lane of its run queues for one).
LANE_SECONDS = 30.0


class HandoffAbandoned(RuntimeError):
    """The run's export lanes are gone: a fetched study cannot be handed on."""


class Handoff:
    """The bounded queue from a process's retrieval lanes to its export lanes.

    Bounded, so lanes wait when de-identification falls behind instead of filling the
    disk with staged studies. Registered by a key, so tasks receive a string parameter.
    """

    def __init__(self, maxsize: int) -> None:
        self.key = uuid.uuid4().hex
        self._queue: queue.Queue[int | None] = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()
        #: Where the lanes of this process's run time their steps.
        self.times = StageTimes()

    def put(self, study_id: int) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(study_id, timeout=0.5)
                return
            except queue.Full:
                continue
        raise HandoffAbandoned("the run is ending on an error; its export lanes have stopped")

    def get(self) -> int | None:
        return self._queue.get()

    def close(self, consumers: int) -> None:
        """No more studies: each export lane gets its end-of-work marker."""
        for _ in range(consumers):
            self._queue.put(None)

    def abandon(self) -> None:
        """The run is ending on an error: lanes still retrieving stop, and none waits."""
        self._closed.set()

    @property
    def abandoned(self) -> bool:
        return self._closed.is_set()


_handoffs: dict[str, Handoff] = {}


def open_handoff(maxsize: int) -> Handoff:
    handoff = Handoff(maxsize)
    _handoffs[handoff.key] = handoff
    return handoff


def close_handoff(handoff: Handoff) -> None:
    _handoffs.pop(handoff.key, None)


def _fetch(
    ws: pipeline.Workspace,
    study: Study,
    source_name: str,
    association: SourceAssociation,
    allow_partial: bool,
) -> pipeline.Fetched:
    """Fetch, first occupying the source's image limit with the study's instance count."""
    max_images = ws.site.sources[source_name].max_images
    guard = nullcontext()
    if max_images:
        slots = image_slots(pipeline.expected_instances(ws, study.id), max_images)
        guard = concurrency(image_limit_name(source_name), occupy=slots, strict=True)
    with guard:
        return pipeline.fetch(ws, study.id, source_name, association, allow_partial)


@task(task_run_name="{source_name}-lane-{lane}", cache_policy=NO_CACHE)
def retrieval_lane(
    site: str,
    project: ProjectConfig,
    source_name: str,
    lane: int,
    pull: str,
    handoff: str,
    lane_seconds: float = LANE_SECONDS,
) -> dict[str, int]:
    """Find and fetch the project's studies waiting for ``source_name``, one at a time.

    Carries the tag ``source:<name>`` (set by the dispatcher), so it runs only while it
    holds one of the source's slots. Returns counts: staged, passed on, not found,
    ambiguous, expanded, partial, deferred (a transient error: tried again after the
    source's retry delay), failed.
    """
    ws = workspace(site)
    counts: Counter[str] = Counter()
    source = ws.site.sources[source_name]
    with ws.leases.held(), SourceAssociation(source, ws.calling_ae) as association:
        _retrieve(ws, project, source_name, pull, handoff, lane_seconds, association, counts)
    return dict(counts)


def _retrieve(
    ws: pipeline.Workspace,
    project: ProjectConfig,
    source_name: str,
    pull: str,
    handoff: str,
    lane_seconds: float,
    association: SourceAssociation,
    counts: Counter[str],
) -> None:
    """The lane's loop: claim, find, fetch, hand on; one study at a time until done.

    Every ``lane_seconds`` it gives its slot back if another run waits for one (so
    projects take turns), and otherwise goes on. It stops claiming when the source's
    extraction window closes; the study in hand is finished first.
    """
    logger = get_run_logger()
    deadline = time.monotonic() + lane_seconds
    source_index = project.sources.index(source_name)
    delays = ws.site.sources[source_name].retry_delays
    windows = ws.site.sources[source_name].windows
    while not _handoffs[handoff].abandoned:
        if time.monotonic() >= deadline:
            if others_wait_for(source_tag(source_name), runtime_flow_run.get_id()):
                break  # the dispatcher of that run starts a lane with the slot
            deadline = time.monotonic() + lane_seconds
        if not is_open(windows, clock.now()):
            logger.info("the extraction window of %s has closed: no more claims", source_name)
            break
        with ws.sessions() as session:
            study = claims.claim_next(session, project.name, source_index, ws.owner, pull)
        if study is None:
            break
        record = exported_before(project.name, study.ref)
        if record is not None:  # exported already; the ledger missed it
            with ws.sessions() as session:
                repo.update_study(session, study.id, **record)
                repo.mark_exported(session, study.id, record["exported_instances"])
            counts["exported_before"] += 1
            continue
        step = failures.Step.FIND
        try:
            with _handoffs[handoff].times.measure("find"):
                located = pipeline.locate(
                    ws, study.id, source_name, association, project.ambiguity, project.sources
                )
            if located == pipeline.Located.AMBIGUOUS:  # ended; never passed to the next source
                counts["ambiguous"] += 1
                logger.warning(
                    "study %s at %s is ambiguous; `pacsflow status` says why", study.id, source_name
                )
                continue
            if located == pipeline.Located.EXPANDED:  # its studies wait for this source
                counts["expanded"] += 1
                continue
            if located == pipeline.Located.NOT_FOUND:
                with ws.sessions() as session:
                    status = claims.pass_on(session, study.id, ws.owner, len(project.sources))
                counts["not_found" if status == "not_found" else "passed_on"] += 1
                continue
            step = failures.Step.FETCH
            with _handoffs[handoff].times.measure("fetch"):
                fetched = _fetch(ws, study, source_name, association, project.allow_partial)
            if not fetched.exportable:  # ended partial: instances missing, not exported
                counts["partial"] += 1
                logger.warning(
                    "study %s at %s is partial (%d of %d instances); `pacsflow status` says why",
                    study.id,
                    source_name,
                    fetched.received,
                    fetched.expected,
                )
                continue
            _handoffs[handoff].put(study.id)
            counts["staged"] += 1
        except HandoffAbandoned:
            _give_back(ws, study.id)
            break
        except Exception as exc:
            failure = failures.describe(step, exc)
            with ws.sessions() as session:
                delay = failures.record(session, study.id, ws.owner, failure, study.tries, delays)
            counts["failed" if delay is None else "deferred"] += 1
            logger.warning(
                "study %s at %s: %s: %s%s",
                study.id,
                source_name,
                failure.error_type,
                failure.public,
                "" if delay is None else f" (try {study.tries}; tried again in {delay:.1f} s)",
            )


def _give_back(ws: pipeline.Workspace, study_id: int) -> None:
    """Make a study the run cannot finish claimable again at once, for the next pull.

    Not a failure of the study: its tries and status stay. If the ledger cannot be
    reached either, the claim runs out with its lease.
    """
    try:
        with ws.sessions() as session:
            claims.defer(session, study_id, ws.owner, delay=0)
    except Exception:
        LOGGER.warning("could not give back study %s; its claim runs out", study_id)


@task(task_run_name="export-lane-{lane}", cache_policy=NO_CACHE)
def export_lane(site: str, project: ProjectConfig, lane: int, handoff: str) -> dict[str, int]:
    """De-identify, PHI-check and export staged studies until the retrieval lanes are done.

    Returns counts per final status (exported, excluded, quarantined, failed).
    """
    logger = get_run_logger()
    ws = workspace(site)
    counts: Counter[str] = Counter()
    with ws.leases.held():  # staged studies stay claimed until exported
        _export(ws, site, project, _handoffs[handoff], counts, logger)
    return dict(counts)


def _export(
    ws: pipeline.Workspace,
    site: str,
    project: ProjectConfig,
    queue_: Handoff,
    counts: Counter[str],
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    """The export lane's loop: take staged studies off the hand-off until it closes."""
    while (study_id := queue_.get()) is not None:
        try:
            status = pipeline.deidentify_and_export(
                ws,
                study_id,
                project,
                pseudonymizer(project, site),
                profile(project),
                queue_.times.measure,
            )
        except Exception as exc:
            failure = failures.describe(failures.Step.DEIDENTIFY, exc)
            with ws.sessions() as session:
                study = session.get(Study, study_id)
                tries = study.tries if study is not None else 1
            with ws.sessions() as session:
                # No retry delay here: a later pull fetches the study again.
                failures.record(session, study_id, ws.owner, failure, tries, [])
            logger.warning("study %s: %s: %s", study_id, failure.error_type, failure.public)
            status = "failed"
        if status == StudyStatus.EXPORTED:
            with ws.sessions() as session:
                done = repo.get_study(session, study_id)
            remember_export(
                project.name,
                done.ref,
                {
                    "source": done.source,
                    "pseudo_patient_id": done.pseudo_patient_id,
                    "pseudo_study_uid": done.pseudo_study_uid,
                    "exported_instances": done.exported_instances,
                },
            )
        counts[status] += 1
