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
a lane of another pull waits for the source's slot, so that projects take turns; the
dispatcher (:mod:`flows.process`) starts another while work remains. A lane nobody waits
for keeps its slot: handing one over costs seconds of an idle source. Lanes return
counts; per-study failures are logged by ledger id and identifier-free reason, and
recorded in full in the ledger.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial

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
from pacsflow.deid import processes as deid_processes
from pacsflow.dicom.association import SourceAssociation
from pacsflow.ledger import claims
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study, StudyStatus
from pacsflow.ledger.scouting import scout_cursor
from pacsflow.windows import is_open

LOGGER = logging.getLogger(__name__)

#: While a lane's retrievals take longer than this, its look-ahead find waits
#: FIND_AHEAD_DELAY before it starts (see _Lane.find_ahead).
SLOW_RETRIEVAL_SECONDS = 0.5

#: How long a look-ahead find waits, beside a slow retrieval, for that retrieval's request
#: to be out: claiming, querying and recording at the same moment held up the request.
FIND_AHEAD_DELAY = 0.05

#: Studies a lane's look-ahead thread scouts, at most, beside each slow retrieval (see
#: _Lane.scout): enough to stay ahead of a next source's lanes, few enough that the
#: source sees at most this many extra queries per retrieval, and only until every
#: study has been asked once.
SCOUT_PER_RETRIEVAL = 4

#: Scouting pauses while the next source has this many rounds of work (studies per slot)
#: waiting; a shallower queue can run dry between two scouts, and a lane that finds its
#: queue empty ends and gives its slot away.
SCOUT_AHEAD_ROUNDS = 4

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
        self._lock = threading.Lock()
        self._in_hand: set[int] = set()
        #: Where the lanes of this process's run time their steps.
        self.times = StageTimes()

    def put(self, study_id: int) -> None:
        with self._lock:
            self._in_hand.add(study_id)
        while not self._closed.is_set():
            try:
                self._queue.put(study_id, timeout=0.5)
                return
            except queue.Full:
                continue
        self.done(study_id)
        raise HandoffAbandoned("the run is ending on an error; its export lanes have stopped")

    def get(self) -> int | None:
        return self._queue.get()

    def done(self, study_id: int) -> None:
        """An export lane is finished with ``study_id``, whatever became of it."""
        with self._lock:
            self._in_hand.discard(study_id)

    def in_hand(self) -> set[int]:
        """Studies handed on and not yet done with: their claims are the export lanes'."""
        with self._lock:
            return set(self._in_hand)

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
    source = ws.site.sources[source_name]
    lane_ = _Lane(ws, project, source_name, pull, _handoffs[handoff], get_run_logger())
    with (
        ws.leases.held(),
        SourceAssociation(source, ws.calling_ae) as association,
        SourceAssociation(source, ws.calling_ae, find_only=True) as finder,
    ):
        lane_.run(association, finder if source.find_ahead else None, lane_seconds)
    return dict(lane_.counts)


