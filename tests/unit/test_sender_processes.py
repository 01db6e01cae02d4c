"""Sender processes: each call in a process of its own, failures handed back, deaths survived."""

from __future__ import annotations

import os
import threading

import pytest

from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export.sender_processes import run_in_processes
from tests.sender_calls import die, die_or_pid, pid_after, refuse


def test_calls_run_at_once_in_processes_of_their_own() -> None:
    pids = run_in_processes(2, pid_after, [(0.5,), (0.5,)])
    assert len(set(pids)) == 2  # two senders, not one after the other in one
    assert os.getpid() not in pids
    assert sorted(run_in_processes(2, pid_after, [(0,), (0,)])) == sorted(pids)  # kept


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
