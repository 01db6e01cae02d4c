"""After a real extraction, nothing Prefect keeps holds a patient identifier.

A site configures pacsflow and runs ``pacsflow extract`` (a process of its own, with its
own ``PREFECT_HOME``) against a Prefect server of this test's own, on PostgreSQL and on
SQLite. The run
has every outcome: studies exported from either source, not found, ambiguous, and one
failed by an error that quotes the patient's name, MRN and study UID. Then
every table of that server's database (flow and task runs, their parameters and states,
logs, artifacts, events, variables, automations, blocks), every block document decrypted
through the API except Secret blocks, the server's log and every file under the worker's
``PREFECT_HOME`` (its result storage with the cache records: decoded, since a record's
value is base64) are searched for every identifier of the manifest and of the source
PACS' files: MRN, accession number, study date, patient and staff names, birth date and
the original study, series and SOP instance UIDs. The expected number of hits is zero.

The server is this test's own because the sandbox's patients are the same in every test
(seed 0): another test's deliberate leak probe would otherwise be found here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pacsflow.config import load_site_config
from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger.models import Study
from tests.integration.test_extract_sandbox import _fast_retries, _twin_rows
from tests.servers import PostgresServer, PrefectServerProcess, start_prefect_server

pytestmark = pytest.mark.integration

PACSFLOW = str(Path(sys.executable).parent / "pacsflow")
#: Family names of the sandbox that are ordinary words as well (in Prefect's own JSON
#: schemas, say): searched as part of the full name only.
COMMON_WORDS = {"placeholder", "tester"}


@dataclass(frozen=True)
class Needle:
    """One identifier to look for, and what it is (shown when found, never the value)."""

    kind: str
    value: str
    whole_word: bool = False

    def found_in(self, text: str) -> bool:
        if self.whole_word:
            return re.search(rf"(?<![a-z0-9]){re.escape(self.value)}(?![a-z0-9])", text) is not None
        return self.value in text


def _dates(kind: str, value: str) -> list[Needle]:
    """A DICOM date (YYYYMMDD) in that form and as ISO YYYY-MM-DD."""
    iso = f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    return [Needle(kind, value), Needle(kind, iso)]


def _names(kind: str, value: str) -> list[Needle]:
    """A person name as DICOM writes it, as people write it, and its distinctive parts."""
    parts = [p for p in value.lower().split("^") if p]
    needles = [Needle(kind, value.lower())]
    if len(parts) >= 2:
        needles += [
            Needle(kind, f"{parts[1]} {parts[0]}"),
            Needle(kind, f"{parts[0]}, {parts[1]}"),
        ]
    needles += [
        Needle(f"{kind} part", p, whole_word=True)
        for p in parts
        if len(p) >= 6 and p not in COMMON_WORDS
    ]
    return needles


def identifiers(manifest: Path, pacs_folders: list[Path]) -> list[Needle]:
    """Every identifier of the manifest and of the DICOM files in ``pacs_folders``."""
    needles: list[Needle] = []
    rows = pd.read_csv(manifest, dtype=str)
    for row in rows.to_dict("records"):
        needles += [Needle("manifest MRN", row["mrn"].lower())]
        needles += [Needle("manifest accession", row["accession_number"].lower())]
        needles += _dates("manifest study date", row["study_date"].replace("-", ""))
    for folder in pacs_folders:
        for path in folder.glob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in ("PatientID", "AccessionNumber"):
                needles.append(Needle(keyword, str(ds.get(keyword, "")).lower()))
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                needles.append(Needle(f"original {keyword}", str(ds[keyword].value).lower()))
            needles += _dates("PatientBirthDate", str(ds.PatientBirthDate))
            needles += _dates("StudyDate", str(ds.StudyDate))
            for element in ds.iterall():
                if element.VR == "PN" and element.value:
                    needles += _names(element.keyword or "person name", str(element.value))
    unique = {(n.kind, n.value, n.whole_word): n for n in needles if len(n.value) >= 3}
    return list(unique.values())


@dataclass(frozen=True)
class PrefectDatabase:
    """The test server's database, read with its own driver: PostgreSQL or SQLite."""

    postgres: PostgresServer | None = None
    name: str = ""
    sqlite_path: Path | None = None

    def rows(self, sql: str) -> list[tuple]:
        if self.sqlite_path is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_path)) as db:
                return db.execute(sql).fetchall()
        assert self.postgres is not None
        with self.postgres.connect(self.name) as db:
            return db.execute(sql).fetchall()

    def texts(self) -> dict[str, list[str]]:
        """Every row of every table, as lower-case text, by table."""
        if self.sqlite_path is not None:
            tables = [n for (n,) in self.rows("select name from sqlite_master where type='table'")]
            return {
                table: [
                    " | ".join(map(str, row)).lower()
                    for row in self.rows(f'select * from "{table}"')
                ]
                for table in tables
            }
        tables = [
            name
            for (name,) in self.rows(
                "select table_name from information_schema.tables "
                "where table_schema = 'public' and table_type = 'BASE TABLE'"
            )
        ]
        return {
            table: [row[0].lower() for row in self.rows(f'select t::text from "{table}" t')]
            for table in tables
        }


