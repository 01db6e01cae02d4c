"""Time per stage: what the run's markdown artifact says about where the time went."""

from __future__ import annotations

import pytest

from flows.stages import STAGES, StageTimes


def test_stages_are_summed_over_lanes_and_shown_in_order() -> None:
    times = StageTimes()
    times.add("fetch", 3.0)
    times.add("find", 0.5)
    times.add("fetch", 1.0)
    times.add("find", 0.5)
    with pytest.raises(RuntimeError), times.measure("export"):  # a failed step counts too
        raise RuntimeError("destination down")

    assert times.studies == {"find": 2, "fetch": 2, "export": 1}
    assert times.seconds["fetch"] == 4.0
    lines = times.markdown(wall_seconds=2.5).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| stage")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == list(STAGES)
    assert rows[0] == "| find | 2 | 1.0 | 0.500 | 20% |"
    assert rows[1] == "| fetch | 2 | 4.0 | 2.000 | 80% |"
    assert rows[2] == "| de-identify | 0 | 0.0 | - | 0% |"
    assert "Run time 2.5 s" in lines[-1]


def test_an_unknown_stage_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown stage 'deid'; the stages are find, fetch"):
        StageTimes().add("deid", 1.0)
