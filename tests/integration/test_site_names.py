"""Two sites on one Prefect server keep their own blocks and their own project keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from deployments.cli import app
from pacsflow.config import load_site_config

pytestmark = pytest.mark.integration


def _site_file(folder: Path, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "ledger": f"sqlite:///{folder / 'ledger.db'}",
        "staging": str(folder / "staging"),
        "sources": {"vna": {"ae_title": "VNA", "host": "127.0.0.1", "port": port}},
        "destinations": {"local": {"type": "filesystem", "path": str(folder / "export")}},
    }
    path = folder / "pacsflow.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_configure_with_site_keeps_each_sites_sources(prefect_api, tmp_path, monkeypatch):
    from blocks.site import load_site

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    runner = CliRunner()
    first = _site_file(tmp_path / "one", 1041)
    second = _site_file(tmp_path / "two", 1042)
    for site, config in (("site-one", first), ("site-two", second)):
        result = runner.invoke(app, ["configure", str(config), "--site", site])
        assert result.exit_code == 0, result.output
    # Same source name "vna" in both: neither overwrote the other.
    assert load_site("site-one").sources["vna"].port == 1041
    assert load_site("site-two").sources["vna"].port == 1042
    assert load_site("site-one").destinations["local"].path == (tmp_path / "one" / "export")


def test_project_keys_are_per_site_and_an_old_install_keeps_its_key(prefect_api, tmp_path):
    from prefect.blocks.system import Secret

    from blocks.secrets import key_secret_name, project_key
    from pacsflow.deid.pseudonyms import new_key

    secret = f"keys-{tmp_path.name[-10:].lower().replace('_', '-')}-key"
    # Two sites, one project name: two keys, each the same on every read.
    one, two = project_key(secret, "site-one"), project_key(secret, "site-two")
    assert one != two
    assert project_key(secret, "site-one") == one and project_key(secret, "site-two") == two
    assert str(Secret.load(key_secret_name("site-one", secret)).get()) == one

    # An install from before site names kept its key under the plain name: the default
    # site goes on using it (same pseudonyms), a named site never does.
    legacy = f"old-{secret}"
    old_key = new_key()
    Secret(value=old_key).save(legacy)
    assert project_key(legacy, "default") == old_key
    assert project_key(legacy, "site-one") != old_key


def test_the_default_site_keeps_its_plain_block_names(prefect_api, tmp_path):
    from blocks.site import save_site
    from blocks.sources import DicomSource

    site = load_site_config(_site_file(tmp_path, 1043))
    save_site(site)
    assert DicomSource.load("vna").port == 1043


def test_deploy_with_site_makes_the_pools_runs_use_that_site(prefect_api, tmp_path, monkeypatch):
    """`pacsflow deploy --pool P --site NAME`: runs started from the form (or
    `prefect deployment run`) without a site read NAME's blocks, and the form lists NAME's
    projects, not the default site's."""
    from prefect.client.orchestration import get_client

    from blocks.projects import register_project

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    project = tmp_path / "projects" / "pool-site-study.yaml"
    project.parent.mkdir()
    project.write_text(
        yaml.safe_dump({"name": "pool-site-study", "sources": ["vna"], "destination": "local"})
    )
    register_project(project, "site-pool")
    pool = f"pool-{tmp_path.name[-8:].lower().replace('_', '-')}"
    result = CliRunner().invoke(app, ["deploy", "--pool", pool, "--site", "site-pool"])
    assert result.exit_code == 0, result.output

    with get_client(sync_client=True) as client:
        deployments = [
            client.read_deployment_by_name(name)
            for name in ("extract-project/extract-project", "check-project/check-project")
        ]
        for deployment in deployments:  # other tests serve these names: leave none behind
            client.delete_deployment(deployment.id)
        client.delete_work_pool(pool)
    for deployment in deployments:
        assert deployment.work_pool_name == pool
        assert deployment.parameters["site"] == "site-pool"
        choices = deployment.parameter_openapi_schema["properties"]["project"]["anyOf"]
        assert choices[0]["enum"] == ["pool-site-study"]
