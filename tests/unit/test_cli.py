"""The CLI refuses bad input with exit code 2, naming the problem, before touching Prefect."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from deployments import cli
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
    assert "line 3, column C (study_date)" in result.output
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
        {
            "id": 1,
            "mrn": "MR******45",
            "accession": "AC**77",
            "reason": "SourceUnavailable: source VNA refused the association",
        },
        {
            "id": 2,
            "mrn": "MR******99",
            "accession": "AC**88",
            "reason": "fetch: ValueError: bad PatientID <mrn>",
        },
    ]
    assert report["quarantined"] == [] and report["excluded"] == []
    assert report["not_found"] == []
    for identifier in ("MRN0012345", "ACC777", "MRN0099999", "ACC888"):
        assert identifier not in result.output


def test_requeue_refuses_exported_with_exit_2(tmp_path):
    config = _write_site(tmp_path)
    result = runner.invoke(
        app, ["requeue", "--project", "p1", "--status", "exported", "--config", str(config)]
    )
    assert result.exit_code == 2
    assert "cannot be re-queued" in result.output


def _demo_layout(root: Path) -> Path:
    """What `pacsflow demo` leaves: .pacsflow/demo/{pacsflow.yaml,projects/,ledger}."""
    folder = root / ".pacsflow" / "demo"
    (folder / "projects").mkdir(parents=True)
    config = {
        "ledger": f"sqlite:///{folder / 'ledger.db'}",
        "staging": str(folder / "staging"),
        "sources": {
            "primary": {"ae_title": "PRIMARY", "host": "127.0.0.1", "port": 104},
            "secondary": {"ae_title": "SECONDARY", "host": "127.0.0.1", "port": 105},
        },
        "destinations": {"local": {"type": "filesystem", "path": str(folder / "export")}},
    }
    (folder / "pacsflow.yaml").write_text(yaml.safe_dump(config))
    project = {"name": "sandbox-demo", "sources": ["primary", "secondary"], "destination": "local"}
    (folder / "projects" / "sandbox-demo.yaml").write_text(yaml.safe_dump(project))
    return folder


def _ledger_with_outcomes(folder: Path, project: str = "sandbox-demo") -> None:
    """Four studies: exported from primary, from secondary, one not found, one failed."""
    import datetime as dt

    from pacsflow.ledger import make_engine, migrate, session_factory
    from pacsflow.ledger import repository as repo
    from pacsflow.ledger.models import StudyStatus
    from pacsflow.manifest import ManifestRow

    rows = [
        ManifestRow(row=i, study_date=dt.date(2024, 1, i), mrn=mrn, accession_number=acc)
        for i, (mrn, acc) in enumerate(
            [
                ("11000011", "ACC10001"),
                ("22000022", "ACC20002"),
                ("12345689", "ACC30003"),
                ("98765432", "ACC40004"),
            ],
            start=1,
        )
    ]
    engine = make_engine(f"sqlite:///{folder / 'ledger.db'}")
    migrate(engine)
    with session_factory(engine)() as session:
        repo.ingest_manifest(session, project, rows)
        repo.update_study(session, 1, status=StudyStatus.EXPORTED, source="primary")
        repo.update_study(session, 2, status=StudyStatus.EXPORTED, source="secondary")
        repo.update_study(session, 3, status=StudyStatus.NOT_FOUND)
        repo.mark_failed(session, 4, "SourceUnavailable: source SECONDARY timed out")


def test_status_without_flags_finds_the_demo_and_lists_studies_masked(tmp_path, monkeypatch):
    folder = _demo_layout(tmp_path)
    _ledger_with_outcomes(folder)
    monkeypatch.chdir(tmp_path)
    # The console read its width when the CLI was imported (80 where COLUMNS was then
    # unset, as in a pytest-xdist worker); a wide one keeps each study on one line.
    monkeypatch.setattr(cli.console, "width", 160)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert "sandbox-demo" in result.output
    assert "exported from primary" in result.output
    assert "exported from secondary" in result.output
    lines = result.output.splitlines()
    not_found = next(line for line in lines if "not_found" in line and "12****89" in line)
    assert "3" in not_found.split("12****89")[0], "listed by ledger id"
    assert "no source of the project holds it" in not_found
    failed = next(line for line in lines if "98****32" in line)
    assert "failed" in failed and "timed out" in failed
    for identifier in ("12345689", "98765432", "ACC30003", "ACC40004"):
        assert identifier not in result.output


def test_project_is_a_file_or_a_slug_for_status_and_requeue(tmp_path, monkeypatch):
    folder = _demo_layout(tmp_path)
    _ledger_with_outcomes(folder)
    monkeypatch.chdir(tmp_path)
    project_file = str(folder / "projects" / "sandbox-demo.yaml")
    by_file = runner.invoke(app, ["status", "--project", project_file, "--json"])
    by_slug = runner.invoke(app, ["status", "--project", "sandbox-demo", "--json"])
    assert by_file.exit_code == by_slug.exit_code == 0, by_file.output + by_slug.output
    assert by_file.output == by_slug.output
    assert '"not_found": 1' in by_slug.output
    requeued = runner.invoke(app, ["requeue", "--project", project_file, "--status", "not_found"])
    assert requeued.exit_code == 0, requeued.output
    assert "1 not_found studies of sandbox-demo are pending again" in requeued.output


def test_an_unknown_project_exits_2_listing_the_known_ones(tmp_path, monkeypatch):
    folder = _demo_layout(tmp_path)
    _ledger_with_outcomes(folder)
    _ledger_with_outcomes(folder, project="old-project")  # known from the ledger only
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("mrn,accession_number,study_date\n123,A1,2024-01-02\n")
    for args in (
        ["status", "--project", "sandbox-dmeo"],
        ["requeue", "--project", "sandbox-dmeo", "--status", "not_found"],
        ["extract", "--project", "sandbox-dmeo", "--manifest", str(manifest)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "unknown project 'sandbox-dmeo'" in result.output
        assert "sandbox-demo" in result.output
    status = runner.invoke(app, ["status", "--project", "sandbox-dmeo"])
    assert "old-project" in status.output, "projects in the ledger are known too"


def test_extract_takes_a_slug_and_validates_its_project_file(tmp_path, monkeypatch):
    """The slug finds projects/<slug>.yaml beside the site file; input checks still run."""
    folder = _demo_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("mrn,accession_number,study_date\n123,A1,2024-13-02\n")
    result = runner.invoke(
        app, ["extract", "--project", "sandbox-demo", "--manifest", str(manifest)]
    )
    assert result.exit_code == 2
    assert "line 2, column C (study_date)" in result.output
    assert not (folder / "ledger.db").exists()


def test_no_site_config_anywhere_exits_2_saying_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "pacsflow.yaml" in result.output and "--config" in result.output


def test_status_without_project_and_several_in_the_ledger_lists_them(tmp_path, monkeypatch):
    folder = _demo_layout(tmp_path)
    _ledger_with_outcomes(folder)
    _ledger_with_outcomes(folder, project="lung-ct")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "lung-ct" in result.output and "sandbox-demo" in result.output


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"pacsflow {version('pacsflow')}"


def test_mask_keeps_two_characters_at_each_end():
    from deployments.status import mask

    assert mask("12345689") == "12****89"
    assert mask("MRN0012345") == "MR******45"
    assert mask("12345") == "*****"
    assert mask(None) == ""


def test_a_site_name_that_cannot_name_a_block_exits_2(tmp_path):
    config = _write_site(tmp_path)
    result = runner.invoke(
        app, ["configure", str(config), "--site", "Site One"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "'Site One' is not a block name" in result.output


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
    assert [(s["id"], s["reason"]) for s in report["partial"]] == [
        (1, "received 4 of 5 instances from vna")
    ]
    assert report["exported_partial"] == [{"id": 2, "reason": "exported partial: received 4 of 5"}]
    result = runner.invoke(app, ["status", "--project", "p1", "--config", str(config)])
    assert "received 4 of 5 instances from vna" in result.output
    assert "exported partial: received 4 of 5" in result.output
