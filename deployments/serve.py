"""Serve the extraction flow so users trigger it from the Prefect UI and schedule it.

``pacsflow serve`` runs this: one process polls the server for runs of the
``extract-project`` deployment and executes each in a subprocess. Keep a standing
``pacsflow receiver`` beside it, so every run shares one C-MOVE receiver.

For work pools and workers instead, use ``prefect deploy`` with ``prefect.yaml``.
"""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from flows.extract import extract_project

DEPLOYMENT = "extract-project"


def build_deployment(
    project: str | None = None, manifest: str | None = None, cron: str | None = None, limit: int = 4
):
    """The deployment; with ``cron``, a recurring pull of one project's manifest.

    ``limit`` caps concurrent runs of this deployment; the sources' own tag limits still
    bound the load on every PACS across all runs.
    """
    parameters = {k: v for k, v in {"project": project, "manifest": manifest}.items() if v}
    return extract_project.to_deployment(
        name=DEPLOYMENT if not cron else f"{DEPLOYMENT}-{_slug(project or 'scheduled')}",
        parameters=parameters,
        schedules=[Cron(cron, timezone="UTC")] if cron else None,
        concurrency_limit=limit,
        tags=["pacsflow"],
        description="Find, retrieve, de-identify and export one project's manifest.",
    )


def _slug(text: str) -> str:
    from pathlib import Path

    return Path(text).stem.lower().replace("_", "-")


def serve_deployments(
    project: str | None = None, manifest: str | None = None, cron: str | None = None
) -> None:
    deployments = [build_deployment()]
    if cron:
        deployments.append(build_deployment(project, manifest, cron))
    serve(*deployments)
