"""The PostgreSQL and Prefect server fixtures: the ledger on PostgreSQL, flows on a real server."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from pacsflow.config import SiteConfig
from pacsflow.ledger import Study, StudyStatus, make_engine, migrate, repository, session_factory
from pacsflow.manifest import ManifestRow
from tests.concurrency import migrate_together
from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

PROJECT = "ledger-on-postgres"

ROWS = [
    ManifestRow(row=1, study_date=dt.date(2024, 3, 1), mrn="000123", accession_number="ACC1"),
    ManifestRow(
        row=2,
        study_date=dt.date(2024, 3, 2),
        mrn="000456",
        accession_number="ACC2",
        study_uid="1.2.826.0.1.3680043.8.498.1",
    ),
]


def test_ledger_on_postgres(ledger_url: str) -> None:
    assert ledger_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = make_engine(ledger_url)
    try:
        assert engine.dialect.name == "postgresql"
        migrate(engine)
        migrate(engine)  # idempotent
        sessions = session_factory(engine)

        with sessions() as session:
            first = repository.ingest_manifest(session, PROJECT, ROWS)
        assert (first.added, first.already_known) == (2, 0)

        with sessions() as session:
            again = repository.ingest_manifest(session, PROJECT, ROWS)
            assert (again.added, again.already_known) == (0, 2)
            count = session.scalar(select(func.count()).select_from(Study))
            assert count == 2
            assert [ref for _id, ref in repository.studies_to_process(session, PROJECT)]
            assert repository.status_counts(session, PROJECT)[StudyStatus.PENDING] == 2

        # The same studies in another project are other rows: uniqueness is per project.
        with sessions() as session:
            other = repository.ingest_manifest(session, "another-project", ROWS)
        assert other.added == 2

        # The database itself refuses a duplicate, whichever way the study is identified.
        duplicates = [
            {"mrn": "000123", "accession_number": "ACC1"},
            {"study_uid": "1.2.826.0.1.3680043.8.498.1"},
        ]
        for columns in duplicates:
            with sessions() as session:
                session.add(Study(project=PROJECT, study_date=dt.date(2024, 1, 1), **columns))
                with pytest.raises(IntegrityError, match="uq_study_project"):
                    session.commit()
    finally:
        engine.dispose()


def test_each_test_gets_a_fresh_ledger_database(ledger_url: str, postgres: PostgresServer) -> None:
    engine = make_engine(ledger_url)
    try:
        migrate(engine)
        with session_factory(engine)() as session:
            assert session.scalar(select(func.count()).select_from(Study)) == 0
    finally:
        engine.dispose()
    name = ledger_url.rsplit("/", 1)[1]
    with postgres.connect() as connection:
        names = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
    assert name in names
    assert "prefect" not in name


def test_flow_runs_are_recorded_on_the_prefect_server(
    prefect_api: str, postgres: PostgresServer
) -> None:
    from prefect import flow, get_client
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    assert PREFECT_API_URL.value() == prefect_api

    @flow(name="pacsflow-fixture-check")
    def trivial(x: int) -> tuple[str, int]:
        return str(flow_run.get_id()), x + 1

    run_id, result = trivial(1)
    assert result == 2

    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == prefect_api
        runs = {str(run.id): run for run in client.read_flow_runs()}
        assert run_id in runs
        run = runs[run_id]
        assert run.state is not None and run.state.is_completed(), run.state

    # ...and the server keeps it in its PostgreSQL database.
    with postgres.connect("prefect") as connection:
        state = connection.execute(
            "SELECT state_type FROM flow_run WHERE id = %s", (uuid.UUID(run_id),)
        ).fetchone()
    assert state is not None and state[0] == "COMPLETED"


def test_tag_concurrency_limit_round_trip(prefect_api: str) -> None:
    from prefect import get_client

    tag = "source:x"
    with get_client(sync_client=True) as client:
        try:
            client.create_concurrency_limit(tag=tag, concurrency_limit=2)
            limit = client.read_concurrency_limit_by_tag(tag)
            assert limit.tag == tag
            assert limit.concurrency_limit == 2
        finally:
            client.delete_concurrency_limit_by_tag(tag)


def test_flow_runs_starting_together_migrate_a_fresh_ledger_without_failing(
    ledger_url: str,
) -> None:
    assert migrate_together(ledger_url) == [None] * 4
    engine = make_engine(ledger_url)
    try:
        with session_factory(engine)() as session:
            assert repository.ingest_manifest(session, PROJECT, ROWS).added == 2
    finally:
        engine.dispose()


def test_pulls_starting_together_all_set_their_sources_limits(prefect_api: str) -> None:
    """Runs started at once each create the same source limits; none fails on the race.

    Prefect 3.9's create-or-update reads, then inserts, so all but one of the runs that
    find a limit missing at the same moment were refused with 409 Conflict (the
    two-workers benchmark lost one run of three this way).
    """
    from prefect import get_client

    from flows.limits import ensure_source_limits, image_limit_name, source_tag

    names = [f"race{uuid.uuid4().hex[:8]}-{n}" for n in range(3)]
    site = SiteConfig(
        ledger="sqlite:///unused.db",
        receiver={"ae_title": "RECV", "host": "127.0.0.1", "port": 11112},
        sources={
            name: {"ae_title": f"SRC{n}", "host": "127.0.0.1", "port": 104, "max_concurrent": 3}
            | {"max_images": 50}
            for n, name in enumerate(names)
        },
        destinations={"out": {"type": "filesystem", "path": "unused"}},
    )
    together = 8
    start = threading.Barrier(together)

    def pull() -> dict[str, int]:
        start.wait(timeout=30)
        return ensure_source_limits(site, names)

    try:
        with ThreadPoolExecutor(together) as pool:
            # Each in a copy of this context: it holds the Prefect settings (the API URL).
            runs = [pool.submit(contextvars.copy_context().run, pull) for _ in range(together)]
            results = [run.result(timeout=120) for run in runs]
        assert all(result == results[0] for result in results)
        with get_client(sync_client=True) as client:
            for name in names:
                assert client.read_concurrency_limit_by_tag(source_tag(name)).concurrency_limit == 3
                limit = client.read_global_concurrency_limit_by_name(image_limit_name(name))
                assert limit.limit == 50
    finally:
        with get_client(sync_client=True) as client:
            for name in names:
                with contextlib.suppress(Exception):
                    client.delete_concurrency_limit_by_tag(source_tag(name))
                with contextlib.suppress(Exception):
                    client.delete_global_concurrency_limit_by_name(image_limit_name(name))
