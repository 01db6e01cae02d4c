"""The steps of processing one study, as plain functions the Prefect tasks wrap.

Every step takes a :class:`Workspace` (the injected collaborators) and a ledger id,
reads the identifiers it needs from the ledger, records its result there, and returns
only values that are safe to show in Prefect: booleans, counts, source names.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from pacsflow.config import ProjectConfig, RetrieveMethod, SiteConfig
from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.phi_gate import GateResult, find_leaks, identifiers_from
from pacsflow.deid.pixels import PixelPolicy, inspect_instance
from pacsflow.deid.profile import DeidContext, Profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.dicom import storage
from pacsflow.dicom.query import StudyQuery, find_study
from pacsflow.dicom.receiver import process_receiver
from pacsflow.dicom.retrieve import get_study, move_study
from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export import make_destination
from pacsflow.filters import read_headers, select_instances
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import StudyStatus

LOGGER = logging.getLogger(__name__)


@dataclass
class Workspace:
    """What the steps need, built once per worker process and handed in."""

    site: SiteConfig
    sessions: sessionmaker[Session]
    locks: storage.StudyLocks = field(default_factory=storage.StudyLocks)

    @property
    def calling_ae(self) -> str:
        return self.site.receiver.ae_title

    @property
    def staging(self) -> Path:
        return Path(self.site.staging)


def begin(ws: Workspace, study_id: int) -> bool:
    """Mark an attempt; False when the ledger says the study is already exported."""
    with ws.sessions() as session:
        if repo.get_study(session, study_id).status == StudyStatus.EXPORTED:
            return False
        repo.start_attempt(session, study_id)
    return True


def locate(ws: Workspace, study_id: int, source_name: str) -> bool:
    """C-FIND the study at one source; record what was found. True when it is there."""
    source = ws.site.sources[source_name]
    with ws.sessions() as session:
        study = repo.get_study(session, study_id)
        query = StudyQuery(study.study_uid, study.mrn, study.accession_number)
    match = find_study(source, ws.calling_ae, query)
    if match is None:
        return False
    with ws.sessions() as session:
        repo.update_study(
            session,
            study_id,
            source=source_name,
            found_study_uid=match.study_uid,
            expected_instances=match.instances,
        )
    return True


def expected_instances(ws: Workspace, study_id: int) -> int | None:
    """Instances the source announced for the located study (None if it did not say)."""
    with ws.sessions() as session:
        return repo.get_study(session, study_id).expected_instances


def fetch(ws: Workspace, study_id: int, source_name: str) -> int:
    """Retrieve a located study into raw staging; returns the number of instances held.

    Fewer instances than the source announced is a retriable error: a later attempt
    starts again from an empty folder.
    """
    source = ws.site.sources[source_name]
    with ws.sessions() as session:
        study = repo.get_study(session, study_id)
        study_uid, expected = study.found_study_uid, study.expected_instances
    if not study_uid:
        raise PermanentError("fetch called before the study was located")
    folder = storage.study_dir(ws.staging, study_uid)
    with ws.locks.for_study(study_uid):
        storage.clear(folder)
        if source.retrieve == RetrieveMethod.GET:
            outcome = get_study(source, ws.calling_ae, study_uid, ws.staging)
        else:
            receiver = process_receiver(ws.site.receiver, ws.staging)
            outcome = move_study(source, ws.calling_ae, receiver.config.ae_title, study_uid)
        received = storage.count_instances(folder)
    with ws.sessions() as session:
        repo.update_study(session, study_id, received_instances=received)
    wanted = expected if expected is not None else outcome.completed
    if received == 0 or received < wanted or outcome.failed:
        raise RetriableError(
            f"received {received} of {wanted} instances from {source_name} "
            f"({outcome.failed} sub-operations failed)"
        )
    return received


def _patient_key(study, first_file: Path) -> str:
    """What a patient's pseudonym and date shift are keyed on: the MRN, else the
    PatientID the source holds (a manifest row with only a study UID)."""
    if study.mrn:
        return study.mrn
    return str(pydicom.dcmread(first_file, stop_before_pixels=True).get("PatientID", ""))


def _finish(ws: Workspace, study, status: StudyStatus, reason: str | None, *folders: Path) -> str:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    with ws.sessions() as session:
        repo.update_study(session, study.id, status=status, last_error=reason)
    with ws.locks.for_study(study.found_study_uid):
        storage.clear(storage.study_dir(ws.staging, study.found_study_uid))
    return status.value


def deidentify_and_export(
    ws: Workspace,
    study_id: int,
    project: ProjectConfig,
    pseudonymizer: Pseudonymizer,
    profile: Profile,
) -> str:
    """Filter, de-identify, check and export the staged study; returns its final status.

    Each instance is de-identified in memory and passed through the PHI gate before it
    is written, so an instance with a leak never reaches a file, let alone the
    destination. One leak quarantines the whole study, with the attribute paths (never
    the values) in the ledger. A study whose series are all filtered out is excluded.
    """
    with ws.sessions() as session:
        study = repo.get_study(session, study_id)
    raw = storage.study_dir(ws.staging, study.found_study_uid)
    files = sorted(raw.glob("*.dcm"))
    if not files:
        raise RetriableError("no retrieved instances in staging; the study will be fetched again")
    selection = select_instances(read_headers(files), project.modalities, project.filters)
    if not selection.kept:
        return _finish(ws, study, StudyStatus.EXCLUDED, selection.summary())

    patient_key = _patient_key(study, files[0])
    patient = study.participant_id or pseudonymizer.patient_id(patient_key)
    context = DeidContext.for_patient(pseudonymizer, patient_key, patient)
    pseudo_study = pseudonymizer.uid(study.found_study_uid)
    work = ws.staging / "deid" / study.ref
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    leaks: set[str] = set()
    failed_instances = 0
    # Pixel PHI (issue 7): every original instance is inspected before the profile runs.
    pixel_policy = PixelPolicy.for_project(project)
    pixel_reasons: set[str] = set()
    pixel_held = ocr_images = 0
    ocr_seconds = 0.0
    allowed: dict[tuple[int, str | None, str], bool] = {}  # the same for every instance

    def allows(tag: int, creator: str | None, manufacturer: str) -> bool:
        key = (int(tag), creator, manufacturer)
        if key not in allowed:
            allowed[key] = profile.allows(tag, creator, manufacturer)
        return allowed[key]

    for number, path in enumerate(selection.kept):
        ds = read_instance(path)
        originals = identifiers_from(ds, mrn=study.mrn, accession=study.accession_number)
        manufacturer = str(ds.get("Manufacturer", ""))
        verdict = inspect_instance(ds, pixel_policy)  # pixel PHI: may mask or strip in place
        ocr_images, ocr_seconds = ocr_images + verdict.ocr_images, ocr_seconds + verdict.ocr_seconds
        if not verdict.exportable:
            pixel_reasons.update(verdict.reasons)
            pixel_held += 1
            continue
        profile.deidentify(ds, context)
        found = find_leaks(
            ds,
            originals,
            allows=lambda tag, creator, m=manufacturer: allows(tag, creator, m),
        )
        if found:
            leaks.update(found)
            failed_instances += 1
            continue
        write_instance(ds, work / f"{number:05d}.dcm")
    if ocr_images:
        LOGGER.info("study %s: OCR of %d images took %.2f s", study_id, ocr_images, ocr_seconds)
    held: list[str] = []
    if pixel_reasons:  # pixel PHI: quarantined like a leak, with rule names (never text)
        held.append(
            f"pixel policy {pixel_policy.mode.value} held {pixel_held} of "
            f"{len(selection.kept)} instances: " + "; ".join(sorted(pixel_reasons))
        )
        LOGGER.warning("study %s quarantined by the pixel policy", study_id)
    if leaks:
        result = GateResult(
            passed=False,
            paths=tuple(sorted(leaks)),
            instances=len(selection.kept),
            failed_instances=failed_instances,
        )
        held.append(result.summary())
        LOGGER.warning("study %s quarantined by the PHI gate", study_id)
    if held:
        return _finish(ws, study, StudyStatus.QUARANTINED, "; ".join(held), work)

    destination = make_destination(ws.site.destinations[project.destination])
    receipt = destination.export(work, project.name, patient, pseudo_study)
    with ws.sessions() as session:
        repo.update_study(
            session, study_id, pseudo_patient_id=patient, pseudo_study_uid=pseudo_study
        )
        repo.mark_exported(session, study_id, receipt.instances)
    shutil.rmtree(work, ignore_errors=True)
    with ws.locks.for_study(study.found_study_uid):
        storage.clear(raw)
    return StudyStatus.EXPORTED.value


def record_not_found(ws: Workspace, study_id: int) -> None:
    with ws.sessions() as session:
        repo.update_study(session, study_id, status=StudyStatus.NOT_FOUND, source=None)


def record_failure(ws: Workspace, study_id: int, reason: str) -> None:
    with ws.sessions() as session:
        repo.mark_failed(session, study_id, reason)
