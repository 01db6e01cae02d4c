"""Engines and migrations. Nothing here runs at import: callers pass the URL."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).parent / "migrations"
LOGGER = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, creates the folder and allows several threads.

    SQLite gets WAL mode and a 30 s busy timeout because lanes write from several
    threads (and worker processes) at once. PostgreSQL gets ``pool_pre_ping`` and
    connections that wait for a restarting server (:func:`_wait_for_the_server`).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL never corrupts the file; a power cut may lose the last
            # commits, which a rerun redoes (an export already in place is found there).
            # FULL would fsync every commit, several per study.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True)
    _wait_for_the_server(engine)
    return engine


#: How long a new connection to a client-server ledger (PostgreSQL) keeps trying while
#: the server is down or starting up, before the error reaches the caller.
RECONNECT_SECONDS = 60.0
#: Longest pause between two connection attempts.
RECONNECT_MAX_PAUSE = 2.0


def _wait_for_the_server(engine: Engine, seconds: float | None = None) -> None:
    """Make every new connection wait, up to ``seconds``, for a server that is down.

    A restart of the ledger's PostgreSQL (an upgrade, a fail-over) closes every
    connection. ``pool_pre_ping`` finds a dead pooled connection when it is checked out
    and opens a new one; this makes that new connection wait for the server to be back,
    so the lanes, the lease keeper and the dispatcher go on where they were instead of
    failing the run. One place for every ledger access: no retry loop around each
    statement. A statement already running when the server goes still fails.

    Only once the engine has connected: a wrong URL or a server that was never started
    fails at once, with the driver's message, instead of after a minute.
    """
    connected = threading.Event()

    @event.listens_for(engine, "do_connect")
    def _connect_when_up(dialect, _record, cargs, cparams):
        deadline = time.monotonic() + (RECONNECT_SECONDS if seconds is None else seconds)
        pause = 0.1
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
                connected.set()
                return connection
            except dialect.loaded_dbapi.OperationalError:
                if not connected.is_set() or time.monotonic() + pause > deadline:
                    raise
                LOGGER.warning("the ledger database does not answer; trying again")
                time.sleep(pause)
                pause = min(2 * pause, RECONNECT_MAX_PAUSE)


#: Key of the PostgreSQL advisory lock that serialises migrations (any fixed number).
_MIGRATION_LOCK_KEY = 0x70616373  # "pacs"


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """An exclusive lock on ``<ledger>.migrate.lock`` (SQLite lives on one host)."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _hold_migration_lock(connection: Connection) -> None:
    """On PostgreSQL, wait for any other migration; the lock ends with the transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})


def migrate(engine: Engine) -> None:
    """Bring the ledger schema to the newest Alembic revision (safe to call every run).

    Every flow run calls this, and several start at once (three projects, two workers):
    a lock makes them take turns, so the first migrates and the others find the schema
    at head instead of racing to create the same tables. A ledger already at head, as
    on every run but the first, is told so by one query, without Alembic: importing it
    and running its upgrade cost a worker process ~0.2 s of its start.
    """
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    lock = _sqlite_file_lock(engine) if sqlite else contextlib.nullcontext()
    with lock, engine.begin() as connection:
        _hold_migration_lock(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(None|"\w+")\s*$', re.MULTILINE)


def head_revision() -> str | None:
    """The newest revision of ``migrations/versions``, read from the files as Alembic
    would; None unless they form one line of revisions (then Alembic decides)."""
    revisions, parents = set(), set()
    for path in (_MIGRATIONS / "versions").glob("[!_]*.py"):  # not __init__.py
        found = dict(m.groups() for m in _REVISION.finditer(path.read_text()))
        if set(found) != {"revision", "down_revision"} or found["revision"] == "None":
            return None
        revisions.add(found["revision"].strip('"'))
        if found["down_revision"] != "None":
            parents.add(found["down_revision"].strip('"'))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _at_head(engine: Engine) -> bool:
    head = head_revision()
    with engine.connect() as connection:
        if head is None or not inspect(connection).has_table("alembic_version"):
            return False
        current = connection.execute(text("SELECT version_num FROM alembic_version"))
        return current.scalars().all() == [head]


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
