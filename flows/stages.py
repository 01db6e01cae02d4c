"""Time per stage of a run (find, fetch, de-identify, export), for its markdown artifact.

The lanes of one ``process-studies`` run time their steps into one :class:`StageTimes`
(a ``perf_counter`` pair and a locked add per step: nothing a study would notice); at the
end the run shows where its time went. Only seconds and study counts: no identifiers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.artifacts import create_markdown_artifact

#: The stages a study goes through, in order.
STAGES = ("find", "fetch", "de-identify", "export")


class StageTimes:
    """Seconds spent in each stage and how many studies went through it, over all lanes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: Counter[str] = Counter()
        self.studies: Counter[str] = Counter()

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Time one study's ``stage``; counted whether the step succeeds or fails."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
        with self._lock:
            self.seconds[stage] += seconds
            self.studies[stage] += 1

    def markdown(self, wall_seconds: float) -> str:
        """A table of the stages: studies, total and mean seconds, share of the lanes' time."""
        busy = sum(self.seconds.values())
        lines = [
            "| stage | studies | seconds (all lanes) | mean s per study | share of lane time |",
            "|---|---:|---:|---:|---:|",
        ]
        for stage in STAGES:
            n, seconds = self.studies[stage], self.seconds[stage]
            mean = f"{seconds / n:.3f}" if n else "-"
            share = f"{100 * seconds / busy:.0f}%" if busy else "-"
            lines.append(f"| {stage} | {n} | {seconds:.1f} | {mean} | {share} |")
        lines += [
            "",
            f"Run time {wall_seconds:.1f} s. Lanes work in parallel, so their seconds add up "
            "to more than the run time; the time a lane waits for a source's slot or for an "
            "export lane is in no stage.",
        ]
        return "\n".join(lines)


def stage_times_artifact(times: StageTimes, project: str, wall_seconds: float) -> None:
    """The run's markdown artifact of time per stage."""
    create_markdown_artifact(
        key=f"{project}-stage-times",
        markdown=times.markdown(wall_seconds),
        description=f"Where this run of project {project} spent its time (no patient data).",
    )
