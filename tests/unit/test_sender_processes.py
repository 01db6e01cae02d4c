"""Sender processes: each call in a process of its own, failures handed back, deaths survived."""

from __future__ import annotations

import os

import pytest

from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export.sender_processes import run_in_processes
from tests.sender_calls import die, pid_after, refuse


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
