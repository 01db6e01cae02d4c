"""De-identification processes write what the calling process would, and stand for it.

A study goes to another process with its profile pickled; if anything were lost on the
way (a rule, an option, the key), the output would differ from the same study
de-identified in the calling process.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path

import pytest

from pacsflow.deid import processes
from pacsflow.deid.pixels import PixelPolicy
from pacsflow.deid.profile import build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.deid.staged import StudyJob, deidentify_staged
from pacsflow.errors import RetriableError
from pacsflow.export import sender_processes
from pacsflow.sandbox.synthetic import make_study, write_study

PSEUDO = Pseudonymizer(bytes(range(32)))
MRN = "MRN0000042"


def _job(tmp_path: Path, out: str) -> StudyJob:
    patient = {"mrn": MRN, "patient_name": "NGUYEN^AN", "birth_date": dt.date(1961, 3, 12)}
    study = {"accession": "ACC42", "study_date": dt.date(2022, 5, 6), "sex": "F"}
    source = tmp_path / "in"
    if not source.exists():
        write_study(make_study(**patient, **study, n_series=2, n_instances=2), source)
    return StudyJob(
        files=tuple(sorted(source.glob("*.dcm"))),
        out_dir=tmp_path / out,
        pseudonymizer=PSEUDO,
        patient_key=MRN,
        patient=PSEUDO.patient_id(MRN),
        pixels=PixelPolicy(),
        source="primary",
        mrn=MRN,
        accession="ACC42",
    )


def _written(result) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [path.read_bytes() for path in result.written]


def _deid_pids() -> set[int]:
    pool = sender_processes._pools[("deid", processes.PROCESSES)]
    return {sender.process.pid for sender in pool._idle}


OPTIONS = ("retain_longitudinal_modified_dates", "clean_descriptors")


@pytest.mark.parametrize("options", [(), OPTIONS])
def test_a_study_deidentified_in_another_process_is_written_as_here(tmp_path, options):
    profile = build_profile("basic", list(options))
    here = deidentify_staged(_job(tmp_path, "here"), profile)
    there = processes.deidentify(_job(tmp_path, "there"), profile)
    assert there.result.exportable and here.result.exportable
    assert len(there.result.written) == 4
    assert _written(there.result) == _written(here.result)
    assert there.verdicts == here.verdicts
    assert os.getpid() not in _deid_pids()  # it ran elsewhere


def test_a_killed_deidentification_process_fails_its_study_as_retriable_and_is_replaced(
    tmp_path, monkeypatch
):
    profile = build_profile("basic")
    processes.deidentify(_job(tmp_path, "first"), profile)  # a process is up
    # A process killed under a study: the call it runs is the one that fails.
    job = _job(tmp_path, "killed")
    monkeypatch.setattr(processes, "_run", _kill_myself)
    with pytest.raises(RetriableError, match="ended during"):
        processes.deidentify(job, profile)
    monkeypatch.undo()
    again = processes.deidentify(_job(tmp_path, "again"), profile)
    assert again.result.exportable and len(again.result.written) == 4


def test_a_study_that_hangs_in_its_process_fails_as_retriable_past_its_deadline(
    tmp_path, monkeypatch
):
    """The hung process is ended (it would hold its export lane, and the lanes behind it,
    for good) and the next study gets a new one."""
    profile = build_profile("basic")
    processes.deidentify(_job(tmp_path, "first"), profile)  # a process is up
    (hung,) = _deid_pids()
    monkeypatch.setattr(processes, "DEADLINE_SECONDS", 1.0)
    monkeypatch.setattr(processes, "DEADLINE_SECONDS_PER_INSTANCE", 0.0)
    monkeypatch.setattr(processes, "_run", _hang)
    with pytest.raises(RetriableError, match="^sender process \\d+ did not answer within 1 s"):
        processes.deidentify(_job(tmp_path, "hangs"), profile)
    with pytest.raises(ProcessLookupError):
        os.kill(hung, 0)  # ended and reaped
    monkeypatch.undo()
    again = processes.deidentify(_job(tmp_path, "again"), profile)
    assert again.result.exportable and len(again.result.written) == 4
    assert hung not in _deid_pids()


def _hang(digest, data, job):  # type: ignore[no-untyped-def]
    import time

    time.sleep(600)


def test_an_error_in_a_deidentification_process_arrives_as_raised_there(tmp_path, monkeypatch):
    """Same type, same message: the pipeline records it as it would its own (the detail in
    the ledger, only the type in Prefect)."""
    monkeypatch.setattr(processes, "_run", _fail_quoting_the_patient)
    with pytest.raises(ValueError, match=r"^cannot parse NGUYEN\^AN MRN0000042, in \d+$") as raised:
        processes.deidentify(_job(tmp_path, "failed"), build_profile("basic"))
    assert int(str(raised.value).rpartition(" ")[2]) != os.getpid()


def _fail_quoting_the_patient(digest, data, job):  # type: ignore[no-untyped-def]
    raise ValueError(f"cannot parse NGUYEN^AN {job.mrn}, in {os.getpid()}")


def _kill_myself(digest, data, job):  # type: ignore[no-untyped-def]
    os.kill(os.getpid(), signal.SIGKILL)


def test_an_export_lane_goes_on_when_no_deidentification_process_can_start_yet(monkeypatch, caplog):
    def no_process():
        raise RetriableError("could not start a sender process: [Errno 11] EAGAIN")

    monkeypatch.setattr(sender_processes, "_pools", {})
    monkeypatch.setattr(sender_processes, "_Sender", no_process)
    processes.warm_up()  # does not raise: the lane goes on to its first study
    assert "could not start a de-identification process yet" in caplog.text
