"""SandboxPacs speaks real DIMSE: echo, find, move to a registered destination, get."""

from __future__ import annotations

import datetime
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsflow.dicom.network import NODELAY_HANDLERS, make_ae
from pacsflow.sandbox import (
    FakePatient,
    PortInUseError,
    SandboxPacs,
    make_patients,
    make_study,
    write_study,
)
from pacsflow.sandbox.activity import (
    Operation,
    OperationKind,
    busy_window,
    fraction_at_least,
    max_in_flight,
    max_retrievals_in_flight,
    read_activity,
)

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Receiver:
    """A storage SCP that records the SOPInstanceUIDs it is sent."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()

    def handle_store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000


def _study_of(patient: FakePatient, **kwargs: Any) -> list[Dataset]:
    """``make_study`` for a patient from ``make_patients`` (their identity, other fields)."""
    return make_study(
        mrn=patient.mrn,
        patient_name=patient.name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        **kwargs,
    )


@pytest.fixture(scope="module")
def studies() -> list[list[Dataset]]:
    patients = make_patients(2, seed=7)
    ct = _study_of(
        patients[0],
        accession="ACC1001",
        study_date=datetime.date(2024, 3, 5),
        modality="CT",
        n_series=2,
        n_instances=3,
    )
    mr = _study_of(
        patients[1],
        accession="ACC1002",
        study_date=datetime.date(2024, 6, 20),
        modality="MR",
        n_series=1,
        n_instances=2,
    )
    return [ct, mr]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    rec = Receiver()
    ae = make_ae("DEST", timeout=5)
    for uid in (CTImageStorage, MRImageStorage):
        ae.add_supported_context(uid)
    port = free_port()
    ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, rec.handle_store), *NODELAY_HANDLERS],
    )
    yield rec, port
    ae.shutdown()


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory,
    studies: list[list[Dataset]],
    receiver: tuple[Receiver, int],
) -> Iterator[SandboxPacs]:
    storage = tmp_path_factory.mktemp("pacs")
    server = SandboxPacs("SANDBOX", free_port(), storage, destinations={"DEST": ("127.0.0.1", 0)})
    server.add_destination("DEST", "127.0.0.1", receiver[1])
    server.add_datasets(studies[0])  # before start: found by indexing the folder
    with server:
        server.add_datasets(studies[1])  # after start: indexed directly
        yield server


def associate(pacs: SandboxPacs, *contexts: str, **kwargs: object) -> Association:
    ae = make_ae("TESTSCU", timeout=5)
    for uid in contexts:
        ae.add_requested_context(uid)
    kwargs.setdefault("evt_handlers", list(NODELAY_HANDLERS))
    host, port = pacs.address
    return ae.associate(host, port, ae_title=pacs.ae_title, **kwargs)


def find(pacs: SandboxPacs, **keys: object) -> tuple[list[Dataset], int]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "PatientID", "AccessionNumber", "StudyDate"):
        setattr(query, keyword, "")
    query.PatientName = ""
    query.ModalitiesInStudy = ""
    query.NumberOfStudyRelatedInstances = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    assoc = associate(pacs, FIND)
    assert assoc.is_established
    matches, final = [], None
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            assert status is not None, "C-FIND got no response"
            if status.Status == 0xFF00:
                matches.append(identifier)
            else:
                final = status.Status
    finally:
        assoc.release()
    assert final is not None
    return matches, final


def test_echo(pacs: SandboxPacs) -> None:
    assoc = associate(pacs, Verification)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_find_by_study_uid(pacs: SandboxPacs, studies: list[list[Dataset]]) -> None:
    ct = studies[0]
    matches, status = find(pacs, StudyInstanceUID=ct[0].StudyInstanceUID)
    assert status == 0x0000
    assert len(matches) == 1
    match = matches[0]
    assert match.StudyInstanceUID == ct[0].StudyInstanceUID
    assert match.PatientName == ct[0].PatientName
    assert int(match.NumberOfStudyRelatedInstances) == 6
    assert int(match.NumberOfStudyRelatedSeries) == 2
    assert match.ModalitiesInStudy == "CT"
    assert match.RetrieveAETitle == "SANDBOX"


def test_find_by_uid_list(pacs: SandboxPacs, studies: list[list[Dataset]]) -> None:
    uids = [s[0].StudyInstanceUID for s in studies]
    matches, status = find(pacs, StudyInstanceUID=uids)
    assert status == 0x0000
    assert sorted(m.StudyInstanceUID for m in matches) == sorted(uids)


def test_find_by_patient_and_accession(pacs: SandboxPacs, studies: list[list[Dataset]]) -> None:
    mr = studies[1]
    matches, status = find(pacs, PatientID=mr[0].PatientID, AccessionNumber="ACC1002")
    assert status == 0x0000
    assert [m.StudyInstanceUID for m in matches] == [mr[0].StudyInstanceUID]
    assert int(matches[0].NumberOfStudyRelatedInstances) == 2
    assert matches[0].ModalitiesInStudy == "MR"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"StudyDate": "20240301-20240331"}, ["ACC1001"]),
        ({"StudyDate": "20240601-"}, ["ACC1002"]),
        ({"StudyDate": "-20241231"}, ["ACC1001", "ACC1002"]),
        ({"StudyDate": "20240620"}, ["ACC1002"]),
        ({"ModalitiesInStudy": "MR"}, ["ACC1002"]),
        ({"ModalitiesInStudy": ["CT", "PT"]}, ["ACC1001"]),
        ({"AccessionNumber": "ACC100*"}, ["ACC1001", "ACC1002"]),
    ],
)
def test_find_dates_modalities_wildcards(
    pacs: SandboxPacs, keys: dict[str, object], expected: list[str]
) -> None:
    matches, status = find(pacs, **keys)
    assert status == 0x0000
    assert sorted(m.AccessionNumber for m in matches) == expected


def test_find_no_match_is_success_without_identifiers(pacs: SandboxPacs) -> None:
    matches, status = find(pacs, PatientID="MRN0000000", AccessionNumber="NOPE")
    assert matches == []
    assert status == 0x0000


def test_move_sends_every_instance(
    pacs: SandboxPacs, studies: list[list[Dataset]], receiver: tuple[Receiver, int]
) -> None:
    rec = receiver[0]
    rec.received.clear()
    ct = studies[0]
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ct[0].StudyInstanceUID
    assoc = associate(pacs, MOVE)
    assert assoc.is_established
    statuses = [status.Status for status, _ in assoc.send_c_move(query, "DEST", MOVE)]
    assoc.release()
    assert statuses[-1] == 0x0000
    assert sorted(rec.received) == sorted(ds.SOPInstanceUID for ds in ct)


def test_move_to_unknown_destination_is_a801(
    pacs: SandboxPacs, studies: list[list[Dataset]]
) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = studies[0][0].StudyInstanceUID
    assoc = associate(pacs, MOVE)
    statuses = [status.Status for status, _ in assoc.send_c_move(query, "NOBODY", MOVE)]
    assoc.release()
    assert statuses == [0xA801]


def test_get_receives_every_instance(pacs: SandboxPacs, studies: list[list[Dataset]]) -> None:
    rec = Receiver()
    mr = studies[1]
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = mr[0].StudyInstanceUID
    assoc = associate(
        pacs,
        GET,
        CTImageStorage,
        MRImageStorage,
        ext_neg=[build_role(uid, scp_role=True) for uid in (CTImageStorage, MRImageStorage)],
        evt_handlers=[(evt.EVT_C_STORE, rec.handle_store), *NODELAY_HANDLERS],
    )
    assert assoc.is_established
    statuses = [status.Status for status, _ in assoc.send_c_get(query, GET)]
    assoc.release()
    assert statuses[-1] == 0x0000
    assert sorted(rec.received) == sorted(ds.SOPInstanceUID for ds in mr)


def test_offline_rejects_every_association(pacs: SandboxPacs) -> None:
    pacs.set_offline(True)
    try:
        assoc = associate(pacs, Verification)
        assert not assoc.is_established
        assert assoc.is_rejected
    finally:
        pacs.set_offline(False)
    assoc = associate(pacs, Verification)
    assert assoc.is_established
    assoc.release()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port}"):
            SandboxPacs("BUSY", port, tmp_path).start()


def test_port_zero_reports_the_real_port(tmp_path: Path) -> None:
    with SandboxPacs("ANYPORT", 0, tmp_path) as server:
        assert server.address[1] != 0
        assoc = associate(server, Verification)
        assert assoc.is_established
        assoc.release()


def test_add_files_copies_into_storage(tmp_path: Path, studies: list[list[Dataset]]) -> None:
    paths = write_study(studies[1], tmp_path / "elsewhere")
    server = SandboxPacs("COPY", 0, tmp_path / "storage")
    stored = server.add_files(paths)
    assert server.instance_count == len(paths)
    assert all(p.parent == tmp_path / "storage" and p.exists() for p in stored)


# -- busy archive: retrieve delay and the record of operations ---------------------------


def _op(seq: int, kind: str, started: float, ended: float) -> Operation:
    return Operation("PACS", seq, OperationKind(kind), started, ended, started, ended)


def test_max_in_flight_counts_overlaps_not_handovers() -> None:
    ops = [
        _op(1, "move", 0.0, 1.0),
        _op(2, "move", 1.0, 2.0),  # starts as the first ends: a handover, not two at once
        _op(3, "get", 0.5, 1.5),
        _op(4, "find", 0.6, 0.7),
    ]
    assert max_retrievals_in_flight(ops) == 2
    assert max_in_flight(ops) == 3
    assert max_in_flight(ops, {OperationKind.FIND}) == 1
    assert max_in_flight([]) == 0


def test_fraction_at_least_k_over_a_window() -> None:
    # Two retrievals overlap from 1 to 3; a find in that span does not count by default.
    ops = [_op(1, "move", 0.0, 3.0), _op(2, "get", 1.0, 5.0), _op(3, "find", 3.0, 4.0)]
    assert fraction_at_least(ops, 2, (0.0, 4.0)) == pytest.approx(0.5)
    assert fraction_at_least(ops, 1, (0.0, 4.0)) == pytest.approx(1.0)
    assert fraction_at_least(ops, 2, (2.0, 3.0)) == pytest.approx(1.0)  # clipped to window
    assert fraction_at_least(ops, 2, (0.0, 4.0), kinds=None) == pytest.approx(0.75)
    assert fraction_at_least(ops, 3, (0.0, 4.0)) == 0.0
    assert fraction_at_least(ops, 1, (4.0, 4.0)) == 0.0


def test_busy_window_ends_when_the_last_retrieval_starts() -> None:
    ops = [_op(1, "find", 0.2, 0.3), _op(2, "move", 0.3, 1.3), _op(3, "move", 0.9, 1.9)]
    assert busy_window(ops) == (0.2, 0.9)
    assert busy_window([_op(1, "find", 0.2, 0.3)]) == (0.0, 0.0)


def test_activity_log_reads_from_an_offset_and_skips_a_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "activity.jsonl"
    first, second = _op(1, "find", 0.0, 0.1), _op(2, "get", 0.1, 1.1)
    log.write_text(first.to_json() + "\n")
    offset = log.stat().st_size
    with open(log, "a") as out:
        out.write(second.to_json() + "\n" + second.to_json()[:10])
    assert read_activity(log) == [first, second]
    assert read_activity(log, offset) == [second]


def test_negative_retrieve_delay_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='"retrieve_delay" must not be negative'):
        SandboxPacs("SLOW", 0, tmp_path, retrieve_delay=-1)


def _get(pacs: SandboxPacs, study_uid: str, ready: threading.Barrier | None = None) -> list[int]:
    """C-GET one study; with ``ready``, wait for the other callers after associating."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    storage = (CTImageStorage, MRImageStorage)
    assoc = associate(
        pacs,
        GET,
        *storage,
        ext_neg=[build_role(uid, scp_role=True) for uid in storage],
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000), *NODELAY_HANDLERS],
    )
    assert assoc.is_established
    try:
        if ready is not None:
            ready.wait(timeout=10)
        return [status.Status for status, _ in assoc.send_c_get(query, GET)]
    finally:
        assoc.release()


