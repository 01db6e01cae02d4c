"""The steps of processing one study, as plain functions the Prefect tasks wrap.

Every step takes a :class:`Workspace` (the injected collaborators) and a ledger id,
reads the identifiers it needs from the ledger, records its result there, and returns
only values that are safe to show in Prefect: booleans, counts, source names.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from pacsflow import failures
from pacsflow.check import trusted_check
from pacsflow.config import AmbiguityPolicy, ProjectConfig, RetrieveMethod, SiteConfig
from pacsflow.deid import processes as deid_processes
from pacsflow.deid.pixels import PixelPolicy
from pacsflow.deid.profile import Profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.deid.staged import StudyJob
from pacsflow.dicom import integrity, routes, storage
from pacsflow.dicom.association import SourceAssociation
from pacsflow.dicom.matching import choose
from pacsflow.dicom.peers import AllowedPeers, allowed_peers
from pacsflow.dicom.query import StudyQuery, find_instances, find_studies
from pacsflow.dicom.receiver import process_receiver
from pacsflow.dicom.retrieve import (
    DestinationUnreachable,
    get_instances,
    get_study,
    move_instances,
    move_study,
)
from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export import make_destination
from pacsflow.filters import read_headers, select_instances
from pacsflow.ledger import repository as repo
from pacsflow.ledger.leases import LeaseKeeper
from pacsflow.ledger.models import Study, StudyStatus
from pacsflow.processes import this_process

LOGGER = logging.getLogger(__name__)


@dataclass
class Workspace:
    """What the steps need, built once per worker process and handed in."""

    site: SiteConfig
    sessions: sessionmaker[Session]
    #: Who holds this process's claims in the ledger (see pacsflow.ledger.claims).
    owner: str = field(default_factory=this_process)
    _leases: LeaseKeeper | None = field(default=None, repr=False)

    @property
    def leases(self) -> LeaseKeeper:
        """Renews this process's claims while a lane holds it (``with ws.leases.held():``)."""
        if self._leases is None:
            self._leases = LeaseKeeper(self.sessions, self.owner)
        return self._leases

    @cached_property
    def peers(self) -> AllowedPeers:
        """Who may send to our receiver (resolved once: hosts are looked up in DNS)."""
        return allowed_peers(self.site)

    @property
    def calling_ae(self) -> str:
        return self.site.receiver.ae_title

    @property
    def staging(self) -> Path:
        return Path(self.site.staging)

    def raw_dir(self, study: Study) -> Path:
        """The study's raw staging folder, this project's own (see storage.study_dir)."""
        return storage.study_dir(self.staging, study.project, study.found_study_uid)


def begin(ws: Workspace, study_id: int) -> bool:
    """Mark an attempt; False when the ledger says the study is already exported."""
    with ws.sessions() as session:
        if repo.get_study(session, study_id).status == StudyStatus.EXPORTED:
            return False
        repo.start_attempt(session, study_id)
    return True


class Located(StrEnum):
    """What a source said about a study (see :func:`locate`)."""

    FOUND = "found"  #: one study to retrieve from this source
    NOT_FOUND = "not_found"  #: not there: the next source may have it
    AMBIGUOUS = "ambiguous"  #: there, but not as exactly one study: ended, nothing retrieved
    EXPANDED = "expanded"  #: several studies, each now a ledger row of its own (policy all)


