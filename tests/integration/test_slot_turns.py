"""A retrieval lane keeps its source's slot while nobody else waits, and passes it on when
another run does; a check lane keeps it too (against the real Prefect server and the
sandbox PACS)."""

from __future__ import annotations

import contextvars
import re
import threading
import time

import pytest
import yaml

from pacsflow.config import load_site_config
from tests.prefect_records import run_logs

pytestmark = pytest.mark.integration

#: Seconds between a lane's looks for another run waiting; far below one retrieval here.
TURN_SECONDS = 0.2


def _busy_sandbox(sandbox_factory, monkeypatch, n_studies: int, primary_limit: int):
    """A sandbox whose primary takes 1 s per retrieval, with lanes looking every 0.2 s."""
    import flows.lanes
    from blocks.site import save_site

    sandbox = sandbox_factory(n_studies=n_studies)
    sandbox.primary.retrieve_delay = 1.0
    data = yaml.safe_load(sandbox.config_path.read_text())
    data["sources"]["primary"]["max_concurrent"] = primary_limit
    sandbox.config_path.write_text(yaml.safe_dump(data))
    save_site(load_site_config(sandbox.config_path))
    monkeypatch.setattr(flows.lanes, "LANE_SECONDS", TURN_SECONDS)
    return sandbox


def _primary_lanes_started(state) -> int:
    logs = "\n".join(run_logs(state.state_details.flow_run_id))
    started = re.search(r"lanes started: \{([^}]*)\}", logs)
    assert started, "the dispatcher logged no lanes"
    return int(re.search(r"'primary': (\d+)", started.group(1)).group(1))


def test_with_nobody_waiting_the_lanes_keep_their_slots_to_the_end(
    sandbox_factory, prefect_api, monkeypatch
):
    from flows.extract import extract_project

    sandbox = _busy_sandbox(sandbox_factory, monkeypatch, n_studies=8, primary_limit=2)
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )

    assert state.is_completed(), state.message
    held = sandbox.expected["primary"] + sandbox.expected["both"]
    assert held >= 3, "the sandbox should give each primary lane more than one retrieval"
    # Each retrieval outlasts a turn five times over; had lanes handed over at every turn,
    # the dispatcher would have started a lane per study.
    assert _primary_lanes_started(state) == 2


def test_a_run_waiting_for_the_source_gets_a_slot_while_the_other_run_still_has_work(
    sandbox_factory, prefect_api, monkeypatch
):
    from prefect import flow, task

    from flows.extract import extract_project
    from flows.limits import source_tag

    sandbox = _busy_sandbox(sandbox_factory, monkeypatch, n_studies=16, primary_limit=2)
    got_slot: list[float] = []

    @task
    def other_projects_retrieval() -> None:
        got_slot.append(time.time())

    @flow
    def other_project() -> None:
        other_projects_retrieval.with_options(tags=[source_tag("primary")]).submit().wait()

    def wait_then_ask() -> None:
        deadline = time.monotonic() + 60
        while len(sandbox.primary.activity) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the extraction holds the primary's slots
        other_project()

    # A copy of this context: the test's Prefect settings (the session's server) go along.
    other = threading.Thread(target=contextvars.copy_context().run, args=(wait_then_ask,))
    other.start()
    state = extract_project(
        project=str(sandbox.project_path), manifest=str(sandbox.manifest_path), return_state=True
    )
    other.join(timeout=60)

    assert state.is_completed(), state.message
    assert got_slot, "the other run never got the primary's slot"
    retrievals = [op for op in sandbox.primary.activity if op.kind in ("move", "get")]
    assert got_slot[0] < max(op.ended_wall for op in retrievals), (
        "the other run got the slot only after the extraction was done with the primary"
    )
    assert _primary_lanes_started(state) > 2  # a lane gave its slot up, and was replaced


def test_a_check_lane_nobody_waits_for_keeps_its_slot_too(sandbox_factory, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from blocks.site import save_site
    from flows.check import check_project

    sandbox = sandbox_factory(n_studies=12)
    save_site(load_site_config(sandbox.config_path))
    # A turn far shorter than one C-FIND: each lane passes its deadline at every study.
    state = check_project(
        project=str(sandbox.project_path),
        manifest=str(sandbox.manifest_path),
        lane_seconds=0.001,
        return_state=True,
    )

    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    lanes = [t.name for t in tasks if t.name.startswith("check-primary-lane-")]
    # The primary's limit is 4: one lane per slot for all 12 studies, not a lane per study.
    assert len(lanes) == 4, lanes


def test_only_a_run_of_another_pull_is_waiting_not_a_sibling_chunk_of_ours(prefect_api):
    """Chunks of one pull work on the same studies: a turn between them would only cost
    the hand-over. A run of another pull waiting for the tag is told apart from them."""
    import uuid

    from prefect import flow, task
    from prefect.client.orchestration import get_client

    from flows.limits import others_wait_for, source_tag

    tag = source_tag(f"turns-{uuid.uuid4().hex[:8]}")
    release, holding = threading.Event(), threading.Event()
    holder_run: list = []

    @task
    def hold_the_slot() -> None:
        holding.set()
        release.wait(60)

    @task
    def wait_for_the_slot() -> None:
        pass

    @flow
    def holder(pull: str) -> None:
        from prefect.runtime import flow_run

        holder_run.append(flow_run.get_id())
        hold_the_slot.with_options(tags=[tag]).submit().wait()

    @flow
    def sibling(pull: str) -> None:
        wait_for_the_slot.with_options(tags=[tag]).submit().wait()

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(holder, "ours")),
    ]
    threads[0].start()
    assert holding.wait(30), "the holder never got the slot"
    threads.append(threading.Thread(target=contextvars.copy_context().run, args=(sibling, "ours")))
    threads[1].start()
    try:
        deadline = time.monotonic() + 30
        while not others_wait_for(tag, holder_run[0]) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the sibling's task is Pending on the tag
        assert others_wait_for(tag, holder_run[0]), "the sibling's task never waited"

        assert not others_wait_for(tag, holder_run[0], pull="ours")
        assert others_wait_for(tag, holder_run[0], pull="another pull")
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=60)
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(tag)