def _from_api(api_url: str) -> tuple[list[str], dict[str, object]]:
    """Every block document but Secret blocks, decrypted (the database holds them
    encrypted, so the table search alone could not see into them), and the latest
    artifact of each key, as the UI shows it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        documents = client.read_block_documents(include_secrets=True)
        artifacts = client.read_artifacts()
    blocks = [
        json.dumps(doc.data, default=str).lower()
        for doc in documents
        if doc.block_type is None or doc.block_type.slug != "secret"
    ]
    latest = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        if artifact.key:
            data = artifact.data
            latest[artifact.key] = json.loads(data) if artifact.type == "table" else data
    return blocks, latest


def _file_texts(folder: Path) -> dict[str, str]:
    """Every file under ``folder``; a result record also with its value decoded."""
    from prefect._internal.result_records import ResultRecord

    texts = {}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        text = data.decode("utf-8", "replace")
        with contextlib.suppress(Exception):  # not a result record: the raw text only
            text += repr(ResultRecord.deserialize(data).result)
        texts[str(path.relative_to(folder))] = text.lower()
    return texts


#: Loaded by the ``pacsflow`` processes of the test (Python imports ``sitecustomize`` at
#: start): reading one patient's instances fails with a message that quotes their name,
#: MRN and study UID, as a library's error might.
BROKEN_READ = """
import os

import pacsflow.deid.study as study

_real = study.read_instance


def _broken(path):
    ds = _real(path)
    if str(ds.PatientID) == os.environ["PACSFLOW_TEST_BROKEN_MRN"]:
        raise ValueError(f"cannot parse {ds.PatientName} {ds.PatientID} {ds.StudyInstanceUID}")
    return ds


study.read_instance = _broken
"""


def _wait_until_recorded(database: PrefectDatabase, timeout: float = 90.0) -> None:
    """Until the server has persisted the run's events and logs (it does so in batches)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        sizes = tuple(
            database.rows(f"select count(*) from {table}")[0][0]
            for table in ("events", "log", "task_run", "artifact")
        )
        [(done,)] = database.rows(
            "select count(*) from events "
            "where event in ('prefect.flow-run.Completed', 'prefect.flow-run.Failed')"
        )
        if done >= 2 and sizes == last:  # extract-project and process-studies ended
            return
        last = sizes
        time.sleep(3.0)
    pytest.fail(f"the Prefect server did not record the run's events within {timeout:.0f} s")


@pytest.fixture(params=["postgresql", "sqlite"])
def prefect_server_of_our_own(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[PrefectServerProcess, PrefectDatabase]]:
    """A Prefect server for this test only, on PostgreSQL (production) or SQLite (the
    local server pacsflow starts, and the demo's)."""
    home = tmp_path / "server-home"
    if request.param == "sqlite":
        server = start_prefect_server(home)
        database = PrefectDatabase(sqlite_path=home / "prefect.db")
        assert database.sqlite_path.exists()
        try:
            yield server, database
        finally:
            server.stop()
        return
    postgres = request.getfixturevalue("postgres")
    name = f"prefect_leaks_{secrets.token_hex(4)}"
    server = start_prefect_server(home, postgres.create_database(name, driver="asyncpg"))
    try:
        yield server, PrefectDatabase(postgres=postgres, name=name)
    finally:
        server.stop()
        postgres.drop_database(name)


def _a_primary_patient(folder: Path) -> pydicom.Dataset:
    """The header of a study the primary holds for a manifest row of its own (not an
    ambiguous twin, which is never de-identified)."""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.AccessionNumber).startswith("ACC"):
            return ds
    raise AssertionError(f"no sandbox study in {folder}")


