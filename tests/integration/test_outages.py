"""Source outages and restarts mid-run, against real Orthanc, PostgreSQL and Prefect servers.

* The primary PACS is stopped for :data:`OUTAGE_SECONDS` while a pull runs: its transport
  errors are retried with backoff and jitter, no study is recorded ``not_found`` or taken
  from the secondary because the primary was down, and every study ends exported once
  the primary is back.
* The Prefect server, or the ledger's PostgreSQL, is restarted while a pull runs: the
  run completes, or it fails and a rerun of the same pull completes; either way every
  study is at the destination exactly once (by SOP Instance UID) and no partial file is
  visible there.

Each test starts the servers it restarts itself (the session's are shared by other tests).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml

from pacsflow.config import SiteConfig
from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger.models import Study
from pacsflow.sandbox.synthetic import make_patients, make_study, write_study
from tests.servers import (
    OrthancServer,
    _spawn,
    _wait_http_ready,
    free_port,
    orthanc_binary,
)

pytestmark = pytest.mark.integration

PROJECT = "outage-ct"
#: How long the primary PACS stays down.
OUTAGE_SECONDS = 30.0
#: The primary's retry delays: they add up (even shrunk by the 25% jitter) to more than
#: the outage plus Orthanc's ~4 s shutdown, so no study runs out of tries while it is down.
PRIMARY_RETRY_DELAYS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
#: Fraction by which pacsflow.failures jitters a retry delay.
JITTER = 0.25
INSTANCES_PER_STUDY = 4


# -- the site -------------------------------------------------------------------------


def _site(
    orthanc_factory, ledger: str, tmp_path: Path, n_studies: int
) -> tuple[dict, OrthancServer, OrthancServer]:
    """A primary and a secondary Orthanc that both hold every study, a site, a project and
    a manifest. The secondary holding them too is what would show a study fetched from it
    because the primary was down."""
    receiver_port = free_port()
    known = {"pacsflow": ("PACSFLOW", "127.0.0.1", receiver_port)}
    primary = orthanc_factory("PRIMARY", known)
    secondary = orthanc_factory("SECONDARY", known)
    rows, sop_uids = [], set()
    for number, patient in enumerate(make_patients(n_studies, seed=11)):
        accession = f"OUT{number:05d}"
        study_date = dt.date(2022, 1, 1) + dt.timedelta(days=number)
        datasets = make_study(
            mrn=patient.mrn,
            accession=accession,
            study_date=study_date,
            patient_name=patient.name,
            birth_date=patient.birth_date,
            sex=patient.sex,
            n_series=2,
            n_instances=INSTANCES_PER_STUDY // 2,
            seed=11,
        )
        files = write_study(datasets, tmp_path / "seed" / accession)
        assert primary.upload(files) == secondary.upload(files) == len(files)
        sop_uids |= {str(ds.SOPInstanceUID) for ds in datasets}
        rows.append(
            {"mrn": patient.mrn, "accession_number": accession, "study_date": str(study_date)}
        )
    site = SiteConfig.model_validate(
        {
            "ledger": ledger,
            "receiver": {"ae_title": "PACSFLOW", "port": receiver_port},
            "staging": str(tmp_path / "staging"),
            "sources": {
                "primary": {
                    "ae_title": "PRIMARY",
                    "host": "127.0.0.1",
                    "port": primary.dicom_port,
                    "max_concurrent": 2,
                    "retrieve": "move",
                    "timeout": 5,
                    "retry_delays": PRIMARY_RETRY_DELAYS,
                },
                "secondary": {
                    "ae_title": "SECONDARY",
                    "host": "127.0.0.1",
                    "port": secondary.dicom_port,
                    "max_concurrent": 1,
                    "retrieve": "get",
                    "timeout": 5,
                },
            },
            "destinations": {"out": {"type": "filesystem", "path": str(tmp_path / "export")}},
        }
    )
    project_file = tmp_path / "projects" / f"{PROJECT}.yaml"
    project_file.parent.mkdir()
    key = f"{PROJECT}-key-{tmp_path.name[-12:].lower().replace('_', '-')}"
    project_file.write_text(
        yaml.safe_dump(
            {
                "name": PROJECT,
                "sources": ["primary", "secondary"],
                "destination": "out",
                "key_secret": key,
            }
        )
    )
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    scenario = {
        "site": site,
        "project": str(project_file),
        "manifest": str(manifest),
        "export": tmp_path / "export" / PROJECT,
        "n_studies": n_studies,
    }
    return scenario, primary, secondary


def _ledger_rows(site: SiteConfig) -> list[Study]:
    engine = make_engine(site.ledger)
    try:
        with session_factory(engine)() as session:
            return list(session.query(Study).filter_by(project=PROJECT).order_by(Study.id))
    finally:
        engine.dispose()


def _exported_count(site: SiteConfig) -> int:
    try:
        return sum(row.status == "exported" for row in _ledger_rows(site))
    except Exception:  # the ledger may be down in the restart tests
        return 0


def _assert_exported_exactly_once(scenario: dict) -> None:
    """At the destination: every study, each instance once (by its SOP Instance UID, which
    de-identification remaps, so counted per study), no partial file; the ledger agrees."""
    root: Path = scenario["export"]
    files = sorted(root.glob("*/*/*.dcm"))
    seen = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert len(seen) == len(set(seen)), "an instance was exported twice"
    assert len(seen) == scenario["n_studies"] * INSTANCES_PER_STUDY
    by_study = defaultdict(int)
    for f in files:
        by_study[f.parent.name] += 1
    assert len(by_study) == scenario["n_studies"]
    assert set(by_study.values()) == {INSTANCES_PER_STUDY}
    assert not [p for p in root.rglob("*") if ".partial" in p.parts and p.is_file()]
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.part"))
    rows = _ledger_rows(scenario["site"])
    assert [r.status for r in rows] == ["exported"] * scenario["n_studies"]
    assert {r.pseudo_study_uid for r in rows} == set(by_study)
    assert all(r.exported_instances == INSTANCES_PER_STUDY for r in rows)


def _in_background(action: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``action`` in a thread; exceptions are collected for the test to re-raise."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            errors.append(exc)

    thread = threading.Thread(target=run, name="outage", daemon=True)
    thread.start()
    return thread, errors


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


# -- restarting servers on the same port -----------------------------------------------


def restart_orthanc(old: OrthancServer) -> OrthancServer:
    """Start Orthanc again from ``old``'s config.json: same ports, storage and index."""
    binary = orthanc_binary()
    assert binary is not None
    process = _spawn(
        [binary, str(old.config_path)],
        cwd=old.workdir,
        env={**os.environ, "TCP_NODELAY": "1"},
        log_path=old.log_path,
    )
    server = OrthancServer(
        aet=old.aet,
        dicom_port=old.dicom_port,
        http_port=old.http_port,
        pid=process.pid,
        workdir=old.workdir,
        _process=process,
    )
    status = _wait_http_ready(
        server.base_url + "/system",
        process,
        20,
        server.stop,
        RuntimeError,
        f"restarted Orthanc (pid {server.pid})",
        log_path=old.log_path,
        interval=0.05,
    )
    assert status is None, f"restarted Orthanc exited with {status} (its port was taken?)"
    return server


