"""Calls run at once in threads, all waited for before the first failure is raised.

A destination sends one study over several connections. Raising as soon as one fails
would let the caller count what the destination holds while the others still send; so
every call ends first, and then the first failure (in call order) is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def run_all(function: Callable[..., Any], calls: Iterable[tuple], *, name: str) -> list[Any]:
    """``function(*args)`` for each ``args`` of ``calls``, each in a thread named ``name``-N."""
    calls = list(calls)
    if not calls:
        return []
    with ThreadPoolExecutor(len(calls), thread_name_prefix=name) as threads:
        futures = [threads.submit(function, *args) for args in calls]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]