def test_every_operation_is_recorded_in_memory_and_in_the_log(
    tmp_path: Path, studies: list[list[Dataset]], receiver: tuple[Receiver, int]
) -> None:
    log = tmp_path / "activity.jsonl"
    ct, mr = studies
    server = SandboxPacs(
        "RECORDED",
        0,
        tmp_path / "storage",
        destinations={"DEST": ("127.0.0.1", receiver[1])},
        retrieve_delay=0.2,
        activity_log=log,
    )
    server.add_datasets(ct + mr)
    with server:
        _, status = find(server, StudyInstanceUID=ct[0].StudyInstanceUID)
        assert status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ct[0].StudyInstanceUID
        assoc = associate(server, MOVE)
        assert [s.Status for s, _ in assoc.send_c_move(query, "DEST", MOVE)][-1] == 0x0000
        assoc.release()
        assert _get(server, mr[0].StudyInstanceUID)[-1] == 0x0000
    ops = server.activity
    assert [(op.seq, op.kind, op.instances) for op in ops] == [
        (1, OperationKind.FIND, 1),
        (2, OperationKind.MOVE, len(ct)),
        (3, OperationKind.GET, len(mr)),
    ]
    assert all(op.pacs == "RECORDED" and op.started <= op.ended for op in ops)
    assert all(op.ended - op.started >= 0.2 for op in ops[1:]), "retrievals wait the delay"
    assert ops[0].ended - ops[0].started < 0.2, "the delay is for retrievals only"
    assert read_activity(log) == ops


