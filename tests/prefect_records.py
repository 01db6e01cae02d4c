"""What the Prefect server holds about one flow run: its subflows and their log lines.

Tests share one Prefect server for the whole session, so "every flow run on the server"
is other tests' runs too: read a run's own tree, never all runs. And logs reach the server
in batches from a background worker, so send what is buffered before reading them.
"""

from __future__ import annotations

import time
from uuid import UUID

import pytest


def flush_to_server(timeout: float = 10) -> None:
    """Send the run logs and events this process still buffers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout, at_exit=False)
    EventsWorker.drain_all(timeout=timeout, at_exit=False)


def run_tree(client, flow_run_id: UUID) -> list[UUID]:
    """``flow_run_id`` and every flow run started inside it, at any depth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    tree, parents = [flow_run_id], [flow_run_id]
    while parents:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)
            ),
            limit=200,
        )
        parents = [run.id for run in children if run.id not in tree]
        tree += parents
    return tree


def run_logs(flow_run_id: UUID) -> list[str]:
    """Every log message of a flow run and its subflows, oldest first, as the UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    flush_to_server()
    with get_client(sync_client=True) as client:
        ours = LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_tree(client, flow_run_id)))
        logs, offset = [], 0
        while batch := client.read_logs(ours, limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC):
            logs += batch
            offset += len(batch)
    return [log.message for log in logs]


def wait_final(client, run_id: UUID, timeout: float = 240):
    """The flow run once it is in a final state; the test fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(1)
    pytest.fail(f"run still {run.state} after {timeout} s")
