"""pacsflow check refuses bad input with exit code 2 before touching Prefect."""

from __future__ import annotations

from typer.testing import CliRunner

from deployments.cli import app
from tests.unit.test_cli import _write_site

runner = CliRunner()


def test_check_with_a_bad_manifest_exits_2_before_touching_prefect(tmp_path):
    config = _write_site(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("mrn,accession_number,study_date\n123,A1,2024-01-02\n124,,2024-01-02\n")
    args = ["--config", str(config), "--project", str(tmp_path / "project.yaml")]
    result = runner.invoke(app, ["check", *args, "--manifest", str(manifest)])
    assert result.exit_code == 2
    assert "accession_number" in result.output  # the column to fix is named
    assert not (tmp_path / "ledger.db").exists(), "a bad manifest must change nothing"