def test_a_retrieval_is_recorded_until_its_last_instance_is_stored(
    tmp_path: Path, studies: list[list[Dataset]]
) -> None:
    """A source is busy with a C-MOVE until its last sub-operation is done, not until it
    hands pynetdicom the last instance; the record is there once the answer is."""
    pause = 0.3
    slow = make_ae("SLOWDEST", timeout=5)
    slow.add_supported_context(CTImageStorage)
    port = free_port()

    def store_slowly(event: evt.Event) -> int:
        time.sleep(pause)
        return 0x0000

    slow.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store_slowly)]
    )
    ct = studies[0]
    server = SandboxPacs("RECORDED", 0, tmp_path, destinations={"SLOWDEST": ("127.0.0.1", port)})
    server.add_datasets(ct)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ct[0].StudyInstanceUID
    try:
        with server:
            assoc = associate(server, MOVE)
            statuses = [s.Status for s, _ in assoc.send_c_move(query, "SLOWDEST", MOVE)]
            recorded = server.activity
            assoc.release()
    finally:
        slow.shutdown()
    assert statuses[-1] == 0x0000
    assert [(op.kind, op.instances) for op in recorded] == [(OperationKind.MOVE, len(ct))]
    assert recorded[0].ended - recorded[0].started >= pause * len(ct)


