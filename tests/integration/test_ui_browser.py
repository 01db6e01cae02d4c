"""What a user does in the Prefect UI, in headless Chromium: open extract-project's run
page, pick the project from the form's list, give the manifest, submit, and see the pull
complete on the served deployment.

The server is a real one with its UI on a free port (not the session's, which has no
UI). That is also what caught the UI calling the API on 4200, whatever the port.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow.config import load_site_config
from tests.integration.conftest import require
from tests.prefect_records import wait_final
from tests.servers import start_prefect_server
from tests.serving import PACSFLOW, registered_deployment, start_serving, stop_serving

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
UI_ON = {"PREFECT_SERVER_UI_ENABLED": "true", "PREFECT_UI_ENABLED": "true"}


def _field(label: str, control: str) -> str:
    """XPath of the ``control`` element of the run form's field titled ``label``."""
    return (
        "//div[contains(@class,'schema-form-property')]"
        f"[.//span[@class='schema-form-property__label' and text()='{label}']]//{control}"
    )


@pytest.fixture
def browser() -> Iterator:
    require(
        Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
        "Chromium (apt-get install chromium chromium-driver)",
    )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1800")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served_with_ui(sandbox_factory, tmp_path) -> Iterator[tuple]:
    """A Prefect server with its UI, a configured sandbox site, and ``pacsflow serve``."""
    server = start_prefect_server(tmp_path / "prefect", extra_env=UI_ON)
    site = sandbox_factory(n_studies=4)
    env = {**os.environ, "PREFECT_API_URL": server.api_url}
    log = (tmp_path / "serve.log").open("w")
    serving = None
    try:
        subprocess.run(
            [PACSFLOW, "configure", str(site.config_path)],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        serving = start_serving(env, log)
        yield server, site
    finally:
        if serving is not None:
            stop_serving(serving)
        log.close()
        server.stop()


def test_a_pull_started_in_the_browser_form_picks_the_project_from_the_list(
    served_with_ui, browser
):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server, site = served_with_ui
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            deployment = registered_deployment(client)
        ui = server.api_url.removesuffix("/api")
        submitted_after = dt.datetime.now(dt.UTC)
        browser.get(f"{ui}/deployments/deployment/{deployment.id}/run")
        wait = WebDriverWait(browser, 60)
        # The form the UI builds from the deployment's schema: the project is a list.
        projects = Select(
            wait.until(shown.presence_of_element_located((By.XPATH, _field("Project", "select"))))
        )
        assert [option.text for option in projects.options] == ["sandbox-demo"]
        projects.select_by_visible_text("sandbox-demo")
        browser.find_element(By.XPATH, _field("Manifest", "textarea")).send_keys(
            str(site.manifest_path)
        )
        browser.find_element(By.XPATH, "//button[.//div[normalize-space()='Submit']]").click()
        wait.until(shown.text_to_be_present_in_element((By.TAG_NAME, "body"), "scheduled to start"))

        with get_client(sync_client=True) as client:
            runs = [
                run
                for run in client.read_flow_runs()
                if run.deployment_id == deployment.id and run.created >= submitted_after
            ]
            assert len(runs) == 1, runs
            assert runs[0].parameters["project"] == "sandbox-demo"
            assert runs[0].parameters["manifest"] == str(site.manifest_path)
            finished = wait_final(client, runs[0].id)
    assert finished.state.is_completed(), finished.state.message
    # The form filled in a random name; the run is named for its project and day instead.
    assert finished.name.startswith(
        f"sandbox-demo-{dt.datetime.now(dt.UTC).date().isoformat()}-"
    ), finished.name
    exported = list(
        Path(load_site_config(site.config_path).destinations["local"].path).glob("*/*/*")
    )
    assert len(exported) == sum(n for place, n in site.expected.items() if place != "neither")
