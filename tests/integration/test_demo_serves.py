"""What a newcomer does after ``make demo``: open the UI, pick extract-project, choose the
demo project from the form's list, run it, see it complete; then ``pacsflow server stop``
stops what the demo left running.

The demo runs as a user runs it, in a folder of its own (``.pacsflow/`` under it), against
the session's Prefect server (``PREFECT_API_URL``); the run is created through the API
with form parameters, as the UI creates it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.background import is_running, read_served
from deployments.server import pid_alive
from pacsflow.config import load_site_config
from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger import repository as repo
from tests.prefect_records import wait_final
from tests.servers import descendants

pytestmark = pytest.mark.integration

PACSFLOW = str(Path(sys.executable).parent / "pacsflow")
SLUG = "sandbox-demo"


def _pacsflow(cwd: Path, env: dict, *args: str, timeout: float = 400) -> str:
    done = subprocess.run(
        [PACSFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _exported(folder: Path) -> dict[str, int]:
    site = load_site_config(folder / "pacsflow.yaml")
    with session_factory(make_engine(site.ledger))() as session:
        return repo.source_counts(session, SLUG)


def _serving(folder: Path) -> list[int]:
    """Pids of every ``pacsflow serve --sandbox`` of this demo folder on the machine."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--sandbox" in argv and str(folder).encode() in argv and b"serve" in argv:
            pid = int(cmdline.parent.name)
            if pid_alive(pid):
                found.append(pid)
    return found


def test_the_demo_leaves_extract_project_served_and_a_pull_from_the_form_completes(
    tmp_path, prefect_api
):
    from prefect.client.orchestration import get_client

    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    home = tmp_path / ".pacsflow" / "prefect"
    folder = tmp_path / ".pacsflow" / "demo"
    processes: list[int] = []
    try:
        shown = _pacsflow(tmp_path, env, "demo", "--studies", "6")
        first = read_served(home)
        assert first is not None and is_running(first), shown[-2000:]
        assert "pacsflow server stop" in shown
        before = _exported(folder)

        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("extract-project/extract-project")
            assert f"/deployments/deployment/{deployment.id}" in shown  # the page it printed
            form = deployment.parameter_openapi_schema["properties"]
            assert SLUG in form["project"]["anyOf"][0]["enum"]  # the list the form offers
            parameters = {"project": SLUG, "manifest": str(folder / "manifest-more.csv")}
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            finished = wait_final(client, run.id)
        assert finished.state.is_completed(), finished.state.message
        # The held-back studies came from both sandbox PACS, which the served process hosts.
        after = _exported(folder)
        assert after["primary"] == before["primary"] + 2
        assert after["secondary"] == before["secondary"] + 2

        # A second demo replaces the first served process: never two on one checkout.
        processes = [first.pid, *descendants(first.pid)]
        _pacsflow(tmp_path, env, "demo", "--studies", "4")
        second = read_served(home)
        assert second is not None and second.pid != first.pid
        assert not [pid for pid in processes if pid_alive(pid)]
        assert _serving(folder) == [second.pid]
        processes = [second.pid, *descendants(second.pid)]
    finally:
        stopped = _pacsflow(tmp_path, env, "server", "stop", timeout=120)
    assert "Stopped the deployments the demo served" in stopped
    assert not [pid for pid in processes if pid_alive(pid)]
    assert read_served(home) is None