class _Lane:
    """One retrieval lane's work: claim, find, fetch, hand on; study after study.

    With a ``finder`` association (the source's ``find_ahead``), the next study is
    claimed and C-FINDed on it in a second thread while the current one is fetched, so
    the source goes from one retrieval straight to the next: the ~50 ms of claim, query
    and ledger writes between two retrievals otherwise leave a slot idle 5% of the time
    on a 1 s retrieval. Without one, every request goes over the lane's association in
    turn. Each thread keeps its own counts; :attr:`counts` adds them up.
    """

    def __init__(
        self,
        ws: pipeline.Workspace,
        project: ProjectConfig,
        source_name: str,
        pull: str,
        handoff: Handoff,
        logger: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.ws, self.project, self.source_name, self.pull = ws, project, source_name, pull
        self.handoff, self.logger = handoff, logger
        self.source_index = project.sources.index(source_name)
        self.delays = ws.site.sources[source_name].retry_delays
        self.windows = ws.site.sources[source_name].windows
        self._said_closed = False
        self.fetch_counts: Counter[str] = Counter()
        self.find_counts: Counter[str] = Counter()
        self.cursor = scout_cursor(project.name, self.source_index, pull)
        self.front = 0  # the ledger id of the study being fetched
        #: Scouted studies a ledger error left claimed, with their pull and tries then
        #: (see :meth:`release_stranded`).
        self.stranded: dict[int, tuple[str | None, int]] = {}

    @property
    def counts(self) -> Counter[str]:
        return self.fetch_counts + self.find_counts

    def closed(self) -> bool:
        """Whether the source's extraction window has closed (said once in the log).

        Asked before every claim, query and retrieval, in both threads: a retrieval under
        way when it closes finishes, and nothing new is sent to the source after.
        """
        if is_open(self.windows, clock.now()):
            return False
        if not self._said_closed:
            self._said_closed = True
            self.logger.info(
                "the extraction window of %s has closed: no more claims", self.source_name
            )
        return True

    def run(
        self,
        association: SourceAssociation,
        finder: SourceAssociation | None,
        lane_seconds: float,
    ) -> None:
        """Work until no study waits for the source, its window closes, or another run
        waits for the slot (looked at every ``lane_seconds``); the study in hand, and one
        found ahead, are fetched first. Scouted studies a ledger error left claimed are
        given back at the end.
        """
        try:
            self._run(association, finder, lane_seconds)
        finally:
            self.release_stranded()

    def _run(
        self,
        association: SourceAssociation,
        finder: SourceAssociation | None,
        lane_seconds: float,
    ) -> None:
        turns = _Turns(self.source_name, self.pull, self.closed, lane_seconds, self.handoff)
        locate = partial(self.next_located, finder or association)
        # No thread exists until a first submit, so a lane without a finder costs none.
        with ThreadPoolExecutor(1, thread_name_prefix="find-ahead") as pool:
            ahead = pool if finder is not None else None
            study = locate() if turns.go_on() else None
            last = 0.0  # how long the lane's last retrieval took
            while study is not None:
                if self.closed():  # found while open, not yet asked for: the next pull's
                    _give_back(self.ws, study.id)
                    return
                upcoming = None
                self.front = study.id
                started = time.monotonic()
                if ahead is not None and turns.go_on():
                    slow = last > SLOW_RETRIEVAL_SECONDS
                    find = partial(
                        self.find_ahead,
                        finder,
                        delay=FIND_AHEAD_DELAY if slow else 0,
                        scout_until=started + last / 2 if slow else None,
                    )
                    upcoming = ahead.submit(contextvars.copy_context().run, find)
                fetched = self.fetch(study, association)
                last = time.monotonic() - started
                if not fetched:
                    _give_back(self.ws, study.id)
                    if upcoming is not None and (ahead_study := upcoming.result()) is not None:
                        _give_back(self.ws, ahead_study.id)
                    return
                if upcoming is not None:
                    study = upcoming.result()
                elif ahead is None and turns.go_on():
                    study = locate()
                else:
                    study = None

    def find_ahead(
        self, finder: SourceAssociation, delay: float, scout_until: float | None = None
    ) -> Study | None:
        """:meth:`next_located` on the finder, in the look-ahead thread, after ``delay``;
        then, until the monotonic time ``scout_until`` (half the last retrieval: the lane
        must not wait for a scouting query when its retrieval ends), :meth:`scout`.

        The lane's thread sends its next retrieval request at the moment this starts;
        the claim, C-FIND and ledger writes here compete with it for the interpreter
        and held it up by ~5 ms, a slot idle at the source. Beside a retrieval that
        takes seconds, a find that waits for the request to be out costs nothing. The
        finder stays open between finds: an idle association waits without polling
        (:mod:`pacsflow.dicom.quiet_reactor`), and opening one per find costs more.
        """
        if delay:
            time.sleep(delay)
        study = self.next_located(finder)
        if study is not None and scout_until is not None:
            try:
                self.scout(finder, scout_until)
            except Exception as exc:  # noqa: BLE001 - scouting is a help, never the lane's end
                # A ledger cut off mid-scout: the study scouted is in self.stranded, and
                # given back when the lane ends (release_stranded).
                self.logger.warning("scouting %s stopped: %s", self.source_name, type(exc).__name__)
                self.cursor.done = True
        return study

    def scout(self, finder: SourceAssociation, until: float) -> None:
        """Ask this source about studies from the end of the queue, to pass on early
        those it does not hold, while the lane's retrieval runs.

        Why: lanes take studies in ledger order, so studies only a later source holds
        (an archive's older ones, listed together in a manifest sorted by date) would
        wait for that source until this one had retrieved everything before them. Two
        sources of 3 and 2 slots spent half a run one after the other. A scouted study
        this source holds is given back as it was (its lane asks again when it takes
        it); one it lacks moves on now, as in :meth:`next_located`. At most
        :data:`SCOUT_PER_RETRIEVAL` queries per retrieval, only while the next source
        has less than :data:`SCOUT_AHEAD_ROUNDS` studies per slot waiting, and each study
        once per pull and process: scouting stops where it meets the lanes.
        """
        ws, project, index = self.ws, self.project, self.source_index
        if index + 1 >= len(project.sources) or self.cursor.done:
            return
        next_limit = ws.site.sources[project.sources[index + 1]].max_concurrent
        with ws.sessions() as session:
            waiting = claims.claimable_counts(session, project.name, self.pull)
        if waiting.get(index + 1, 0) >= SCOUT_AHEAD_ROUNDS * next_limit:
            return
        for _ in range(SCOUT_PER_RETRIEVAL):
            if time.monotonic() >= until or self.closed():
                return
            with ws.sessions() as session:
                study = self.cursor.take(session, ws.owner)
            if study is None:
                return
            try:
                if not self._scout_one(study, finder):
                    return
            except BaseException:
                self.stranded[study.id] = (study.pull, study.tries)
                raise

    def _scout_one(self, study: Study, finder: SourceAssociation) -> bool:
        """Ask about one scouted study and settle or give it back; False: stop scouting."""
        ws, project = self.ws, self.project
        if study.id <= self.front:  # the lanes are here already: nothing ahead
            self.cursor.done = True
            self._unclaim(study.id)
            return False
        try:
            located = pipeline.locate(
                ws, study.id, self.source_name, finder, project.ambiguity, project.sources
            )
        except Exception:  # the lane that takes it meets the error and records it
            self._unclaim(study.id)
            return False
        if self._settle(study, located, self.find_counts):
            self._unclaim(study.id)  # held here: its lane fetches it in turn
        return True

    def release_stranded(self) -> None:
        """Give back the scouted studies a ledger error left claimed, now that it may be
        back. Their claims are not this pull's (scouting leaves a study's pull as it was),
        so the run's orphan sweep does not see them, and this process's lease renewals
        would hold them until it ends.

        Only a study this process still holds with the pull and tries it had: the error
        may have come after the give-back was committed, and a lane of this process (the
        same owner) may since have claimed it for real, which makes it this pull's and
        counts a try.
        """
        owner = self.ws.owner
        for study_id, then in sorted(self.stranded.items()):
            try:
                with self.ws.sessions() as session:
                    study = session.get(Study, study_id)
                    if study is None or study.claimed_by != owner:
                        continue  # given back, or passed on
                    if (study.pull, study.tries) != then:
                        continue  # claimed since by a lane of this process
                    claims.unclaim(session, study_id, owner)
            except Exception as exc:  # noqa: BLE001 - the ledger is still away
                self.logger.warning(
                    "scouted study %s not given back (%s): it waits until this process ends",
                    study_id,
                    type(exc).__name__,
                )
        self.stranded.clear()

    def _unclaim(self, study_id: int) -> None:
        with self.ws.sessions() as session:
            claims.unclaim(session, study_id, self.ws.owner)

    def next_located(self, association: SourceAssociation) -> Study | None:
        """Claim the project's next study waiting for this source and C-FIND it there.

        Returns the study once the source holds it (to fetch); None when no study is
        waiting, or when the source's extraction window has closed: that is asked before
        each claim, since a find ahead, or a run of studies the source lacks, can outlast
        the opening. A study that ends here (exported before, ambiguous, expanded, passed on
        or not found, a failed query) is recorded in the ledger and counted, and the next
        one is claimed.
        """
        ws, project, counts = self.ws, self.project, self.find_counts
        while not self.closed():
            with ws.sessions() as session:
                study = claims.claim_next(
                    session, project.name, self.source_index, ws.owner, self.pull
                )
            if study is None:
                return None
            record = exported_before(project.name, study.ref)
            if record is not None:  # exported already; the ledger missed it
                with ws.sessions() as session:
                    repo.update_study(session, study.id, **record)
                    repo.mark_exported(session, study.id, record["exported_instances"])
                counts["exported_before"] += 1
                continue
            try:
                with self.handoff.times.measure("find"):
                    located = pipeline.locate(
                        ws,
                        study.id,
                        self.source_name,
                        association,
                        project.ambiguity,
                        project.sources,
                    )
            except Exception as exc:
                self.record_failure(study, failures.Step.FIND, exc, counts)
                continue
            if self._settle(study, located, counts):
                return study
        return None

    def _settle(self, study: Study, located: pipeline.Located, counts: Counter[str]) -> bool:
        """Record where a located study goes next; True when this source is to fetch it."""
        if located == pipeline.Located.FOUND:
            return True
        if located == pipeline.Located.AMBIGUOUS:  # ended; never passed to the next source
            counts["ambiguous"] += 1
            self.logger.warning(
                "study %s at %s is ambiguous; `pacsflow status` says why",
                study.id,
                self.source_name,
            )
        elif located == pipeline.Located.EXPANDED:  # its studies wait for this source
            counts["expanded"] += 1
        else:  # not here: the next source's lanes take it, or it ends not found
            with self.ws.sessions() as session:
                status = claims.pass_on(session, study.id, self.ws.owner, len(self.project.sources))
            counts["not_found" if status == "not_found" else "passed_on"] += 1
        return False

    def fetch(self, study: Study, association: SourceAssociation) -> bool:
        """Fetch a located study and hand it to the export lanes; False when they are gone
        (the run is ending on an error) and the study could not be handed on.
        """
        counts = self.fetch_counts
        try:
            with self.handoff.times.measure("fetch"):
                fetched = _fetch(
                    self.ws, study, self.source_name, association, self.project.allow_partial
                )
            if not fetched.exportable:  # ended partial: instances missing, not exported
                counts["partial"] += 1
                self.logger.warning(
                    "study %s at %s is partial (%d of %d instances); `pacsflow status` says why",
                    study.id,
                    self.source_name,
                    fetched.received,
                    fetched.expected,
                )
                return True
            self.handoff.put(study.id)
            counts["staged"] += 1
        except HandoffAbandoned:
            return False
        except Exception as exc:
            self.record_failure(study, failures.Step.FETCH, exc, counts)
        return True

    def record_failure(
        self, study: Study, step: failures.Step, exc: Exception, counts: Counter[str]
    ) -> None:
        """Record a study's failure in the ledger: deferred for a retry, or failed."""
        failure = failures.describe(step, exc)
        with self.ws.sessions() as session:
            delay = failures.record(
                session, study.id, self.ws.owner, failure, study.tries, self.delays
            )
        counts["failed" if delay is None else "deferred"] += 1
        self.logger.warning(
            "study %s at %s: %s: %s%s",
            study.id,
            self.source_name,
            failure.error_type,
            failure.public,
            "" if delay is None else f" (try {study.tries}; tried again in {delay:.1f} s)",
        )


class _Turns:
    """Whether a lane goes on to another study: asked once before each.

    Every ``lane_seconds`` it looks whether a run of another pull waits for the source's
    slot (then the lane ends and gives it back, so projects take turns); it also ends the lane when
    the source's extraction window closes or the run is ending on an error.
    """

    def __init__(
        self,
        source_name: str,
        pull: str,
        closed: Callable[[], bool],
        lane_seconds: float,
        handoff: Handoff,
    ) -> None:
        self.source_name, self.pull = source_name, pull
        self.closed, self.lane_seconds = closed, lane_seconds
        self.handoff = handoff
        self.deadline = time.monotonic() + lane_seconds

    def go_on(self) -> bool:
        if self.handoff.abandoned:
            return False
        if time.monotonic() >= self.deadline:
            if others_wait_for(source_tag(self.source_name), runtime_flow_run.get_id(), self.pull):
                return False  # the dispatcher of that run starts a lane with the slot
            self.deadline = time.monotonic() + self.lane_seconds
        return not self.closed()


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
    deid_processes.warm_up()
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
        queue_.done(study_id)
        counts[status] += 1
