"""What a sandbox PACS was doing and when: its own record of the operations it served.

A source's limit is only shown to hold by the source itself: pacsflow's view of its slots
can be wrong, the PACS's view of its open requests cannot. :class:`SandboxPacs` records
every C-FIND, C-MOVE and C-GET it serves as an :class:`Operation`; the functions here
answer the benchmarks' questions about such a record (how many ran at once, and for how
much of a run the source was kept at its limit). They are pure, so they are tested on
hand-written intervals.

Times are ``time.monotonic()`` (one clock for every process on a Linux host, so a
benchmark can compare them with its own) and the wall clock (for another host).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path


class OperationKind(StrEnum):
    """The DIMSE services a sandbox PACS records (PS3.4 Annex C.4)."""

    FIND = "find"
    MOVE = "move"
    GET = "get"


#: The kinds that move data, and that a retrieve delay slows down.
RETRIEVALS: frozenset[OperationKind] = frozenset({OperationKind.MOVE, OperationKind.GET})


@dataclass(frozen=True)
class Operation:
    """One request the PACS served, from the handler's start to its last response."""

    pacs: str  # the PACS's AE title
    seq: int  # order of arrival at this PACS, from 1
    kind: OperationKind
    started: float  # time.monotonic()
    ended: float
    started_wall: float  # time.time()
    ended_wall: float
    instances: int = 0  # sub-operations (retrievals) or matches (finds)
    #: The request's QueryRetrieveLevel (STUDY, IMAGE...): a re-fetch of missing
    #: instances is an IMAGE-level retrieval. "" in logs written before it was recorded.
    level: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Operation:
        data = json.loads(line)
        data["kind"] = OperationKind(data["kind"])
        return cls(**data)


def read_activity(path: Path, offset: int = 0) -> list[Operation]:
    """The operations recorded in a JSONL activity log, from byte ``offset`` on.

    A benchmark notes the file's size before a phase and passes it as ``offset`` to read
    only that phase. A last line without its newline (a write under way) is skipped.
    """
    with open(path, "rb") as log:
        log.seek(offset)
        data = log.read()
    lines = data.split(b"\n")
    return [Operation.from_json(line.decode()) for line in lines[:-1] if line.strip()]


def _of_kinds(ops: Iterable[Operation], kinds: Collection[OperationKind] | None) -> list:
    return [op for op in ops if kinds is None or op.kind in kinds]


def _changes(ops: Iterable[Operation]) -> list[tuple[float, int]]:
    """(time, +1 or -1) for every start and end, ends first at equal times.

    An operation that ends at the instant another starts did not run beside it, so a
    source that hands a slot straight over is not counted above its limit.
    """
    changes = [(op.started, 1) for op in ops] + [(op.ended, -1) for op in ops]
    return sorted(changes)


def max_in_flight(ops: Iterable[Operation], kinds: Collection[OperationKind] | None = None) -> int:
    """The most operations (of ``kinds``; None for all) that ran at the same time."""
    running = peak = 0
    for _time, change in _changes(_of_kinds(ops, kinds)):
        running += change
        peak = max(peak, running)
    return peak


def max_retrievals_in_flight(ops: Iterable[Operation]) -> int:
    """The most C-MOVEs and C-GETs that ran at the same time."""
    return max_in_flight(ops, RETRIEVALS)


def fraction_at_least(
    ops: Iterable[Operation],
    k: int,
    window: tuple[float, float],
    kinds: Collection[OperationKind] | None = RETRIEVALS,
) -> float:
    """The fraction of ``window`` (start, end) during which >= ``k`` operations ran.

    By default only retrievals count, as a source limit is about them. An empty window
    gives 0.0, since nothing can be said to have been kept at its limit.
    """
    start, end = window
    if end <= start:
        return 0.0
    running = 0
    covered = 0.0
    last = start
    for time, change in _changes(_of_kinds(ops, kinds)):
        clipped = min(max(time, start), end)
        if running >= k:
            covered += clipped - last
        last = clipped
        running += change
    if running >= k:
        covered += end - last
    return covered / (end - start)


def busy_window(ops: Iterable[Operation]) -> tuple[float, float]:
    """(first operation's start, last retrieval's start): the span while work remained.

    Once the last retrieval has started no study is left waiting, so a source below its
    limit after that is the run draining, not a slot left idle.
    """
    ops = list(ops)
    retrievals = _of_kinds(ops, RETRIEVALS)
    if not retrievals:
        return (0.0, 0.0)
    return (min(op.started for op in ops), max(op.started for op in retrievals))
