"""The CLI refuses bad input with exit code 2, naming the problem, before touching Prefect."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from deployments.cli import app

runner = CliRunner()


def _write_site(folder: Path) -> Path:
    config = {
        "ledger": f"sqlite:///{folder / 'ledger.db'}",
        "staging": str(folder / "staging"),
        "sources": {"vna": {"ae_title": "VNA", "host": "127.0.0.1", "port": 104}},
        "destinations": {"local": {"type": "filesystem", "path": str(folder / "export")}},
    }
    path = folder / "pacsflow.yaml"
    path.write_text(yaml.safe_dump(config))
    (folder / "project.yaml").write_text(
        yaml.safe_dump({"name": "p1", "sources": ["vna"], "destination": "local"})
    )
    return path


def _extract(config: Path, project: Path, manifest: Path):
    """``pacsflow extract`` with the site config, project file and manifest."""
    args = ["--config", str(config), "--project", str(project), "--manifest", str(manifest)]
    return runner.invoke(app, ["extract", *args])


def test_bad_manifest_exits_2_naming_row_and_column(tmp_path):
    config = _write_site(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("mrn,accession_number,study_date\n123,A1,2024-01-02\n124,A2,2024-13-02\n")
    result = _extract(config, tmp_path / "project.yaml", manifest)
    assert result.exit_code == 2
    assert "row 2, column study_date" in result.output
    assert not (tmp_path / "ledger.db").exists(), "a bad manifest must change nothing"


def test_bad_profile_file_exits_2_naming_the_entry_before_touching_prefect(tmp_path):
    config = _write_site(tmp_path)
    (tmp_path / "profile.yaml").write_text("tags:\n  - {keyword: StudyDescriptoin, op: keep}\n")
    (tmp_path / "project.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "p1",
                "sources": ["vna"],
                "destination": "local",
                "profile_files": ["profile.yaml"],
            }
        )
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text("mrn,accession_number,study_date\n123,A1,2024-01-02\n")
    result = _extract(config, tmp_path / "project.yaml", manifest)
    assert result.exit_code == 2
    assert "StudyDescriptoin" in result.output and "StudyDescription" in result.output
    assert not (tmp_path / "ledger.db").exists()


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = _write_site(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["sources"]["vna"]["retrieve"] = "push"
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["configure", str(config)])
    assert result.exit_code == 2
    assert "sources.vna.retrieve" in result.output


def test_project_naming_an_unknown_source_exits_2(tmp_path):
    config = _write_site(tmp_path)
    (tmp_path / "project.yaml").write_text(
        yaml.safe_dump({"name": "p1", "sources": ["nope"], "destination": "local"})
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text("mrn,accession_number,study_date\n123,A1,2024-01-02\n")
    result = _extract(config, tmp_path / "project.yaml", manifest)
    assert result.exit_code == 2
    assert "source 'nope' is not declared" in result.output


def test_status_json_reports_counts_without_identifiers(tmp_path):
    import json

    from pacsflow.ledger import make_engine, migrate, session_factory
    from pacsflow.ledger import repository as repo
    from pacsflow.manifest import read_manifest

    config = _write_site(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("mrn,accession_number,study_date\nMRN0012345,ACC777,2024-01-02\n")
    second = tmp_path / "m2.csv"
    second.write_text("mrn,accession_number,study_date\nMRN0099999,ACC888,2024-01-03\n")
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(engine)
    with session_factory(engine)() as session:
        repo.ingest_manifest(session, "p1", read_manifest(manifest, "p1"))
        repo.mark_failed(session, 1, "SourceUnavailable: source VNA refused the association")
        repo.ingest_manifest(session, "p1", read_manifest(second, "p1"))
        # A library error recorded in full may quote an identifier: the report masks it.
        repo.mark_failed(session, 2, "fetch: ValueError: bad PatientID MRN0099999")
    result = runner.invoke(app, ["status", "--project", "p1", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"]["failed"] == 2 and report["counts"]["pending"] == 0
    assert report["failed"] == [
        {"id": 1, "reason": "SourceUnavailable: source VNA refused the association"},
        {"id": 2, "reason": "fetch: ValueError: bad PatientID <mrn>"},
    ]
    assert report["quarantined"] == [] and report["excluded"] == []
    for identifier in ("MRN0012345", "ACC777", "MRN0099999", "ACC888"):
        assert identifier not in result.output


def test_requeue_refuses_exported_with_exit_2(tmp_path):
    config = _write_site(tmp_path)
    result = runner.invoke(
        app, ["requeue", "--project", "p1", "--status", "exported", "--config", str(config)]
    )
    assert result.exit_code == 2
    assert "cannot be re-queued" in result.output


def test_status_shows_partial_studies_and_partial_exports(tmp_path):
    import json

    from pacsflow.ledger import make_engine, migrate, session_factory
    from pacsflow.ledger import repository as repo
    from pacsflow.manifest import read_manifest

    config = _write_site(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "mrn,accession_number,study_date\nMRN1,ACC1,2024-01-02\nMRN2,ACC2,2024-01-03\n"
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    migrate(engine)
    with session_factory(engine)() as session:
        repo.ingest_manifest(session, "p1", read_manifest(manifest, "p1"))
        repo.mark_partial(session, 1, "received 4 of 5 instances from vna")
        repo.mark_exported(session, 2, 4, shortfall="exported partial: received 4 of 5")
    result = runner.invoke(app, ["status", "--project", "p1", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"]["partial"] == 1 and report["counts"]["exported"] == 1
    assert report["partial"] == [{"id": 1, "reason": "received 4 of 5 instances from vna"}]
    assert report["exported_partial"] == [{"id": 2, "reason": "exported partial: received 4 of 5"}]
    result = runner.invoke(app, ["status", "--project", "p1", "--config", str(config)])
    assert "partial study 1: received 4 of 5 instances from vna" in result.output
    assert "exported_partial study 2: exported partial: received 4 of 5" in result.output
