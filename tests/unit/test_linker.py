"""The linker parquet: exactly its four columns, one row per exported study, no identifiers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from deployments.cli import app
from pacsflow.ledger import StudyStatus, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.linker import COLUMNS
from pacsflow.manifest import ManifestRow

runner = CliRunner()
DATE = dt.date(2024, 3, 5)
# (procedure_id, mrn, accession, final status): the first two are exported.
ROWS = [
    ("PROC-1", "MRN0001", "ACC0001", StudyStatus.EXPORTED),
    (None, "MRN0002", "ACC0002", StudyStatus.EXPORTED),
    ("PROC-3", "MRN0003", "ACC0003", StudyStatus.FAILED),
    ("PROC-4", "MRN0004", "ACC0004", StudyStatus.PENDING),
]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site with two destinations and a ledger holding the ROWS of project lung-ct."""
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    config = {
        "ledger": ledger,
        "sources": {"vna": {"ae_title": "VNA", "host": "127.0.0.1", "port": 104}},
        "destinations": {
            "share": {"type": "filesystem", "path": str(tmp_path / "export")},
            "node": {"type": "dicom", "ae_title": "NODE", "host": "127.0.0.1", "port": 104},
        },
    }
    path = tmp_path / "pacsflow.yaml"
    path.write_text(yaml.safe_dump(config))
    engine = make_engine(ledger)
    migrate(engine)
    with session_factory(engine)() as session:
        for n, (procedure, mrn, accession, _status) in enumerate(ROWS, start=1):
            row = ManifestRow(
                row=n, study_date=DATE, mrn=mrn, accession_number=accession, procedure_id=procedure
            )
            repo.ingest_manifest(session, "lung-ct", [row])
        other = ManifestRow(row=1, study_date=DATE, mrn="MRN9", accession_number="ACC9")
        repo.ingest_manifest(session, "other-project", [other])
        ids = sorted(i for i, _ in repo.studies_to_process(session, "lung-ct"))
        for study_id, (_p, _mrn, _a, status) in zip(ids, ROWS, strict=True):
            repo.update_study(
                session, study_id, found_study_uid=f"1.2.826.{study_id}", pseudo_patient_id=None
            )
            if status == StudyStatus.EXPORTED:
                repo.update_study(
                    session,
                    study_id,
                    pseudo_patient_id=f"PSEUDO-{study_id}",
                    pseudo_study_uid=f"2.25.{study_id}",
                )
                repo.mark_exported(session, study_id, 3)
            elif status == StudyStatus.FAILED:
                repo.mark_failed(session, study_id, "source down")
        [(other_id, _)] = repo.studies_to_process(session, "other-project")
        repo.update_study(session, other_id, pseudo_patient_id="X", pseudo_study_uid="2.25.9")
        repo.mark_exported(session, other_id, 1)
    engine.dispose()
    return path


def test_linker_is_written_and_sent_to_a_folder_destination(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --output is relative
    result = runner.invoke(
        app,
        ["export-linker", "--project", "lung-ct", "--config", str(site), "--destination", "share"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    sent = tmp_path / "export" / "lung-ct" / "linker.parquet"
    assert sent.is_file()
    frame = pd.read_parquet(sent)
    assert tuple(frame.columns) == COLUMNS
    assert frame["procedure_id"].tolist()[0] == "PROC-1"
    assert pd.isna(frame["procedure_id"].tolist()[1])
    assert frame["pseudo_patient_id"].tolist() == ["PSEUDO-1", "PSEUDO-2"]
    assert frame["pseudo_study_uid"].tolist() == ["2.25.1", "2.25.2"]
    now = pd.Timestamp.now(tz="UTC")
    assert all(now - pd.Timedelta(minutes=5) < t <= now for t in frame["exported_at"])
    data = sent.read_bytes()
    for _procedure, mrn, accession, _status in ROWS:
        assert mrn.encode() not in data
        assert accession.encode() not in data
    assert b"1.2.826." not in data  # no original study UID
    # The same file stays on this machine too.
    local = tmp_path / ".pacsflow" / "linker" / "lung-ct" / "linker.parquet"
    assert pd.read_parquet(local).equals(frame)


def test_several_destinations_need_the_option(site: Path) -> None:
    result = runner.invoke(app, ["export-linker", "--project", "lung-ct", "--config", str(site)])
    assert result.exit_code == 2
    assert "declares 2 destinations ['node', 'share']; pass --destination" in result.output
    result = runner.invoke(
        app,
        [
            "export-linker",
            "--project",
            "lung-ct",
            "--config",
            str(site),
            "--destination",
            "nas",
        ],
    )
    assert result.exit_code == 2
    assert "--destination 'nas' is not declared" in result.output


def test_a_dicom_destination_keeps_the_linker_local(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        [
            "export-linker",
            "--project",
            "lung-ct",
            "--config",
            str(site),
            "--destination",
            "node",
            "--output",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "holds DICOM only" in result.output
    assert len(pd.read_parquet(tmp_path / "out" / "lung-ct" / "linker.parquet")) == 2
