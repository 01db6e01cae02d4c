"""How many runs share a pull: a chunk run only for studies enough to be worth its start."""

import pytest

from flows.extract import STUDIES_PER_WORKER, chunk_count


@pytest.mark.parametrize(
    ("todo", "workers", "per_worker", "expected"),
    [
        (40, 2, 100, 1),  # a small pull stays in the run that has started already
        (100, 2, 100, 1),
        (101, 2, 100, 2),
        (10_000, 4, 100, 4),  # never more than the workers asked for
        (250, 8, 100, 3),
        (3, 2, 1, 2),  # a test that wants the split sets studies_per_worker=1
        (0, 2, 100, 1),
    ],
)
def test_a_pull_is_split_only_when_each_run_gets_enough_studies(
    todo, workers, per_worker, expected
):
    assert chunk_count(todo, workers, per_worker) == expected


def test_the_default_keeps_a_one_hundred_study_pull_in_one_run():
    assert chunk_count(STUDIES_PER_WORKER, 2, STUDIES_PER_WORKER) == 1
    assert chunk_count(STUDIES_PER_WORKER + 1, 2, STUDIES_PER_WORKER) == 2
