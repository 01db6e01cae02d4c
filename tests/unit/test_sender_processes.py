"""Sender processes: each call in a process of its own, failures handed back, deaths survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export import sender_processes
from pacsflow.export.sender_processes import run_in_processes
from tests.sender_calls import die, die_or_pid, pid_after, raise_odd, refuse

REPO = Path(__file__).resolve().parents[2]


def test_calls_run_at_once_in_processes_of_their_own() -> None:
    pids = run_in_processes(2, pid_after, [(0.5,), (0.5,)])
    assert len(set(pids)) == 2  # two senders, not one after the other in one
    assert os.getpid() not in pids
    again = run_in_processes(2, pid_after, [(0.5,), (0.5,)])  # overlapping: both senders
    assert sorted(again) == sorted(pids)  # the same two, kept


def test_a_failure_in_a_sender_is_raised_here_and_the_sender_lives_on() -> None:
    [pid] = run_in_processes(1, pid_after, [(0,)])
    with pytest.raises(PermanentError, match="node refused"):
        run_in_processes(1, refuse, [("node refused the SOP class",)])
    assert run_in_processes(1, pid_after, [(0,)]) == [pid]


def test_a_sender_that_dies_fails_its_call_as_retriable_and_is_replaced() -> None:
    [pid] = run_in_processes(3, pid_after, [(0,)])
    with pytest.raises(RetriableError, match="ended during the transfer"):
        run_in_processes(3, die, [()])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the dead sender was reaped, not left as a zombie
    [after] = run_in_processes(3, pid_after, [(0,)])
    assert after != pid  # a new sender took its place


def test_a_call_waiting_for_a_sender_gets_a_new_one_when_the_busy_one_dies() -> None:
    # One sender for two calls: the first kills it; the second, waiting its turn, must
    # be given a new sender instead of waiting for ever for the dead one.
    outcome: list[BaseException] = []

    def both() -> None:
        try:
            run_in_processes(1, die_or_pid, [(True,), (False,)])
        except BaseException as exc:  # noqa: BLE001 - looked at below
            outcome.append(exc)

    caller = threading.Thread(target=both, daemon=True)  # a hang must not block pytest's exit
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "the second call still waits for the dead sender"
    [error] = outcome
    assert isinstance(error, RetriableError) and "ended during the transfer" in str(error)
    [pid] = run_in_processes(1, die_or_pid, [(False,)])
    assert pid != os.getpid()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_sender_ends_soon_after_its_parent_is_killed_mid_call(tmp_path: Path) -> None:
    # A C-STORE of a large study takes minutes; a parent SIGKILLed meanwhile must not
    # leave its senders sending (and holding its stdout open) until they are done.
    pid_file = tmp_path / "sender.pid"
    script = (
        "from pacsflow.export.sender_processes import run_in_processes\n"
        "from tests.sender_calls import write_pid_and_sleep\n"
        f"run_in_processes(1, write_pid_and_sleep, [({str(pid_file)!r}, 60)])\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the sender never started its call"
            assert parent.poll() is None, "the parent ended before its sender started"
            time.sleep(0.05)
        sender = int(pid_file.read_text())
        assert not gone(sender)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while not gone(sender):
        assert time.monotonic() < deadline, "the sender outlived its killed parent"
        time.sleep(0.1)


def test_a_sender_that_died_while_idle_is_not_handed_a_call() -> None:
    [pid] = run_in_processes(4, pid_after, [(0,)])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    # Until it can be reaped (our child: ask without reaping it, the pool does that).
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [after] = run_in_processes(4, pid_after, [(0,)])  # succeeds, on a new sender
    assert after != pid


def test_an_exception_that_does_not_unpickle_comes_back_as_a_pacsflow_error() -> None:
    with pytest.raises(PermanentError, match="OddError: odd"):
        run_in_processes(1, raise_odd, [()])


def test_an_installed_pacsflow_puts_no_site_packages_before_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import site

    installed = site.getsitepackages()[0]
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(sender_processes, "_PACKAGE_ROOT", str(Path(installed).resolve()))
    assert "PYTHONPATH" not in sender_processes._environment()

    checkout = "/srv/pacsflow-checkout"  # not installed: the sender needs it on its path
    monkeypatch.setattr(sender_processes, "_PACKAGE_ROOT", checkout)
    assert sender_processes._environment()["PYTHONPATH"] == checkout
