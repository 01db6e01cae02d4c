"""A lane queries its next study while it retrieves one, and never beyond the source's
limit; with ``find_ahead: false`` queries and retrievals together stay within it (against
the real Prefect server and the sandbox PACS)."""

from __future__ import annotations

import csv

import pytest
import yaml

from pacsflow.config import load_site_config
from pacsflow.sandbox.activity import RETRIEVALS, OperationKind, max_in_flight

pytestmark = pytest.mark.integration

LIMIT = 2


def _run(sandbox, delay: float, find_ahead: bool | None = None) -> None:
    """Extract the sandbox's manifest from a primary at ``delay`` s per retrieval, limit 2."""
    from blocks.site import save_site
    from flows.extract import extract_project

    sandbox.primary.retrieve_delay = delay
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["sources"]["primary"]["max_concurrent"] = LIMIT
    if find_ahead is not None:  # None: the default
        data["sources"]["primary"]["find_ahead"] = find_ahead
    sandbox.config_path.write_text(yaml.safe_dump(data))
    save_site(load_site_config(sandbox.config_path))
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result()["exported"] == len(sandbox.placement) - sandbox.expected["neither"]


def _extract(sandbox_factory, find_ahead: bool | None):
    """Run a 10-study extraction from a primary at 0.3 s per retrieval, limit 2."""
    sandbox = sandbox_factory(n_studies=10)
    _run(sandbox, 0.3, find_ahead)
    held = sandbox.expected["primary"] + sandbox.expected["both"]
    assert held >= 2 * LIMIT, "each primary lane should get more than one retrieval"
    return sandbox.primary.activity


def test_by_default_a_lane_finds_its_next_study_while_it_retrieves_within_the_limit(
    sandbox_factory, prefect_api
):
    ops = _extract(sandbox_factory, find_ahead=None)

    assert max_in_flight(ops, RETRIEVALS) == LIMIT
    assert max_in_flight(ops, {OperationKind.FIND}) <= LIMIT  # one query per lane at most
    # Queries beside the retrievals: with one association per lane (no find-ahead) the
    # source would never see more than LIMIT requests at once.
    assert max_in_flight(ops) > LIMIT, "no query ran beside a retrieval: nothing found ahead"


def test_without_find_ahead_queries_and_retrievals_together_stay_within_the_limit(
    sandbox_factory, prefect_api
):
    ops = _extract(sandbox_factory, find_ahead=False)

    assert max_in_flight(ops, RETRIEVALS) == LIMIT
    assert max_in_flight(ops) <= LIMIT  # every request, C-FIND included


def test_studies_only_the_secondary_holds_reach_it_while_the_primary_is_still_busy(
    sandbox_factory, prefect_api
):
    """The manifest lists the primary's studies first, as one sorted by date lists an
    archive's old ones together; the secondary must not wait for the primary to have
    retrieved every study listed before its own."""
    sandbox = sandbox_factory(n_studies=24)
    with sandbox.manifest_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    first = ("primary", "both", "secondary", "neither")
    ordered = sorted(zip(sandbox.placement, rows, strict=True), key=lambda p: first.index(p[0]))
    with sandbox.manifest_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for _, row in ordered)
    _run(sandbox, 0.6)  # slow enough for the lanes to look ahead

    primary = [op for op in sandbox.primary.activity if op.kind in RETRIEVALS]
    secondary = [op for op in sandbox.secondary.activity if op.kind in RETRIEVALS]
    assert len(primary) == sandbox.expected["primary"] + sandbox.expected["both"]
    assert len(secondary) == sandbox.expected["secondary"]
    assert max_in_flight(sandbox.primary.activity, RETRIEVALS) <= LIMIT
    first_at_secondary = min(op.started for op in secondary)
    after = [op for op in primary if op.started > first_at_secondary]
    assert len(after) >= len(primary) / 2, (
        f"the secondary began only after {len(primary) - len(after)} of the primary's "
        f"{len(primary)} retrievals"
    )