# -- the primary PACS down for a while -------------------------------------------------

_RETRY_LOG = re.compile(
    r"study (\d+) at primary: transient: .*\(try (\d+); tried again in ([\d.]+) s\)"
)


def _run_logs(flow_run_id) -> list[str]:
    """The messages of a run and its subflows, as the Prefect UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10, at_exit=False)
    EventsWorker.drain_all(timeout=5, at_exit=False)
    with get_client(sync_client=True) as client:
        runs = [r.id for r in client.read_flow_runs(limit=200)]
        ids = [flow_run_id, *runs]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200)
        offset = 200
        while batch := client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset
        ):
            logs += batch
            offset += 200
    return [log.message for log in logs]


def test_primary_down_for_a_while_mid_run_is_waited_for_not_skipped(
    orthanc_factory, ledger_url, tmp_path, prefect_api
):
    from blocks.site import save_site
    from flows.extract import extract_project

    scenario, primary, secondary = _site(orthanc_factory, ledger_url, tmp_path, n_studies=24)
    save_site(scenario["site"])
    outage: dict[str, float] = {}

    def stop_then_restart() -> None:
        _wait_for(lambda: _exported_count(scenario["site"]) >= 2, 120, "2 studies exported")
        # SIGKILL: Orthanc goes on serving for seconds after a SIGTERM; a crash or a cut
        # cable stops at once. Its index is SQLite, which survives that.
        os.kill(primary.pid, signal.SIGKILL)
        primary.wait_stopped()
        outage["stopped"] = time.monotonic()
        outage["exported_before"] = _exported_count(scenario["site"])
        time.sleep(OUTAGE_SECONDS)
        orthanc_factory.servers.append(restart_orthanc(primary))  # stopped at teardown
        outage["restarted"] = time.monotonic()

    thread, errors = _in_background(stop_then_restart)
    started = time.monotonic()
    try:
        state = extract_project(
            project=scenario["project"], manifest=scenario["manifest"], return_state=True
        )
    finally:
        thread.join(timeout=OUTAGE_SECONDS + 60)
        from pacsflow.dicom.receiver import stop_process_receiver

        stop_process_receiver()
    print(
        f"run {time.monotonic() - started:.1f} s; primary down at "
        f"{outage.get('stopped', 0) - started:.1f} s for "
        f"{outage.get('restarted', 0) - outage.get('stopped', 0):.1f} s"
    )
    assert not errors, errors
    assert "restarted" in outage, "the primary was never restarted"
    assert outage["exported_before"] < scenario["n_studies"], "the run ended before the outage"

    assert state.is_completed(), state.message
    counts = state.result()
    assert counts.get("exported") == scenario["n_studies"], counts
    rows = _ledger_rows(scenario["site"])
    # Nothing was judged on the primary's absence: no "not found", nothing from the
    # secondary, no study ever moved on to it.
    assert {(r.status, r.source, r.source_index) for r in rows} == {("exported", "primary", 0)}
    assert not any(r.error_type for r in rows)
    _assert_exported_exactly_once(scenario)

    # The outage was retried: some studies were claimed several times, each retry after
    # about its try's delay (backoff), changed at random within the jitter.
    assert any(r.attempts > 1 for r in rows)
    retries = [
        (int(m[1]), int(m[2]), float(m[3]))
        for m in map(_RETRY_LOG.search, _run_logs(state.state_details.flow_run_id))
        if m
    ]
    assert retries, "no transient failure was logged while the primary was down"
    for _study, tried, delay in retries:
        nominal = PRIMARY_RETRY_DELAYS[tried - 1]
        assert (1 - JITTER) * nominal - 0.05 <= delay <= (1 + JITTER) * nominal + 0.05
    assert max(tried for _, tried, _ in retries) >= 3, "no study backed off past its 2nd try"
    off_nominal = [d for _, tried, d in retries if abs(d - PRIMARY_RETRY_DELAYS[tried - 1]) > 0.05]
    assert len(off_nominal) >= len(retries) // 2, "retry delays carry no jitter"
    by_try = defaultdict(set)
    for _, tried, delay in retries:
        by_try[tried].add(delay)
    assert any(len(delays) > 1 for delays in by_try.values()), "every study waited alike"