def test_a_delayed_retrieval_does_not_hold_up_other_associations(
    tmp_path: Path, studies: list[list[Dataset]]
) -> None:
    callers = 4
    server = SandboxPacs("BUSY", 0, tmp_path, retrieve_delay=1.0)
    server.add_datasets(studies[1])
    ready = threading.Barrier(callers)
    results: list[list[int]] = []
    with server:
        threads = [
            threading.Thread(
                target=lambda: results.append(_get(server, studies[1][0].StudyInstanceUID, ready))
            )
            for _ in range(callers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert [statuses[-1] for statuses in results] == [0x0000] * callers
    # Serialised retrievals would never overlap; a busy archive serves them side by side.
    assert max_retrievals_in_flight(server.activity) == callers


def test_sandbox_command_serves_a_busy_archive_and_logs_it(tmp_path: Path) -> None:
    """``pacsflow sandbox --retrieve-delay --activity-log`` until SIGTERM, as benchmarks run it."""
    log = tmp_path / "activity.jsonl"
    primary = free_port()
    command = [
        sys.executable,
        "-m",
        "deployments.cli",
        "sandbox",
        "--folder",
        str(tmp_path / "site"),
        "--primary-port",
        str(primary),
        "--secondary-port",
        str(free_port()),
        "--receiver-port",
        str(free_port()),
        "--studies",
        "4",
        "--retrieve-delay",
        "0.3",
        "--activity-log",
        str(log),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert "Sandbox PACS running" in process.stdout.readline()
        remote = SandboxPacs("PRIMARY", primary, tmp_path)  # only for its address and AE
        matches, status = find(remote)
        assert status == 0x0000 and matches
        assert _get(remote, matches[0].StudyInstanceUID)[-1] == 0x0000
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    ops = read_activity(log)
    assert [(op.pacs, op.kind) for op in ops] == [
        ("PRIMARY", OperationKind.FIND),
        ("PRIMARY", OperationKind.GET),
    ]
    assert ops[1].ended - ops[1].started >= 0.3


def test_negative_drops_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r'"count" and "requests" must not be negative \(got -1'):
        SandboxPacs("X", 0, tmp_path).drop_instances(-1)


def test_an_activity_line_without_a_level_reads_as_unknown_level() -> None:
    line = (
        '{"pacs":"P","seq":1,"kind":"move","started":1.0,"ended":2.0,'
        '"started_wall":1.0,"ended_wall":2.0,"instances":3}'
    )
    assert Operation.from_json(line).level == ""
