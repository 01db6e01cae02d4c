"""The floor pacsflow is measured against: a careful bare pynetdicom + pydicom script.

What a capable engineer would write for one project on one afternoon, with none of
pacsflow's guarantees (no ledger, no limits shared across runs, no PHI gate, no retries):
``k`` threads, each with its own association to the source (pynetdicom has no concurrent
requests on one association), and per manifest row

1. C-FIND at study level by PatientID and AccessionNumber;
2. C-MOVE into the script's own storage SCP, or C-GET over the same association;
3. de-identification of comparable work: about 30 element operations, private tags
   removed, every instance UID (references included) remapped to a keyed ``2.25`` UID,
   file to file;
4. written to ``<out>/<pseudonym>/<study uid>/<instance uid>.dcm``.

It sets TCP_NODELAY on every socket and its SCP supports only the storage SOP classes the
benchmarks send (both field-note advice). Nothing here imports pacsflow: a baseline that
shared pacsflow's code would share its costs.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
STORAGE = (CTImageStorage, MRImageStorage)
KEY = b"bare-baseline-key"

# Attribute operations of the kind PS3.15's Basic Profile asks for: removed, emptied, or
# replaced by a pseudonym. About 30 per instance, as pacsflow's profile does.
_REMOVE = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientAge",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "IssuerOfPatientID",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PerformingPhysicianName",
    "RequestingPhysician",
    "StationName",
    "DeviceSerialNumber",
    "AdditionalPatientHistory",
    "ImageComments",
    "InstitutionalDepartmentName",
    "MedicalRecordLocator",
    "InstanceCreatorUID",
    "ScheduledProcedureStepID",
    "RequestedProcedureID",
)
_EMPTY = (
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "StudyDescription",
    "SeriesDescription",
    "StudyDate",
    "StudyTime",
)
# Instance UIDs (not SOP classes or transfer syntaxes, all under this root).
_STANDARD_UID_ROOT = "1.2.840.10008."


@dataclass(frozen=True)
class BareResult:
    seconds: float
    studies: int
    instances: int
    not_found: int


def _nodelay(event: evt.Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _remap(uid: str) -> str:
    return generate_uid(prefix=None, entropy_srcs=[KEY.hex(), uid])


def deidentify_file(source: Path, out_dir: Path) -> Path:
    """Read ``source``, de-identify it in place in memory and write it under ``out_dir``."""
    ds = pydicom.dcmread(source)
    ds.remove_private_tags()
    for keyword in _REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in _EMPTY:
        if keyword in ds:
            setattr(ds, keyword, "")
    pseudonym = hmac.new(KEY, str(ds.PatientID).encode(), hashlib.sha256).hexdigest()[:16]
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value and not str(elem.value).startswith(_STANDARD_UID_ROOT):
            elem.value = _remap(str(elem.value))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "bare baseline"
    target = out_dir / pseudonym / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def _store_into(incoming: Path):
    """An EVT_C_STORE handler writing the received bytes to ``incoming/<study uid>/``."""

    def handle(event: evt.Event) -> int:
        study = event.dataset.StudyInstanceUID  # pydicom parses only what is accessed
        folder = incoming / str(study)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(
            event.encoded_dataset()
        )
        return 0x0000

    return handle


def _find_study(assoc, row: dict[str, str]) -> str | None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = row["mrn"]
    query.AccessionNumber = row["accession_number"]
    query.StudyInstanceUID = ""
    found = None
    for status, identifier in assoc.send_c_find(query, FIND):
        if not status or status.Status not in (0x0000, 0xFF00, 0xFF01):
            raise RuntimeError(f"C-FIND failed for {row['accession_number']}: {status}")
        if status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found = str(identifier.StudyInstanceUID)
    return found


def _retrieve(assoc, study_uid: str, method: str, move_ae: str) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    responses = (
        assoc.send_c_move(query, move_ae, MOVE)
        if method == "move"
        else assoc.send_c_get(query, GET)
    )
    final = None
    for status, _identifier in responses:
        final = status
    if not final or final.Status != 0x0000:
        raise RuntimeError(f"C-{method.upper()} of a study failed: {final}")


def run_bare(
    rows: Sequence[dict[str, str]],
    source: tuple[str, str, int],
    *,
    k: int,
    method: str,
    out_dir: Path,
    work_dir: Path,
    ae_title: str = "BARE",
    scp_port: int | None = None,
) -> BareResult:
    """Find, retrieve, de-identify and write every row with ``k`` threads; timed.

    ``source`` is (AE title, host, port). For C-MOVE the source must know ``ae_title`` at
    ``scp_port`` as a destination.
    """
    if method == "move" and scp_port is None:
        raise ValueError('Argument "scp_port" is needed for method "move".')
    source_ae, host, port = source
    incoming = work_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    handle_store = _store_into(incoming)
    scp = None
    if method == "move":
        scp = AE(ae_title=ae_title)
        scp.maximum_pdu_size = 0
        # Explicit VR first: the acceptor's order picks the syntax, and pynetdicom's list
        # starts with implicit VR, which makes the source re-encode every instance.
        # pacsflow's receiver does the same, so this costs neither side more.
        syntaxes = [
            ExplicitVRLittleEndian,
            *(t for t in ALL_TRANSFER_SYNTAXES if t != ExplicitVRLittleEndian),
        ]
        for uid in STORAGE:
            scp.add_supported_context(uid, syntaxes)
        scp.start_server(
            (host, scp_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, handle_store), (evt.EVT_CONN_OPEN, _nodelay)],
        )
    work: queue.SimpleQueue = queue.SimpleQueue()
    for row in rows:
        work.put(row)
    totals = {"studies": 0, "instances": 0, "not_found": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            _work()
        except BaseException as exc:  # reported by run_bare, not lost in a thread
            errors.append(exc)

    def _work() -> None:
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = 0
        ae.add_requested_context(FIND)
        ae.add_requested_context(MOVE if method == "move" else GET)
        handlers = [(evt.EVT_CONN_OPEN, _nodelay)]
        roles = []
        if method == "get":
            for uid in STORAGE:
                ae.add_requested_context(uid)
            roles = [build_role(uid, scp_role=True) for uid in STORAGE]
            handlers.append((evt.EVT_C_STORE, handle_store))
        assoc = ae.associate(host, port, ae_title=source_ae, ext_neg=roles, evt_handlers=handlers)
        if not assoc.is_established:
            raise RuntimeError(f"could not associate with {source_ae} at {host}:{port}")
        try:
            while True:
                try:
                    row = work.get_nowait()
                except queue.Empty:
                    return
                study_uid = _find_study(assoc, row)
                if study_uid is None:
                    with lock:
                        totals["not_found"] += 1
                    continue
                _retrieve(assoc, study_uid, method, ae_title)
                files = sorted((incoming / study_uid).glob("*.dcm"))
                for path in files:
                    deidentify_file(path, out_dir)
                shutil.rmtree(incoming / study_uid, ignore_errors=True)
                with lock:
                    totals["studies"] += 1
                    totals["instances"] += len(files)
        finally:
            assoc.release()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, name=f"bare-{i}") for i in range(k)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    if scp is not None:
        scp.shutdown()
    if errors:
        raise RuntimeError(f"the bare baseline failed: {errors[0]}") from errors[0]
    return BareResult(seconds, totals["studies"], totals["instances"], totals["not_found"])
