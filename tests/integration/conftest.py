"""Fixtures that start real servers for integration tests.

A missing server binary skips the test with a clear reason on a developer machine, but
fails it when ``CI`` is set: CI installs Orthanc, dcmtk and PostgreSQL, so a skip there
would only hide a broken environment.

PostgreSQL and Prefect fixtures:

* ``postgres`` (session): one PostgreSQL cluster (:class:`tests.servers.PostgresServer`).
* ``ledger_url`` (function): a fresh, empty database on it for each test, as a
  ``postgresql+psycopg://`` URL; dropped after the test.
* ``prefect_server`` (session): a real ``prefect server start`` backed by its own database
  on ``postgres`` (:class:`tests.servers.PrefectServerProcess`).
* ``prefect_api`` (session): that server's API URL; while the session runs,
  ``PREFECT_API_URL`` points at it, so flows run inside tests report to it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pacsflow.sandbox.scenario import SandboxSite, build_sandbox
from tests.servers import (
    ModalitySpec,
    OrthancServer,
    PostgresServer,
    PrefectServerProcess,
    dcmtk_binary,
    free_port,
    orthanc_available,
    postgres_available,
    start_orthanc,
    start_postgres,
    start_prefect_server,
    stop_all,
)


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (under CI) when a required server/tool is missing."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI but is not installed", pytrace=False)
    pytest.skip(f"{what} is not installed")


def require_dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool (``/usr/bin/echoscu``...), skipping/failing if absent."""
    path = dcmtk_binary(tool)
    require(path is not None, f"dcmtk {tool} (apt-get install dcmtk)")
    assert path is not None
    return path


class OrthancFactory:
    """Callable that starts Orthanc servers in fresh temp dirs and remembers them."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self.servers: list[OrthancServer] = []

    def __call__(
        self,
        aet: str = "ORTHANC",
        modalities: Mapping[str, ModalitySpec] | None = None,
        *,
        extra_config: Mapping[str, Any] | None = None,
    ) -> OrthancServer:
        """Start one Orthanc with AE title ``aet``.

        ``modalities`` maps a name to ``(aet, host, port)`` for every AE that calls this
        server and every C-MOVE destination.
        """
        workdir: Path = self._tmp.mktemp(f"orthanc-{aet.lower()}")
        server = start_orthanc(workdir, aet, modalities or {}, extra_config=extra_config)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        stop_all(self.servers)
        self.servers.clear()


def _orthanc_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFactory]:
    """Body of the Orthanc fixtures: the factory, then every server it started is stopped."""
    require(orthanc_available(), "Orthanc (apt-get install orthanc orthanc-dicomweb)")
    factory = OrthancFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFactory]:
    """Start Orthanc servers for one test; all are stopped (by pid) at teardown.

    Starting is ~0.1 s; stopping takes ~3.5 s, paid once per test however many servers
    it started (they are signalled together).
    """
    yield from _orthanc_servers(tmp_path_factory)


@pytest.fixture(scope="session")
def orthanc_session_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OrthancFactory]:
    """Like :func:`orthanc_factory` but the servers live for the whole session.

    For read-only scenarios that share seeded data; do not mutate shared servers.
    """
    yield from _orthanc_servers(tmp_path_factory)


# -- the sandbox site (pynetdicom PACS of our own) ------------------------------------


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[Callable[..., SandboxSite]]:
    """``sandbox_factory(n_studies=...)`` builds a sandbox site in ``tmp_path / "site"``.

    Two sandbox PACS and the receiver on free ports (:func:`build_sandbox`); at teardown
    the PACS are stopped, then the process-wide DICOM receiver the flow started.
    """
    sites: list[SandboxSite] = []

    def make(n_studies: int) -> SandboxSite:
        folder = tmp_path / ("site" if not sites else f"site-{len(sites) + 1}")
        site = build_sandbox(
            folder,
            primary_port=free_port(),
            secondary_port=free_port(),
            receiver_port=free_port(),
            n_studies=n_studies,
        )
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop()
    from pacsflow.dicom.receiver import stop_process_receiver

    stop_process_receiver()


# -- PostgreSQL and the Prefect server -----------------------------------------------


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session (initdb + start ~1 s, stop ~0.2 s).

    Loopback only, trust auth for the ``postgres`` user, durability off. Create your own
    databases on it (``postgres.create_database()``) or use :func:`ledger_url`.
    """
    require(postgres_available(), "PostgreSQL (apt-get install postgresql)")
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ledger_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test: ``postgresql+psycopg://postgres@...:PORT/...``.

    Dropped (``WITH (FORCE)``, so open engine connections do not block it) afterwards.
    """
    name = f"ledger_{secrets.token_hex(6)}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def prefect_server(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectServerProcess]:
    """A real Prefect server for the session, on its own database in :func:`postgres`.

    Start-up (migrating a fresh database included) takes ~5-6 s. Its ``PREFECT_HOME`` and
    log (``prefect-server.log``) are in a pytest temp dir. Use :func:`prefect_api` to point
    the test process's Prefect client at it.
    """
    database_url = postgres.create_database("prefect", driver="asyncpg")
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-home"), database_url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServerProcess) -> Iterator[str]:
    """The Prefect server's API URL (``http://127.0.0.1:PORT/api``).

    For the rest of the session ``PREFECT_API_URL`` is set to it in this process (Prefect's
    settings context), so ``@flow`` runs and ``get_client()`` talk to that server.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        try:
            yield prefect_server.api_url
        finally:
            _drain_prefect_workers()


def _drain_prefect_workers() -> None:
    """Send buffered run logs and events before the server goes away (no shutdown noise)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5, at_exit=False)
        EventsWorker.drain_all(timeout=5, at_exit=False)
    except Exception:  # best effort: a failure here must not fail the session
        pass