def locate(
    ws: Workspace,
    study_id: int,
    source_name: str,
    association: SourceAssociation | None = None,
    policy: AmbiguityPolicy = "none",
    sources: list[str] | None = None,
) -> Located:
    """C-FIND the study at one source, decide with the project's ambiguity ``policy``
    (:func:`pacsflow.dicom.matching.choose`) and record the outcome in the ledger.

    Several studies taken (policy ``all``) become rows of their own that wait for this
    source (:func:`pacsflow.ledger.repository.expand`); this row ends ``expanded``.
    An ambiguous study ends ``ambiguous`` here and is not asked of the next source: the
    primary holds it, only which study is meant is unclear, and a secondary answering
    with one match would not make the row any clearer; it would hide the question (and
    retrieve from a slower source what the primary has). ``association``: a lane's open
    association to the source, reused; else a new one.

    A fresh pre-flight check that found the study (:func:`pacsflow.check.trusted_check`)
    answers instead of a C-FIND: found here, or, given the project's ``sources`` in order,
    not here because a later source holds it.
    """
    source = ws.site.sources[source_name]
    with ws.sessions() as session:
        study = repo.get_study(session, study_id)
        query = StudyQuery(study.study_uid, study.mrn, study.accession_number)
        manifest_date = study.study_date
        trusted = trusted_check(study, source_name, sources, dt.datetime.now(dt.UTC))
    if trusted is not None:  # the check recorded source, found UID and instance count
        return Located.FOUND if trusted else Located.NOT_FOUND
    choice = choose(find_studies(source, ws.calling_ae, query, association), manifest_date, policy)
    if choice.not_found:
        return Located.NOT_FOUND
    if choice.ambiguous:
        with ws.sessions() as session:
            repo.mark_ambiguous(session, study_id, source_name, choice.reason)
        return Located.AMBIGUOUS
    if len(choice.studies) > 1:  # policy all: each study is retrieved as its own row
        with ws.sessions() as session:
            repo.expand(session, study_id, source_name, [m.study_uid for m in choice.studies])
        return Located.EXPANDED
    [match] = choice.studies
    expected = match.instances
    if expected is None:  # the source does not count: its list of instances does
        expected = len(find_instances(source, ws.calling_ae, match.study_uid, association))
    with ws.sessions() as session:
        repo.update_study(
            session,
            study_id,
            source=source_name,
            found_study_uid=match.study_uid,
            expected_instances=expected,
        )
    return Located.FOUND


