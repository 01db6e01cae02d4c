"""The CLI as a user runs it twice: the rerun says it had nothing new; status needs no flags."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PACSFLOW = str(Path(sys.executable).parent / "pacsflow")


def _pacsflow(args: list[str], cwd: Path, api_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api_url, "COLUMNS": "200"}
    return subprocess.run(
        [PACSFLOW, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=400
    )


def test_a_rerun_says_0_new_studies_and_status_lists_them_masked(sandbox_factory, prefect_api):
    site = sandbox_factory(n_studies=6)
    folder = site.config_path.parent
    # The project by slug (projects/<slug>.yaml beside the site file), the site found here.
    extract = ["extract", "--project", "sandbox-demo", "--manifest", str(site.manifest_path)]
    first = _pacsflow(extract, folder, prefect_api)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "6 new studies" in first.stdout

    again = _pacsflow(extract, folder, prefect_api)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 new studies" in again.stdout

    status = _pacsflow(["status"], folder, prefect_api)
    assert status.returncode == 0, status.stdout + status.stderr
    # The studies table lists each not-found study with its MRN masked (``12****89``).
    not_found = [
        line for line in status.stdout.splitlines() if "not_found" in line and "**" in line
    ]
    assert len(not_found) == site.expected["neither"], status.stdout
    with site.manifest_path.open() as manifest:
        rows = list(csv.DictReader(manifest))
    for row in rows:
        for identifier in (row["mrn"], row["accession_number"]):
            assert identifier not in status.stdout, f"status printed {identifier}"

    typo = _pacsflow(["status", "--project", "sandbox-dem"], folder, prefect_api)
    assert typo.returncode == 2 and "sandbox-demo" in typo.stdout
