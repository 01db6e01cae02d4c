"""The pre-flight check flow on a real Prefect server against the sandbox PACS.

The sandbox places each manifest row's study in the primary, the secondary, both or
neither (``SandboxSite.placement``); the check must say so row by row, and the PACS's own
activity log must show that nothing was retrieved. The extraction that follows exports
everything and, trusting the fresh check, asks no source again about the studies the
check found.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pacsflow.config import load_project_config, load_site_config
from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger.models import Study
from pacsflow.sandbox.activity import OperationKind
from tests.integration import test_run_form
from tests.prefect_records import wait_final

pytestmark = pytest.mark.integration

PACSFLOW = str(Path(sys.executable).parent / "pacsflow")
#: The sandbox configured and served by ``pacsflow serve`` (a fixture, shared).
served = test_run_form.served

#: The class the check must give a row, by where the sandbox put its study.
CLASS_OF = {
    "primary": "primary",
    "both": "primary",
    "secondary": "secondary",
    "neither": "not_found",
}


def _rows_by_class(sandbox) -> dict[str, str]:
    """Accession number -> the check result the ledger holds for it."""
    site = load_site_config(sandbox.config_path)
    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        rows = session.query(Study.accession_number, Study.check_result).all()
    return dict(rows)


def _operations(sandbox, kind: OperationKind, since: int = 0) -> dict[str, int]:
    return {
        pacs.ae_title: sum(op.kind == kind for op in pacs.activity[since:])
        for pacs in (sandbox.primary, sandbox.secondary)
    }


def _run_record(flow_run_id) -> str:
    """What Prefect stores about the run: parameters, task runs, logs and artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    record = {
        "parameters": run.parameters,
        "tasks": [(t.name, t.tags) for t in tasks],
        "logs": [log.message for log in logs],
        "artifacts": [(a.key, a.data, a.description) for a in artifacts],
    }
    return json.dumps(record, default=str)


def _artifact_table(flow_run_id, key: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[key]),
            )
        )
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_the_check_classifies_every_row_retrieves_nothing_and_the_extraction_trusts_it(
    sandbox_factory, prefect_api
):
    from blocks.site import save_site
    from flows.check import check_project
    from flows.extract import extract_project

    sandbox = sandbox_factory(n_studies=12)
    save_site(load_site_config(sandbox.config_path))
    expected = sandbox.expected

    state = check_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )

    assert state.is_completed(), state.message
    counts = state.result()
    assert counts["primary"] == expected["primary"] + expected["both"]
    assert counts["secondary"] == expected["secondary"]
    assert counts["not_found"] == expected["neither"]
    assert counts["expected_instances"] == 6 * (12 - expected["neither"])  # 2 series x 3
    manifest = pd.read_csv(sandbox.manifest_path)
    by_row = _rows_by_class(sandbox)
    assert [by_row[acc] for acc in manifest["accession_number"]] == [
        CLASS_OF[place] for place in sandbox.placement
    ]
    # The PACS's own record: C-FIND only, the secondary asked only about what the
    # primary does not hold.
    assert _operations(sandbox, OperationKind.MOVE) == {"PRIMARY": 0, "SECONDARY": 0}
    assert _operations(sandbox, OperationKind.GET) == {"PRIMARY": 0, "SECONDARY": 0}
    assert _operations(sandbox, OperationKind.FIND) == {
        "PRIMARY": 12,
        "SECONDARY": expected["secondary"] + expected["neither"],
    }
    # Prefect holds counts and ledger ids only; check lanes carry their source's tag.
    record = _run_record(state.state_details.flow_run_id)
    identifiers = [*manifest["mrn"].astype(str), *manifest["accession_number"].astype(str)]
    assert [value for value in identifiers if value in record] == []
    assert "found in the primary" in record and "source:primary" in record
    listed = _artifact_table(state.state_details.flow_run_id, "sandbox-demo-check-rows")
    site = load_site_config(sandbox.config_path)
    with session_factory(make_engine(site.ledger))() as session:
        nowhere = session.query(Study.id).filter(Study.check_result == "not_found").all()
    assert listed == [{"ledger id": i, "class": "not found anywhere"} for (i,) in sorted(nowhere)]

    seen = {pacs.ae_title: len(pacs.activity) for pacs in (sandbox.primary, sandbox.secondary)}
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )

    assert state.is_completed(), state.message
    exported = state.result()
    assert exported["exported"] == 12 - expected["neither"]
    assert exported["not_found"] == expected["neither"]
    exported_files = list((sandbox.folder / "export").rglob("*.dcm"))
    assert len(exported_files) == 6 * (12 - expected["neither"])
    # Only the rows the check found nowhere were asked again, at each source.
    finds = {
        pacs.ae_title: sum(
            op.kind == OperationKind.FIND for op in pacs.activity[seen[pacs.ae_title] :]
        )
        for pacs in (sandbox.primary, sandbox.secondary)
    }
    assert finds == {"PRIMARY": expected["neither"], "SECONDARY": expected["neither"]}