def expected_instances(ws: Workspace, study_id: int) -> int | None:
    """Instances the source announced for the located study (None before it is located)."""
    with ws.sessions() as session:
        return repo.get_study(session, study_id).expected_instances


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` staged: counts, safe to show in Prefect."""

    received: int  #: instances held in raw staging
    expected: int  #: instances the source announced (or listed)
    refetches: int  #: IMAGE-level retrievals of missing instances it took
    #: False when instances are missing and the project does not export partial studies:
    #: the study has ended ``partial`` and its staging is cleared.
    exportable: bool

    @property
    def complete(self) -> bool:
        return self.received >= self.expected


def _retrieve_study(
    ws: Workspace,
    source_name: str,
    study_uid: str,
    folder: Path,
    association: SourceAssociation | None,
) -> None:
    """One STUDY-level C-MOVE (into our receiver) or C-GET into ``folder``."""
    source = ws.site.sources[source_name]
    if source.retrieve == RetrieveMethod.GET:
        get_study(source, ws.calling_ae, study_uid, folder, association)
        return
    _move_into(
        ws,
        study_uid,
        folder,
        lambda ae_title: move_study(source, ws.calling_ae, ae_title, study_uid, association),
    )


def _move_into(ws: Workspace, study_uid: str, folder: Path, move: Callable[[str], None]) -> None:
    """Run ``move(our receiver's AE title)`` while the receiver files the study in ``folder``.

    The receiver may be another worker process's (:func:`process_receiver` uses one that
    already serves the port), and that process ends with its flow run. A move sent in the
    moment after is refused by the source (0xA801: cannot reach the destination), and
    waiting out the study's retry delay left the source without a retrieval for seconds
    while other studies waited (6 s in a run of three projects on two workers). Then this
    process serves the port itself and asks once more, at once, in the same slot.
    """
    receiver = process_receiver(ws.site.receiver, ws.staging, ws.peers)
    try:
        with routes.expect_study(ws.staging, study_uid, folder):
            move(receiver.config.ae_title)
    except DestinationUnreachable:
        if not receiver.shared:
            raise  # our own receiver is up: the source does not know it
        LOGGER.info("the receiver of another process went away; serving its port here")
        receiver = process_receiver(ws.site.receiver, ws.staging, ws.peers, recheck=True)
        with routes.expect_study(ws.staging, study_uid, folder):
            move(receiver.config.ae_title)


def _retrieve_missing(
    ws: Workspace,
    source_name: str,
    study_uid: str,
    folder: Path,
    association: SourceAssociation | None,
) -> int:
    """IMAGE-level C-MOVE or C-GET of the instances the source lists and ``folder``
    lacks, one request per series; returns how many requests were sent (0: none missing).
    """
    source = ws.site.sources[source_name]
    listed = find_instances(source, ws.calling_ae, study_uid, association)
    missing = set(storage.missing_instances(folder, [i.sop_uid for i in listed]))
    by_series: dict[str, list[str]] = {}
    for instance in listed:
        if instance.sop_uid in missing:
            by_series.setdefault(instance.series_uid, []).append(instance.sop_uid)
    for series_uid, sop_uids in by_series.items():
        if source.retrieve == RetrieveMethod.GET:
            get_instances(
                source, ws.calling_ae, study_uid, series_uid, sop_uids, folder, association
            )
            continue
        _move_into(
            ws,
            study_uid,
            folder,
            lambda ae_title, series=series_uid, sops=sop_uids: move_instances(
                source, ws.calling_ae, ae_title, study_uid, series, sops, association
            ),
        )
    return len(by_series)


def fetch(
    ws: Workspace,
    study_id: int,
    source_name: str,
    association: SourceAssociation | None = None,
    allow_partial: bool = False,
) -> Fetched:
    """Retrieve a located study into raw staging, completely if the source lets us.

    The count to reach is the C-FIND's (see :func:`locate`). When fewer instances
    arrive, only the missing ones are fetched again, by their SOP Instance UIDs, up to
    the source's retry count (``len(retry_delays)``) within this attempt and without
    waiting: the slot is held, and a source that drops part of a transfer usually sends
    the rest when asked. Instances already received are kept, also across attempts: a
    folder that holds some (a try cut off by an error, a killed run) is completed, not
    fetched again.

    Still short after that, the study ends ``partial`` (staging cleared, nothing
    exported) unless ``allow_partial``; then it goes on to export and the ledger keeps
    both counts. Nothing received at all is a retriable error, as is an aborted transfer
    (the files it delivered stay for the next try).
    """
    source = ws.site.sources[source_name]
    with ws.sessions() as session:
        study = repo.get_study(session, study_id)
        study_uid, expected = study.found_study_uid, study.expected_instances
    if not study_uid:
        raise PermanentError("fetch called before the study was located")
    folder = ws.raw_dir(study)
    if expected is None:  # located by an older pacsflow: ask for the list now
        expected = len(find_instances(source, ws.calling_ae, study_uid, association))
    refetches = 0
    if storage.count_instances(folder) == 0:
        _retrieve_study(ws, source_name, study_uid, folder, association)
    for _ in range(len(source.retry_delays)):
        if storage.count_instances(folder) >= expected:
            break
        sent = _retrieve_missing(ws, source_name, study_uid, folder, association)
        refetches += sent
        if not sent:  # the source lists nothing more to fetch
            break
    received = storage.count_instances(folder)
    with ws.sessions() as session:
        repo.update_study(
            session, study_id, expected_instances=expected, received_instances=received
        )
    if received == 0:
        raise RetriableError(
            f"received 0 of {expected} instances from {source_name}; the study will be "
            "fetched again"
        )
    fetched = Fetched(received, expected, refetches, exportable=True)
    if fetched.complete or allow_partial:
        if not fetched.complete:
            LOGGER.warning(
                "study %s: exporting %d of %d instances (the project allows partial studies)",
                study_id,
                received,
                expected,
            )
        return fetched
    with ws.sessions() as session:
        repo.mark_partial(session, study_id, _shortfall(source_name, received, expected, refetches))
    storage.clear(folder)
    return Fetched(received, expected, refetches, exportable=False)


def _shortfall(source_name: str, received: int, expected: int, refetches: int) -> str:
    """Why a study is partial, with both counts and the way out; no identifiers."""
    return (
        f"received {received} of {expected} instances from {source_name}, after "
        f"{refetches} IMAGE-level re-fetches of the missing ones; once the source holds "
        "them, `pacsflow requeue --status partial`, or set allow_partial: true in the "
        "project to export what arrives"
    )


def _partial_export(study: Study) -> str | None:
    """The ledger's note on a study exported with instances missing (allow_partial)."""
    expected, received = study.expected_instances, study.received_instances
    if expected is None or received is None or received >= expected:
        return None
    return (
        f"exported partial: received {received} of {expected} instances from "
        f"{study.source} after re-fetching the missing ones (the project allows partial studies)"
    )


def _patient_key(study, first_file: Path) -> str:
    """What a patient's pseudonym and date shift are keyed on: the MRN, else the
    PatientID the source holds (a manifest row with only a study UID)."""
    if study.mrn:
        return study.mrn
    return str(pydicom.dcmread(first_file, stop_before_pixels=True).get("PatientID", ""))


def _finish(
    ws: Workspace,
    study,
    status: StudyStatus,
    reason: str | None,
    *folders: Path,
    error_type: str | None = None,
) -> str:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    with ws.sessions() as session:
        repo.update_study(
            session, study.id, status=status, last_error=reason, error_type=error_type
        )
    storage.clear(ws.raw_dir(study))
    return status.value


def deidentify_and_export(
    ws: Workspace,
    study_id: int,
    project: ProjectConfig,
    pseudonymizer: Pseudonymizer,
    profile: Profile,
    stage: Callable[[str], AbstractContextManager[object]] = lambda _name: nullcontext(),
) -> str:
    """Filter, de-identify, check and export the staged study; returns its final status.

    ``stage(name)`` is entered around the ``"de-identify"`` and the ``"export"`` step, so
    a caller can time them (the run's time-per-stage artifact, flows/stages.py).

    Each instance is de-identified in memory and passed through the PHI gate before it
    is written, so an instance with a leak never reaches a file, let alone the
    destination. One leak quarantines the whole study, with the attribute paths (never
    the values) in the ledger. A study whose series are all filtered out is excluded.
    A partial study (its project allows them, see :func:`fetch`) is exported with
    ``error_type="partial"`` and both counts kept in the ledger.
    """
    with ws.sessions() as session:
        study = repo.get_study(session, study_id)
    raw = ws.raw_dir(study)
    files = sorted(raw.glob("*.dcm"))
    if not files:
        raise RetriableError("no retrieved instances in staging; the study will be fetched again")
    selection = select_instances(read_headers(files), project.modalities, project.filters)
    if not selection.kept:
        return _finish(ws, study, StudyStatus.EXCLUDED, selection.summary())

    patient_key = _patient_key(study, files[0])
    patient = study.participant_id or pseudonymizer.patient_id(patient_key)
    pseudo_study = pseudonymizer.uid(study.found_study_uid)
    work = ws.staging / "deid" / study.ref
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # Pixel PHI: every original instance is inspected before the profile runs.
    pixel_policy = PixelPolicy.for_project(project)
    job = StudyJob(
        files=tuple(selection.kept),
        out_dir=work,
        pseudonymizer=pseudonymizer,
        patient_key=patient_key,
        patient=patient,
        pixels=pixel_policy,
        source=study.source,
        mrn=study.mrn,
        accession=study.accession_number,
    )
    try:
        with stage("de-identify"):
            outcome = deid_processes.deidentify(job, profile)
    except integrity.CorruptInstance:
        shutil.rmtree(work, ignore_errors=True)  # nothing of it stays, identifiable or not
        storage.clear(raw)
        raise
    result, verdicts = outcome.result, outcome.verdicts
    ocr_images = sum(v.ocr_images for v in verdicts)
    if ocr_images:
        seconds = sum(v.ocr_seconds for v in verdicts)
        LOGGER.info("study %s: OCR of %d images took %.2f s", study_id, ocr_images, seconds)
    held: list[str] = []
    held_by: list[str] = []  # the error type: what held it, no identifiers
    pixel_held = [v for v in verdicts if not v.exportable]
    if pixel_held:  # quarantined like a leak, with rule names (never the text found)
        reasons = sorted({reason for v in pixel_held for reason in v.reasons})
        held.append(
            f"pixel policy {pixel_policy.mode.value} held {len(pixel_held)} of "
            f"{len(selection.kept)} instances: " + "; ".join(reasons)
        )
        held_by.append("pixel policy")
        LOGGER.warning("study %s quarantined by the pixel policy", study_id)
    if not result.gate.passed:
        held.append(result.gate.summary())
        held_by.append("PHI gate")
        LOGGER.warning("study %s quarantined by the PHI gate", study_id)
    if held:
        return _finish(
            ws,
            study,
            StudyStatus.QUARANTINED,
            "; ".join(held),
            work,
            error_type=" and ".join(held_by),
        )

    destination = make_destination(ws.site.destinations[project.destination])
    with stage("export"), failures.during(failures.Step.EXPORT):
        receipt = destination.export(work, project.name, patient, pseudo_study)
    with ws.sessions() as session:
        repo.update_study(
            session, study_id, pseudo_patient_id=patient, pseudo_study_uid=pseudo_study
        )
        repo.mark_exported(session, study_id, receipt.instances, _partial_export(study))
    shutil.rmtree(work, ignore_errors=True)
    storage.clear(raw)
    return StudyStatus.EXPORTED.value


def record_not_found(ws: Workspace, study_id: int) -> None:
    with ws.sessions() as session:
        repo.update_study(session, study_id, status=StudyStatus.NOT_FOUND, source=None)


def record_failure(ws: Workspace, study_id: int, reason: str) -> None:
    with ws.sessions() as session:
        repo.mark_failed(session, study_id, reason)
