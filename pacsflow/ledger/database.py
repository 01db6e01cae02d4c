"""Engines and migrations. Nothing here runs at import: callers pass the URL."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, creates the folder and allows several threads.

    SQLite gets WAL mode and a 30 s busy timeout because lanes write from several
    threads (and worker processes) at once.
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
    return create_engine(url, pool_pre_ping=True)


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
    at head instead of racing to create the same tables.
    """
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    lock = _sqlite_file_lock(engine) if sqlite else contextlib.nullcontext()
    with lock, engine.begin() as connection:
        _hold_migration_lock(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
