"""Completeness through the whole flow: a primary that never sends one instance of each
study, on a real Prefect server with the sandbox PACS.

Its studies end ``partial`` (not failed, not sent to the secondary, nothing exported);
once the project allows partial studies and they are requeued, the next pull exports
what arrives and the ledger says the exports are partial.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pacsflow.config import load_project_config, load_site_config
from pacsflow.ledger import make_engine, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import Study, StudyStatus

pytestmark = pytest.mark.integration


def _fast(config_path: Path) -> None:
    data = yaml.safe_load(config_path.read_text())
    for source in data["sources"].values():
        source["retry_delays"] = [0.1, 0.1]  # two re-fetches of the missing instance
        source["timeout"] = 10
    config_path.write_text(yaml.safe_dump(data))


def _exported_studies(root: Path) -> list[Path]:
    """Study folders at the filesystem destination (the .partial staging area left out)."""
    if not root.exists():
        return []
    return [p for p in root.glob("*/*") if p.is_dir() and ".partial" not in p.parts]


def test_studies_the_primary_sends_incompletely_end_partial_then_export_when_allowed(
    sandbox_factory, prefect_api
):
    from blocks.site import save_site
    from flows.extract import extract_project

    sandbox = sandbox_factory(n_studies=6)
    _fast(sandbox.config_path)
    site = load_site_config(sandbox.config_path)
    project = load_project_config(sandbox.project_path)
    save_site(site)
    at_primary = sandbox.expected["primary"] + sandbox.expected["both"]
    sandbox.primary.drop_instances(1, requests=10_000)  # the first instance of every request

    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )

    assert state.is_completed(), state.message  # partial is an outcome, not a failure
    counts = state.result()
    assert counts["partial"] == at_primary and counts["failed"] == 0
    assert counts["exported"] == sandbox.expected["secondary"]  # the both-study stayed partial
    export_root = Path(site.destinations[project.destination].path) / project.name
    assert len(_exported_studies(export_root)) == sandbox.expected["secondary"]
    sessions = session_factory(make_engine(site.ledger))
    with sessions() as session:
        partial = session.query(Study).filter(Study.status == StudyStatus.PARTIAL).all()
        assert {row.source for row in partial} == {"primary"}
        for row in partial:
            assert row.received_instances == row.expected_instances - 1
            assert row.error_type == "partial" and "IMAGE-level re-fetches" in row.last_error

    # The project accepts partial studies: requeued, they are exported, and say so.
    data = yaml.safe_load(sandbox.project_path.read_text())
    sandbox.project_path.write_text(yaml.safe_dump({**data, "allow_partial": True}))
    with sessions() as session:
        assert repo.requeue(session, project.name, StudyStatus.PARTIAL) == at_primary
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result()["exported"] == at_primary + sandbox.expected["secondary"]
    assert len(_exported_studies(export_root)) == at_primary + sandbox.expected["secondary"]
    with sessions() as session:
        listed = repo.partially_exported(session, project.name)
        assert len(listed) == at_primary
        for row in session.query(Study).filter(Study.error_type == "partial"):
            assert row.status == StudyStatus.EXPORTED
            assert row.exported_instances == row.received_instances == row.expected_instances - 1
