"""Fixtures that start real servers for integration tests.

A missing server binary skips the test with a clear reason on a developer machine, but
fails it when ``CI`` is set: CI installs Orthanc and dcmtk, so a skip there would only
hide a broken environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    ModalitySpec,
    OrthancServer,
    dcmtk_binary,
    orthanc_available,
    start_orthanc,
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


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancFactory]:
    """Start Orthanc servers for one test; all are stopped (by pid) at teardown.

    Starting is ~0.1 s; stopping takes ~3.5 s, paid once per test however many servers
    it started (they are signalled together).
    """
    require(orthanc_available(), "Orthanc (apt-get install orthanc orthanc-dicomweb)")
    factory = OrthancFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def orthanc_session_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OrthancFactory]:
    """Like :func:`orthanc_factory` but the servers live for the whole session.

    For read-only scenarios that share seeded data; do not mutate shared servers.
    """
    require(orthanc_available(), "Orthanc (apt-get install orthanc orthanc-dicomweb)")
    factory = OrthancFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()
