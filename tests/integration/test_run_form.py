"""What the Prefect UI does: read the extract-project form, pick a project from its list,
create a run of the served deployment with form parameters, and watch it complete."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from pacsflow.config import load_site_config
from tests.prefect_records import wait_final
from tests.serving import PACSFLOW, registered_deployment, start_serving, stop_serving

pytestmark = pytest.mark.integration


@pytest.fixture
def served(sandbox_factory, prefect_api, tmp_path):
    """A sandbox site, configured and served by ``pacsflow serve`` (stopped by pid)."""
    site = sandbox_factory(n_studies=6)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    subprocess.run([PACSFLOW, "configure", str(site.config_path)], env=env, check=True, timeout=120)
    log = (tmp_path / "serve.log").open("w")
    process = start_serving(env, log)
    try:
        yield site
    finally:
        stop_serving(process)
        log.close()


def test_a_pull_started_from_the_form_picks_the_project_from_a_list_and_completes(served):
    from prefect.client.orchestration import get_client

    site = served
    slug = "sandbox-demo"
    with get_client(sync_client=True) as client:
        deployment = registered_deployment(client)
        form = deployment.parameter_openapi_schema["properties"]
        choices = form["project"]["anyOf"]
        assert slug in choices[0]["enum"]  # the list the form offers
        assert form["manifest"]["title"] == "Manifest"
        assert "every worker can read" in form["manifest"]["description"]
        assert set(deployment.parameter_openapi_schema["required"]) == {"project", "manifest"}

        parameters = {"project": slug, "manifest": str(site.manifest_path)}
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        typed = client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters, name="rerun-after-the-profile-fix"
        )
        first, second = wait_final(client, run.id), wait_final(client, typed.id)

    assert first.state.is_completed(), first.state.message
    assert second.state.is_completed(), second.state.message
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert first.name.startswith(f"{slug}-{today}-") and first.name != second.name
    assert second.name == "rerun-after-the-profile-fix"
    site_config = load_site_config(site.config_path)
    exported = list(Path(site_config.destinations["local"].path).glob(f"{slug}/*/*"))
    found = sum(n for place, n in site.expected.items() if place != "neither")
    assert len(exported) == found


def _deployment_on(client, pool: str | None, timeout: float = 90):
    """extract-project once the server has it registered on ``pool`` (None: served)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not registered (that way) yet
            deployment = client.read_deployment_by_name("extract-project/extract-project")
            if deployment.work_pool_name == pool:
                return deployment
        time.sleep(1)
    pytest.fail(f"extract-project never registered on {pool or 'the serve process'}")


def test_serve_after_deploy_to_a_pool_refuses_then_replaces_and_its_runs_complete(
    sandbox_factory, prefect_api, tmp_path
):
    """Served runs of a deployment the server still had on a pool crashed (pull steps)."""
    from prefect.client.orchestration import get_client

    site = sandbox_factory(n_studies=4)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    subprocess.run([PACSFLOW, "configure", str(site.config_path)], env=env, check=True, timeout=120)
    pool = f"pacsflow-{secrets.token_hex(3)}"
    deploy = [PACSFLOW, "deploy", "--pool", pool]
    subprocess.run(deploy + ["--replace"], env=env, check=True, timeout=120, capture_output=True)

    refused = subprocess.run(
        [PACSFLOW, "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"work pool {pool!r}" in refused.stdout and "--replace" in refused.stdout
    with get_client(sync_client=True) as client:
        assert _deployment_on(client, pool, timeout=5).pull_steps  # left as it was

    log = (tmp_path / "serve.log").open("w")
    serving = start_serving(env, log, "--replace")
    try:
        with get_client(sync_client=True) as client:
            deployment = _deployment_on(client, None)
            assert not deployment.pull_steps
            parameters = {"project": "sandbox-demo", "manifest": str(site.manifest_path)}
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            finished = wait_final(client, run.id)
            assert finished.state.is_completed(), finished.state.message
            # And the other way: a pool would share the live serve process's runs.
            again = subprocess.run(deploy, env=env, capture_output=True, text=True, timeout=120)
            assert again.returncode == 2, again.stdout + again.stderr
            assert "(served)" in again.stdout and "deploy --replace" in again.stdout
    finally:
        stop_serving(serving)
        log.close()
    exported = list(
        Path(load_site_config(site.config_path).destinations["local"].path).glob("*/*/*")
    )
    assert len(exported) == sum(n for place, n in site.expected.items() if place != "neither")


SHARED = ("extract-project/extract-project", "check-project/check-project")
SHARED += ("process-studies/process-studies",)


def _polled(client, name: str, timeout: float = 60):
    """The deployment ``name`` once a live serve process serves it: not paused (as a serve
    that stopped leaves it; the tests share one server) and polled in the last 15 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = registered_deployment(client, name)
        recent = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=15)
        if not deployment.paused and deployment.last_polled and deployment.last_polled > recent:
            return deployment
        time.sleep(1)
    pytest.fail(f"no serve process serves {name}")


def test_stopping_a_scheduled_pull_pauses_its_schedule_only(served, prefect_api, tmp_path):
    """A second ``pacsflow serve --cron`` beside the demo's: stopping it used to pause
    extract-project (Prefect pauses what a stopped serve served) for every UI user."""
    from prefect.client.orchestration import get_client

    site = served
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    scheduled = "extract-project/extract-project-sandbox-demo"
    with get_client(sync_client=True) as client:
        for name in SHARED:  # all three served by the fixture's `pacsflow serve`
            _polled(client, name)
        log_path = tmp_path / "serve-cron.log"
        with log_path.open("w") as log:
            args = ["--project", "sandbox-demo", "--config", str(site.config_path)]
            args += ["--manifest", str(site.manifest_path)]
            cron = start_serving(env, log, *args, "--cron", "0 2 * * *", "--timezone", "UTC")
            try:
                deployment = _polled(client, scheduled)
                assert deployment.schedules[0].schedule.cron == "0 2 * * *"
                assert not deployment.paused
            finally:
                stop_serving(cron)
        said = " ".join(log_path.read_text().split())
        assert "Stopping this process pauses the schedule of extract-project-sandbox-demo" in said
        assert "stay with the `pacsflow serve` that already serves them" in said
        assert client.read_deployment_by_name(scheduled).paused
        for name in SHARED:
            assert not client.read_deployment_by_name(name).paused, name
