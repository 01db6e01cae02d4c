"""Killed runs become ``Crashed``: flow-run heartbeats and the automation that reads them.

A worker process that dies with its machine (or SIGKILL) never tells the server; its
flow run would stay ``Running`` for ever. Prefect's answer for self-hosted servers is for
flow runs to emit a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds
and an automation that marks a run ``Crashed`` when its heartbeats stop
(https://docs.prefect.io/v3/advanced/detect-zombie-flows). ``pacsflow configure``
creates the automation; ``pacsflow serve`` and the work-pool deployments set the
frequency. The studies such a run held come back when their ledger claims run out.
"""

from __future__ import annotations

import os
from datetime import timedelta

#: Seconds between a flow run's heartbeats (Prefect's minimum is 30).
HEARTBEAT_SECONDS = 30
#: Heartbeats a run may miss before it is called crashed.
MISSED_HEARTBEATS = 3
AUTOMATION_NAME = "pacsflow: crash flow runs whose heartbeats stopped"


def heartbeat_env(seconds: int = HEARTBEAT_SECONDS) -> dict[str, str]:
    """The environment that makes flow runs send heartbeats (for workers and serve)."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(seconds)}


def enable_heartbeats(seconds: int = HEARTBEAT_SECONDS) -> None:
    """Send heartbeats from flow runs this process starts, unless the user chose a value."""
    for name, value in heartbeat_env(seconds).items():
        os.environ.setdefault(name, value)


def _automation(heartbeat_seconds: int):
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=AUTOMATION_NAME,
        description="A flow run that sent a heartbeat and then neither another one nor a "
        "final state is marked Crashed (created by pacsflow configure).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat_seconds * MISSED_HEARTBEATS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {heartbeat_seconds * MISSED_HEARTBEATS} s: the "
                "process running this flow run has gone (killed, or its machine stopped).",
            )
        ],
    )


def ensure_crash_automation(heartbeat_seconds: int = HEARTBEAT_SECONDS) -> str:
    """Create (or bring up to date) the automation on the current Prefect server.

    Idempotent: one automation of this name, whatever how often ``configure`` runs.
    Returns "created", "updated" or "unchanged".
    """
    from prefect.automations import Automation

    wanted = _automation(heartbeat_seconds)
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
    except ValueError:  # none of that name
        existing = None
    if existing is None:
        wanted.create()
        return "created"
    if existing.trigger == wanted.trigger and existing.actions == wanted.actions:
        return "unchanged"
    wanted.id = existing.id
    wanted.update()
    return "updated"
