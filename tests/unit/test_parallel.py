"""run_all: every call ends before the first failure is raised."""

from __future__ import annotations

import threading
import time

import pytest

from pacsflow.export.parallel import run_all


def test_results_come_in_call_order() -> None:
    assert run_all(lambda x: x * 2, [(1,), (2,), (3,)], name="t") == [2, 4, 6]
    assert run_all(lambda: 1, [], name="t") == []


def test_a_failure_is_raised_only_once_every_call_has_ended() -> None:
    ended = threading.Event()

    def call(fail: bool) -> None:
        if fail:
            raise ValueError("first batch refused")
        time.sleep(0.3)  # still sending when the other call fails
        ended.set()

    with pytest.raises(ValueError, match="first batch refused"):
        run_all(call, [(True,), (False,)], name="t")
    assert ended.is_set()