def test_nothing_prefect_keeps_holds_a_patient_identifier(
    sandbox_factory, prefect_server_of_our_own, tmp_path
):
    server, database = prefect_server_of_our_own
    sandbox = sandbox_factory(n_studies=8)
    _fast_retries(sandbox.config_path, [0.5])
    _twin_rows(sandbox)  # two ambiguous rows: a failure reason in the report
    # One patient of the primary fails in de-identification, quoting identifiers.
    broken = _a_primary_patient(sandbox.folder / "pacs-primary")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(BROKEN_READ)
    worker_home = tmp_path / "worker-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(worker_home)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(inject), env.get("PYTHONPATH")]))
    env["PACSFLOW_TEST_BROKEN_MRN"] = str(broken.PatientID)
    run = {"env": env, "cwd": tmp_path, "capture_output": True, "text": True, "timeout": 400}
    configure = subprocess.run([PACSFLOW, "configure", str(sandbox.config_path)], **run)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    extract = subprocess.run(
        [
            PACSFLOW,
            "extract",
            "--config",
            str(sandbox.config_path),
            "--project",
            str(sandbox.project_path),
            "--manifest",
            str(sandbox.manifest_path),
        ],
        **run,
    )
    # 1: a study failed and two ambiguous rows need a person's decision.
    assert extract.returncode == 1, extract.stdout[-3000:] + extract.stderr[-3000:]
    # The pre-flight check's flow (its lanes, counts and artifact) is searched too.
    check = subprocess.run(
        [PACSFLOW, "check", "--config", str(sandbox.config_path)]
        + ["--project", str(sandbox.project_path), "--manifest", str(sandbox.manifest_path)],
        **run,
    )
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    _wait_until_recorded(database)

    site = load_site_config(sandbox.config_path)
    with session_factory(make_engine(site.ledger))() as session:
        rows = session.query(Study).all()
        statuses = sorted(r.status for r in rows)
        pseudonyms = [r.pseudo_patient_id.lower() for r in rows if r.status == "exported"]
        [failed] = [r for r in rows if r.status == "failed"]
    assert statuses.count("exported") == 8 - sandbox.expected["neither"] - 1
    assert statuses.count("ambiguous") == 2
    assert failed.mrn in failed.last_error  # the detail is kept, in the ledger only

    needles = identifiers(
        sandbox.manifest_path,
        [sandbox.folder / "pacs-primary", sandbox.folder / "pacs-secondary"],
    )
    kinds = {n.kind for n in needles}
    assert {"manifest MRN", "original SOPInstanceUID", "PatientName"} <= kinds
    assert len(needles) > 100

    tables = database.texts()
    blocks, artifacts = _from_api(server.api_url)
    files = _file_texts(worker_home)
    files |= {f"server: {k}": v for k, v in _file_texts(server.home).items()}

    # What the run shows at its end: counts per status and per failure reason, and
    # the time per stage, every stage of which some study went through.
    exported = statuses.count("exported")
    by_status = {row["status"]: row for row in artifacts["sandbox-demo-status"]}
    assert by_status["exported"]["this pull"] == exported
    assert by_status["ambiguous"]["studies"] == 2
    assert artifacts["sandbox-demo-failure-reasons"] == [
        {"status": "ambiguous", "reason": "ambiguous", "studies": 2},
        {"status": "failed", "reason": "deid_failed", "studies": 1},
    ]
    stage_rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[1]
        for line in artifacts["sandbox-demo-stage-times"].splitlines()
        if line.startswith("| ") and not line.startswith("| stage")
    }
    assert int(stage_rows["find"]) >= 8 + 2
    assert int(stage_rows["fetch"]) == int(stage_rows["de-identify"]) == exported + 1
    assert int(stage_rows["export"]) == exported

    # The search sees what it must: the run, its artifacts, its logs, the cache records.
    everything = "\n".join(t for rows_ in tables.values() for t in rows_)
    assert any("process-sandbox-demo-0" in t for t in tables["flow_run"])
    assert any("sandbox-demo-stage-times" in t for t in tables["artifact"])
    assert any("sandbox-demo-check" in t for t in tables["artifact"])  # the check ran
    assert tables["log"] and tables["events"] and tables["variable"]
    assert any(site.sources["primary"].ae_title.lower() in b for b in blocks)
    assert any(p in "\n".join(files.values()) for p in pseudonyms), "no cache record read"

    hits = [
        f"{needle.kind} in table {table}"
        for needle in needles
        for table, texts in tables.items()
        if any(needle.found_in(t) for t in texts)
    ]
    hits += [f"{n.kind} in a block" for n in needles if any(n.found_in(b) for b in blocks)]
    hits += [
        f"{needle.kind} in file {name}"
        for needle in needles
        for name, text in files.items()
        if needle.found_in(text)
    ]
    assert everything  # searched something
    assert not hits, "patient data in Prefect: " + "; ".join(sorted(set(hits)))
