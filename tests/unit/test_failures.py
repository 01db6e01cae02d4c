"""Error classes, and retries with backoff and jitter, as the ledger records them."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from deployments.cli import app
from pacsflow import failures
from pacsflow.errors import ConfigError, PermanentError, RetriableError, SourceUnavailable
from pacsflow.failures import ErrorClass, Step
from pacsflow.ledger import Study, claims
from pacsflow.ledger import repository as repo
from tests.ledger_rows import ledger_with_studies

PROJECT = "p1"
OWNER = "test-owner"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, factory = ledger_with_studies(tmp_path, PROJECT, 3)
    yield factory
    engine.dispose()


def _raised(step: Step, exc: Exception) -> Exception:
    """``exc`` as it leaves code that runs inside ``failures.during(step)``."""
    try:
        with failures.during(step):
            raise exc
    except Exception as caught:
        return caught
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("step", "exc", "expected"),
    [
        (Step.FIND, SourceUnavailable("source PRIMARY did not answer"), ErrorClass.TRANSIENT),
        (Step.FETCH, RetriableError("received 3 of 4 instances"), ErrorClass.TRANSIENT),
        (Step.FIND, PermanentError("source answered status 0xC001"), ErrorClass.SOURCE_REJECTED),
        (Step.FETCH, ValueError("bad dataset"), ErrorClass.SOURCE_REJECTED),
        (Step.DEIDENTIFY, ValueError("Invalid value for VR PN"), ErrorClass.DEID_FAILED),
        (Step.DEIDENTIFY, ConfigError("profile file: unknown keyword"), ErrorClass.DEID_FAILED),
        (Step.EXPORT, PermanentError("node refused the association"), ErrorClass.EXPORT_FAILED),
        (Step.EXPORT, RetriableError("node is out of resources"), ErrorClass.TRANSIENT),
    ],
)
def test_each_failure_gets_the_class_that_says_what_to_do(step, exc, expected):
    assert failures.describe(step, exc).error_type == expected.value


def test_an_export_error_inside_the_export_lane_is_an_export_failure():
    """The export lane describes everything as de-identification; the export step says
    which part raised."""
    exc = _raised(Step.EXPORT, PermanentError("the destination refused our credentials"))
    failure = failures.describe(Step.DEIDENTIFY, exc)
    assert failure.error_type == "export_failed"
    assert not failure.retriable
    assert failures.describe(Step.DEIDENTIFY, KeyError("x")).error_type == "deid_failed"


def test_the_ledger_database_going_away_mid_statement_is_transient_and_retried():
    """PostgreSQL restarted while a step ran a statement: not the source's fault."""
    lost = OperationalError("SELECT ... WHERE mrn = %(mrn)s", {"mrn": "MRN0012345"}, Exception())
    failure = failures.describe(Step.FIND, lost)
    assert (failure.error_type, failure.retriable) == ("transient", True)
    assert "MRN0012345" not in failure.public  # SQLAlchemy quotes the parameters


def test_a_library_error_keeps_its_text_out_of_the_class_and_the_public_message():
    failure = failures.describe(Step.DEIDENTIFY, ValueError("DOE^JANE MRN0012345"))
    assert failure.error_type == "deid_failed"
    assert "DOE" not in failure.public and "MRN0012345" not in failure.public
    assert "MRN0012345" in failure.detail  # the ledger keeps the full text


def test_jitter_stays_within_its_fraction_of_the_delay_and_varies():
    rng = random.Random(7)
    delays = [failures.jittered(10.0, rng) for _ in range(200)]
    assert all(7.5 <= d <= 12.5 for d in delays)
    assert len({round(d, 6) for d in delays}) > 150  # not one fixed value
    assert min(delays) < 8.5 and max(delays) > 11.5  # spread over the range
    assert failures.jittered(0.0, rng) == 0.0
    again = random.Random(7)
    assert [failures.jittered(10.0, again) for _ in range(200)] == delays  # reproducible