def test_a_source_outside_its_window_is_reported_not_checked_and_not_queried(
    sandbox_factory, prefect_api, monkeypatch
):
    import flows.clock
    from blocks.site import save_site
    from flows.check import check_project

    sandbox = sandbox_factory(n_studies=8)
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["sources"]["secondary"]["windows"] = {"timezone": "UTC", "open": ["mon-sun 20:00-08:00"]}
    sandbox.config_path.write_text(yaml.safe_dump(data))
    save_site(load_site_config(sandbox.config_path))
    # A Wednesday noon: the secondary's nightly window is closed.
    noon = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    monkeypatch.setattr(flows.clock, "now", lambda: noon)

    state = check_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )

    assert state.is_completed(), state.message
    expected = sandbox.expected
    counts = state.result()
    assert counts["primary"] == expected["primary"] + expected["both"]
    assert counts["outside_window"] == expected["secondary"] + expected["neither"]
    assert counts["secondary"] == counts["not_found"] == 0
    assert sandbox.secondary.activity == []
    by_row = _rows_by_class(sandbox)
    project = load_project_config(sandbox.project_path)
    manifest = pd.read_csv(sandbox.manifest_path)
    assert project.sources == ["primary", "secondary"]
    assert [by_row[acc] for acc in manifest["accession_number"]] == [
        "primary" if place in ("primary", "both") else "outside_window"
        for place in sandbox.placement
    ]


def test_pacsflow_check_prints_the_counts_and_does_not_check_past_a_source_that_is_down(
    sandbox_factory, prefect_api, tmp_path
):
    sandbox = sandbox_factory(n_studies=8)
    sandbox.primary.set_offline(True)
    command = [
        PACSFLOW,
        "check",
        "--config",
        str(sandbox.config_path),
        "--project",
        str(sandbox.project_path),
        "--manifest",
        str(sandbox.manifest_path),
    ]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "120"}
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"not checked: source unavailable\W+8\b", done.stdout), done.stdout
    assert re.search(r"found in the primary\W+0\b", done.stdout), done.stdout
    # Down is not "not there": no study was asked of the secondary instead.
    assert sandbox.secondary.activity == []
    assert set(_rows_by_class(sandbox).values()) == {"unavailable"}
    manifest = pd.read_csv(sandbox.manifest_path)
    assert not [v for v in manifest["mrn"].astype(str) if v in done.stdout + done.stderr]


def test_the_check_deployment_runs_from_the_form_with_the_project_picked_from_the_list(served):
    from prefect.client.orchestration import get_client

    site = served
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 90
        deployment = None
        while deployment is None and time.monotonic() < deadline:
            try:
                deployment = client.read_deployment_by_name("check-project/check-project")
            except Exception:  # not registered yet
                time.sleep(1)
        assert deployment is not None, "pacsflow serve never registered check-project"
        form = deployment.parameter_openapi_schema["properties"]
        assert "sandbox-demo" in form["project"]["anyOf"][0]["enum"]
        parameters = {"project": "sandbox-demo", "manifest": str(site.manifest_path)}
        run = wait_final(
            client, client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id
        )

    assert run.state.is_completed(), run.state.message
    by_row = _rows_by_class(site)
    manifest = pd.read_csv(site.manifest_path)
    assert [by_row[acc] for acc in manifest["accession_number"]] == [
        CLASS_OF[place] for place in site.placement
    ]
    assert site.primary.activity and not [
        op for op in site.primary.activity + site.secondary.activity if op.kind != "find"
    ]
