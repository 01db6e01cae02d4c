"""`pacsflow report`: the data team's per-study file, identifiers included, local only."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from deployments.cli import app
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.manifest import ManifestRow
from pacsflow.report import COLUMNS

runner = CliRunner()
DATE = dt.date(2024, 3, 5)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site whose ledger holds, for lung-ct, one exported, one failed and one pending
    study, and one study of another project."""
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = {
        "ledger": ledger,
        "sources": {"vna": {"ae_title": "VNA", "host": "127.0.0.1", "port": 104}},
        "destinations": {"share": {"type": "filesystem", "path": str(tmp_path / "export")}},
    }
    path = tmp_path / "pacsflow.yaml"
    path.write_text(yaml.safe_dump(config))
    engine = make_engine(ledger)
    migrate(engine)
    with session_factory(engine)() as session:
        rows = [
            ManifestRow(
                row=n,
                study_date=DATE,
                mrn=f"MRN000{n}",
                accession_number=f"ACC000{n}",
                procedure_id="PROC-1" if n == 1 else None,
            )
            for n in (1, 2, 3)
        ]
        repo.ingest_manifest(session, "lung-ct", rows)
        repo.ingest_manifest(
            session,
            "other",
            [ManifestRow(row=1, study_date=DATE, mrn="MRN9", accession_number="A9")],
        )
        first, second, _third = sorted(i for i, _ in repo.studies_to_process(session, "lung-ct"))
        repo.update_study(
            session,
            first,
            source="vna",
            found_study_uid="1.2.826.0.1.1",
            expected_instances=3,
            received_instances=3,
            pseudo_patient_id="PSEUDO-1",
            pseudo_study_uid="2.25.1",
        )
        repo.mark_exported(session, first, 3)
        repo.mark_failed(
            session, second, "find: SourceUnavailable: VNA is down", "find: Unavailable"
        )
    engine.dispose()
    return path


def test_report_holds_every_study_of_the_project_with_its_identifiers(
    site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "lung-ct.csv"
    result = runner.invoke(
        app, ["report", "--project", "lung-ct", "--config", str(site), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "3 studies" in result.output
    assert "holds patient identifiers" in " ".join(result.output.split())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    frame = pd.read_csv(out, dtype=str)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["mrn"].tolist() == ["MRN0001", "MRN0002", "MRN0003"]
    assert frame["status"].tolist() == ["exported", "failed", "pending"]
    exported, failed, pending = frame.to_dict("records")
    assert exported["procedure_id"] == "PROC-1"
    assert exported["accession_number"] == "ACC0001"
    assert exported["found_study_uid"] == "1.2.826.0.1.1"
    assert (exported["source"], exported["exported_instances"]) == ("vna", "3")
    assert (exported["pseudo_patient_id"], exported["pseudo_study_uid"]) == ("PSEUDO-1", "2.25.1")
    assert exported["study_date"] == "2024-03-05"
    assert pd.notna(exported["exported_at"]) and pd.isna(failed["exported_at"])
    assert failed["error_type"] == "find: Unavailable"
    assert failed["reason"] == "find: SourceUnavailable: VNA is down"
    assert pd.isna(pending["reason"])
    assert "MRN9" not in out.read_text()  # another project's study


def test_report_as_parquet_keeps_types(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "lung-ct.parquet"
    result = runner.invoke(
        app,
        [
            "report",
            "--project",
            "lung-ct",
            "-c",
            str(site),
            "--format",
            "parquet",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["exported_instances"].tolist()[0] == 3
    assert str(frame["exported_at"].dt.tz) == "UTC"
    assert frame["study_date"].tolist()[0] == DATE


def test_default_output_is_under_the_local_pacsflow_folder(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--project", "lung-ct", "-c", str(site)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / ".pacsflow" / "reports" / "lung-ct.csv")) == 3


def test_an_unknown_project_or_format_is_an_input_error(site: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--project", "lung-tc", "-c", str(site)])
    assert result.exit_code == 2
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "unknown project 'lung-tc'" in said
    assert "Known projects: lung-ct, other" in said
    result = runner.invoke(
        app, ["report", "--project", "lung-ct", "-c", str(site), "--format", "xlsx"]
    )
    assert result.exit_code == 2
    assert "'xlsx' is not one of 'csv'" in result.output


def test_a_project_file_may_stand_for_its_slug(site: Path, tmp_path: Path) -> None:
    project = tmp_path / "projects" / "lung.yaml"
    project.parent.mkdir()
    project.write_text(
        yaml.safe_dump({"name": "lung-ct", "sources": ["vna"], "destination": "share"})
    )
    out = tmp_path / "r.csv"
    result = runner.invoke(
        app, ["report", "--project", str(project), "-c", str(site), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 3
    result = runner.invoke(app, ["report", "--project", "missing.yaml", "-c", str(site)])
    assert result.exit_code == 2
    assert "unknown project 'missing.yaml'" in " ".join(result.output.split())


def test_without_config_the_demo_site_is_found(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after `pacsflow demo`, `pacsflow report --project SLUG` works with no --config,
    as `status` does."""
    elsewhere = tmp_path / "checkout"
    demo = elsewhere / ".pacsflow" / "demo"
    demo.mkdir(parents=True)
    (demo / "pacsflow.yaml").write_text(site.read_text())
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["report", "--project", "lung-ct"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(elsewhere / ".pacsflow" / "reports" / "lung-ct.csv")) == 3