def test_a_transient_failure_is_deferred_with_growing_jittered_delays_then_fails(sessions):
    """Backoff: try n waits about retry_delays[n-1]; after the last one the study fails
    ``transient`` and the next pull tries it again."""
    delays = [2.0, 8.0, 32.0]
    rng = random.Random(1)
    failure = failures.describe(Step.FIND, SourceUnavailable("source PRIMARY did not answer"))
    waited = []
    for expected in delays:
        with sessions() as session:
            study = claims.claim_next(session, PROJECT, 0, OWNER, "pull-1")
            assert study is not None and study.id == 1
            before = dt.datetime.now(dt.UTC)
            delay = failures.record(session, study.id, OWNER, failure, study.tries, delays, rng)
            row = session.get(Study, 1, populate_existing=True)
        assert delay is not None and 0.75 * expected <= delay <= 1.25 * expected
        waited.append(delay)
        # While it waits, the ledger says why, and it is not claimable before its delay.
        assert (row.status, row.error_type, row.claimed_by) == ("retrieving", "transient", None)
        assert "PRIMARY did not answer" in row.last_error
        expires = row.claim_expires.replace(tzinfo=dt.UTC)
        assert abs((expires - before).total_seconds() - delay) < 1.0
        with sessions() as session:  # make it claimable now instead of waiting
            session.get(Study, 1).claim_expires = None
            session.commit()
    assert waited == sorted(waited)  # these delays grow even with the jitter
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, OWNER, "pull-1")
        assert study is not None and study.id == 1 and study.tries == 4
        assert failures.record(session, 1, OWNER, failure, study.tries, delays, rng) is None
        row = session.get(Study, 1, populate_existing=True)
    assert (row.status, row.error_type) == ("failed", "transient")


def test_not_found_is_recorded_as_its_class_and_counted(sessions):
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, OWNER, "pull-1")
        claims.pass_on(session, study.id, OWNER, n_sources=2)
        row = session.get(Study, study.id, populate_existing=True)
        assert (row.status, row.error_type) == ("retrieving", None)  # on to the secondary
        study = claims.claim_next(session, PROJECT, 1, OWNER, "pull-1")
        claims.pass_on(session, study.id, OWNER, n_sources=2)
        exc = _raised(Step.EXPORT, PermanentError("refused"))
        second = claims.claim_next(session, PROJECT, 0, OWNER, "pull-1")
        failures.record(session, second.id, OWNER, failures.describe(Step.DEIDENTIFY, exc), 1, [])
        assert repo.error_class_counts(session, PROJECT) == [
            ("failed", "export_failed", 1),
            ("not_found", "not_found", 1),
        ]
        assert repo.error_class_counts(session, PROJECT, pull="another") == []


def test_status_shows_the_error_classes(sessions, tmp_path):
    with sessions() as session:
        study = claims.claim_next(session, PROJECT, 0, OWNER, "pull-1")
        claims.pass_on(session, study.id, OWNER, n_sources=1)
        study = claims.claim_next(session, PROJECT, 0, OWNER, "pull-1")
        failure = failures.describe(Step.FIND, SourceUnavailable("PRIMARY is down"))
        failures.record(session, study.id, OWNER, failure, 1, [])
    config = tmp_path / "pacsflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ledger": f"sqlite:///{tmp_path / 'ledger.db'}",
                "staging": str(tmp_path / "staging"),
                "sources": {"vna": {"ae_title": "VNA", "host": "127.0.0.1", "port": 104}},
                "destinations": {"local": {"type": "filesystem", "path": str(tmp_path / "x")}},
            }
        )
    )
    runner = CliRunner()
    args = ["status", "--project", PROJECT, "--config", str(config)]
    shown = runner.invoke(app, [*args, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["error_classes"] == [
        {"status": "failed", "error_class": "transient", "studies": 1},
        {"status": "not_found", "error_class": "not_found", "studies": 1},
    ]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "error class" in table.output and "transient" in table.output
