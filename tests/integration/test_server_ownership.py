"""pacsflow reuses only its own local Prefect server, never a foreign one on the port.

Two checkouts on one host once shared the server on 127.0.0.1:4200 and so each other's
sources and staging. Here a real ``prefect server`` started by the test plays the other
checkout's server, on a free port (never 4200), and pacsflow is asked for that port.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from deployments.server import ensure_server, pid_alive, read_state
from tests.servers import start_prefect_server

pytestmark = pytest.mark.integration


def _health(api_url: str) -> int:
    with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
        return response.status


@pytest.fixture
def foreign(tmp_path_factory):
    server = start_prefect_server(tmp_path_factory.mktemp("foreign-home"))
    try:
        yield server
    finally:
        server.stop()


def test_a_foreign_server_on_the_port_is_not_reused_and_ours_is(
    tmp_path: Path, foreign, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "unused"))  # restored after the test
    home = Path(".pacsflow/prefect")
    runner = CliRunner()
    try:
        ours = ensure_server(home=home, port=foreign.port)
        # Not the foreign one: another port, and the user is told how to use the other.
        assert ours.api_url != foreign.api_url and ours.ours and ours.started_here
        assert f"port {foreign.port}" in ours.note
        assert f"PREFECT_API_URL={foreign.api_url}" in ours.note
        state = read_state(home)
        assert state is not None and state.pid == ours.pid and state.api_url == ours.api_url
        assert Path(state.home) == home.resolve()

        # The next command finds ours again, on its own port.
        monkeypatch.delenv("PREFECT_API_URL")
        again = ensure_server(home=home, port=foreign.port)
        assert (again.api_url, again.pid, again.started_here) == (ours.api_url, ours.pid, False)

        monkeypatch.delenv("PREFECT_API_URL")  # a new shell: Prefect's CLI needs it set
        status = runner.invoke(app, ["server", "status"])
        assert status.exit_code == 0, status.output
        assert ours.ui_url in status.output and str(ours.pid) in status.output
        assert "ours: yes" in status.output
        assert f"export PREFECT_API_URL={ours.api_url}" in " ".join(status.output.split())

        stopped = runner.invoke(app, ["server", "stop"])
        assert stopped.exit_code == 0, stopped.output
        assert f"pid {ours.pid}" in stopped.output
        assert not pid_alive(ours.pid), "server stop returns once our server has exited"
        assert read_state(home) is None
        assert _health(foreign.api_url) == 200, "stopping ours must leave the foreign one alone"
    finally:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        runner.invoke(app, ["server", "stop"])


def test_a_state_file_naming_a_foreign_server_is_not_believed(
    tmp_path: Path, foreign, monkeypatch
) -> None:
    """A state file whose pid is alive and whose port answers, but without our token
    (here: copied from another checkout), does not make that server ours."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "unused"))
    home = tmp_path / ".pacsflow" / "prefect"
    home.mkdir(parents=True)
    (home / "server.json").write_text(
        f'{{"pid": {foreign.pid}, "port": {foreign.port}, "home": "{home}", "token": "forged"}}'
    )
    runner = CliRunner()
    status = runner.invoke(app, ["server", "status"])
    assert status.exit_code == 1 and "NOT running" in status.output
    try:
        ours = ensure_server(home=home, port=foreign.port)
        assert ours.api_url != foreign.api_url and ours.started_here
        assert read_state(home).token != "forged"
    finally:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        runner.invoke(app, ["server", "stop"])
    assert pid_alive(foreign.pid) and _health(foreign.api_url) == 200
    assert os.environ.get("PREFECT_API_URL") is None


def test_a_server_running_on_our_home_is_never_doubled(tmp_path: Path, monkeypatch) -> None:
    """An older pacsflow left only ``server.pid``: its server uses our database, so no
    second server is started on it; the user is told to stop it, and `server stop` does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "unused"))
    home = (tmp_path / ".pacsflow" / "prefect").resolve()
    older = start_prefect_server(home)
    try:
        (home / "server.pid").write_text(str(older.pid))
        with pytest.raises(RuntimeError, match="pacsflow server stop"):
            ensure_server(home=home, port=older.port)
        assert read_state(home) is None, "nothing was started"
        stopped = CliRunner().invoke(app, ["server", "stop"])
        assert stopped.exit_code == 0 and f"pid {older.pid}" in stopped.output, stopped.output
        assert not pid_alive(older.pid)
        assert not (home / "server.pid").exists()
    finally:
        older.stop()


def test_a_port_held_by_another_program_is_not_offered_as_a_prefect_server(
    tmp_path: Path, monkeypatch
) -> None:
    """Something that is not Prefect on the port: ours starts elsewhere, and the note does
    not suggest pointing PREFECT_API_URL at that program."""
    import socket

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "unused"))
    other = socket.create_server(("127.0.0.1", 0))
    port = other.getsockname()[1]
    try:
        ours = ensure_server(home=Path(".pacsflow/prefect"), port=port)
        assert ours.ours and ours.started_here and f":{port}/" not in ours.api_url
        assert f"port {port} is taken by another program" in ours.note
        assert "PREFECT_API_URL" not in ours.note
    finally:
        other.close()
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        CliRunner().invoke(app, ["server", "stop"])
