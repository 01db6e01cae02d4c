"""De-identifying studies in processes of their own, so that they do not share one GIL.

Why: de-identification is CPU work in Python (reading, rewriting and checking every
element of every instance). In the flow run's process it took the interpreter lock from
the C-MOVE receiver and the retrieval lanes in the same process, so a run used one core
however many the machine had, and every retrieval waited for it. Each of
:data:`PROCESSES` processes de-identifies one study at a time; the run's export lanes
hand them studies and wait, holding no lock.

The processes are the sender processes of :mod:`pacsflow.export.sender_processes`, in a
pool of their own: started on a first study, kept for the life of the worker process,
ended with it. A study whose process dies (killed, out of memory), or takes longer than
its deadline (:data:`DEADLINE_SECONDS`), fails as retriable and is tried again by the next
pull; the process is replaced.

``PACSFLOW_DEID_PROCESSES=0`` de-identifies in the calling process instead (for a
debugger, or a machine that cannot start processes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
import weakref

from pacsflow.deid.profile import Profile
from pacsflow.deid.staged import StudyJob, StudyOutcome, deidentify_staged
from pacsflow.errors import RetriableError

LOGGER = logging.getLogger(__name__)

#: Processes per worker process: one per export lane of a run (flows.process.EXPORT_LANES),
#: leaving a core to the run's own process (its lanes and receiver). On two cores that is
#: one: with two, a run of three projects on two workers (six such processes beside the
#: servers) left the primary source at its limit for 30% of its busy time instead of 57%,
#: where one process changed little (45%, within that benchmark's spread).
PROCESSES = int(
    os.environ.get("PACSFLOW_DEID_PROCESSES", max(1, min(2, (os.cpu_count() or 2) - 1)))
)

#: How long a study may take in a de-identification process before the process is
#: ended and the study fails as retriable: a base, and a time per instance far above the
#: slowest seen (OCR of an ultrasound frame ~1 s; plain instances take milliseconds). A
#: study that hung (a library looping on a malformed file) held its export lane for good,
#: and, once the hand-off queue filled, the run's retrieval lanes with their slots.
DEADLINE_SECONDS = 120.0
DEADLINE_SECONDS_PER_INSTANCE = 2.0

#: A profile pickles to ~25 KB in 2 ms and loads in 2 ms: each is pickled once here and
#: loaded once per process there, then found by its digest.
_pickled: weakref.WeakKeyDictionary[Profile, tuple[str, bytes]] = weakref.WeakKeyDictionary()
_loaded: dict[str, Profile] = {}
_lock = threading.Lock()


def deidentify(job: StudyJob, profile: Profile) -> StudyOutcome:
    """:func:`deidentify_staged` in a de-identification process (or here, see above)."""
    if PROCESSES <= 0:
        return deidentify_staged(job, profile)
    # Here, not at the top: a de-identification process imports this module to run
    # _run, and needs none of the destinations that package brings.
    from pacsflow.export.sender_processes import call_in_process

    with _lock:
        if profile not in _pickled:
            data = pickle.dumps(profile)
            _pickled[profile] = (hashlib.blake2b(data, digest_size=16).hexdigest(), data)
        digest, data = _pickled[profile]
    deadline = DEADLINE_SECONDS + DEADLINE_SECONDS_PER_INSTANCE * len(job.files)
    return call_in_process("deid", PROCESSES, _run, (digest, data, job), deadline=deadline)


def warm_up() -> None:
    """Start a de-identification process now, for the calling export lane.

    A process imports pydicom and the de-identification code first (about 1 s of CPU).
    Started at its first study, it did so while that study, and the hand-off queue
    behind it, waited; started with the export lane, it imports while the lanes find and
    fetch their first studies. A process that cannot start now is not the lane's end:
    the first study tries again, and fails alone (retriable) if it still cannot.
    """
    if PROCESSES <= 0:
        return
    from pacsflow.export.sender_processes import call_in_process

    try:
        call_in_process("deid", PROCESSES, os.getpid, (), deadline=DEADLINE_SECONDS)
    except RetriableError as exc:  # no process now: the first study starts one, or fails alone
        LOGGER.warning("could not start a de-identification process yet: %s", exc)


def _run(digest: str, data: bytes, job: StudyJob) -> StudyOutcome:
    """In the de-identification process: the profile by its digest, then the study."""
    profile = _loaded.get(digest)
    if profile is None:
        profile = _loaded[digest] = pickle.loads(data)
    return deidentify_staged(job, profile)
