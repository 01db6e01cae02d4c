"""Serve or deploy the flows, so users trigger them from the Prefect UI and schedule them.

Three deployments: ``extract-project`` (what users run), ``check-project`` (the
pre-flight check: C-FIND only, see ``flows/check.py``) and ``process-studies`` (the
retrieval subflow, which ``extract-project`` runs as deployment runs when asked for
``workers`` > 1, so that a pull is shared by several worker processes or machines).

- ``pacsflow serve`` runs both in one long-lived process that executes each flow run in a
  subprocess: one machine, no work pool.
- ``pacsflow deploy --pool NAME`` registers both on a process work pool, to be run by
  ``prefect worker start --pool NAME`` on as many machines as share the code, the site's
  staging folder and the ledger.

Keep a standing ``pacsflow receiver`` beside them, so every run shares one C-MOVE
receiver (a run also uses a receiver it finds on the configured port).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from blocks.projects import known_projects
from deployments.crashes import enable_heartbeats, heartbeat_env
from deployments.form import form_schema, refresh_forms
from deployments.registrations import (
    RegistrationConflict,
    delete_registrations,
    describe,
    live_served_registrations,
    pool_registrations,
    served_elsewhere,
)
from flows.check import check_project
from flows.extract import CHUNK_DEPLOYMENT, extract_project
from flows.process import process_studies

DEPLOYMENT = "extract-project"
CHECK = "check-project"
CHUNKS = CHUNK_DEPLOYMENT.split("/")[1]
#: The repository root: a process worker runs the flows from here.
SOURCE = Path(__file__).resolve().parents[1]


def build_deployment(
    project: str | None = None,
    manifest: str | None = None,
    cron: str | None = None,
    limit: int = 4,
    site: str | None = None,
    timezone: str = "UTC",
):
    """The deployment; with ``cron``, a recurring pull of one project's manifest.

    ``limit`` caps concurrent runs of this deployment; the sources' own tag limits still
    bound the load on every PACS across all runs. ``site`` names the site block its runs
    use by default (``--site`` of ``pacsflow configure``).
    """
    # The site always explicitly: the server keeps a parameter an earlier registration of
    # the same deployment set (`deploy --site other`) when a new one leaves it out.
    given = {"project": project, "manifest": manifest, "site": site or "default"}
    parameters = {k: v for k, v in given.items() if v}
    deployment = extract_project.to_deployment(
        name=DEPLOYMENT if not cron else f"{DEPLOYMENT}-{_slug(project or 'scheduled')}",
        parameters=parameters,
        schedules=[Cron(cron, timezone=timezone)] if cron else None,
        concurrency_limit=limit,
        tags=["pacsflow"],
        description="Find, retrieve, de-identify and export one project's manifest.",
    )
    schema = deployment._parameter_openapi_schema  # Prefect keeps the form's schema here
    form = form_schema(schema.model_dump(), list(known_projects(site or "default")))
    deployment._parameter_openapi_schema = type(schema).model_validate(form)
    return deployment


def build_check_deployment(site: str | None = None):
    """The pre-flight check, with the same project choice in its form as extract-project."""
    deployment = check_project.to_deployment(
        name=CHECK,
        parameters={"site": site or "default"},
        tags=["pacsflow"],
        description="Ask every source where each of a manifest's studies is (C-FIND only, "
        "nothing retrieved); counts per class in an artifact, the findings in the ledger.",
    )
    schema = deployment._parameter_openapi_schema
    form = form_schema(schema.model_dump(), list(known_projects(site or "default")))
    deployment._parameter_openapi_schema = type(schema).model_validate(form)
    return deployment


def build_chunk_deployment():
    """The retrieval subflow as a deployment: one chunk of a pull per run."""
    return process_studies.to_deployment(
        name=CHUNKS,
        tags=["pacsflow"],
        description="Work on a project's waiting studies (started by extract-project).",
    )


def _slug(text: str) -> str:
    return Path(text).stem.lower().replace("_", "-")


def served_deployments(
    project: str | None = None,
    manifest: str | None = None,
    cron: str | None = None,
    site: str | None = None,
    timezone: str = "UTC",
    replace: bool = False,
) -> list[RunnerDeployment]:
    """The deployments ``pacsflow serve`` serves, cleared to be served here.

    With ``cron``, the shared deployments (extract-project, process-studies, check-project)
    that another live ``pacsflow serve`` serves (the demo's, say) are left to it: Prefect
    pauses every deployment a serve process served when it stops, so stopping this
    scheduled pull would otherwise pause the UI's extract-project for everyone.

    Raises :class:`RegistrationConflict` when one of their names is registered on a work
    pool, unless ``replace``: then that registration is deleted and this one takes over.
    """
    deployments = [build_deployment(site=site), build_chunk_deployment()]
    deployments.append(build_check_deployment(site))
    if cron:
        elsewhere = {r.name for r in served_elsewhere([d.full_name for d in deployments])}
        deployments = [d for d in deployments if d.full_name not in elsewhere]
        deployments.append(build_deployment(project, manifest, cron, site=site, timezone=timezone))
    on_pools = pool_registrations([d.full_name for d in deployments])
    if on_pools and not replace:
        raise RegistrationConflict(
            f"{describe(on_pools)} already run on a work pool (`pacsflow deploy`); served "
            "too, their runs would crash. Run `prefect worker start --pool POOL` for them "
            "instead, or `pacsflow serve --replace` to delete the pool registration and "
            "serve them here."
        )
    delete_registrations(on_pools)
    return deployments


def serve_deployments(deployments: list[RunnerDeployment]) -> None:
    """Serve ``deployments`` (from :func:`served_deployments`) until this process stops."""
    enable_heartbeats()  # the runs it starts inherit it, so a killed one becomes Crashed
    serve(*deployments)


def deploy_to_pool(
    pool: str, source: Path = SOURCE, site: str | None = None, replace: bool = False
) -> list[str]:
    """Create the process work pool ``pool`` if needed and register the deployments on it.

    Raises :class:`RegistrationConflict` when a ``pacsflow serve`` process serves one of
    their names now, unless ``replace``: then those are registered anew, and that process
    no longer gets their runs.
    Returns the deployment names. Workers (``prefect worker start --pool POOL``) run the
    flows from ``source``, which must hold this code on every machine that runs a worker.
    ``site`` names the site block extract-project and check-project runs use by default
    (process-studies runs are handed theirs by extract-project); their forms offer its
    projects.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    defaults = {"site": site or "default"}
    registering = (
        (extract_project, DEPLOYMENT, "flows/extract.py:extract_project", defaults),
        (check_project, CHECK, "flows/check.py:check_project", defaults),
        (process_studies, CHUNKS, "flows/process.py:process_studies", {}),
    )
    served = live_served_registrations([f"{f.name}/{name}" for f, name, _, _ in registering])
    if served and not replace:
        raise RegistrationConflict(
            f"{describe(served)} are being served by a running `pacsflow serve`; on a pool "
            "too, their runs would go to both. Stop that process first, or "
            "`pacsflow deploy --replace` to move them to the pool."
        )
    # Deleted, not updated: the serve process polls by deployment id, and a new id is
    # what stops it taking the pool's runs.
    delete_registrations(served)
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    names = []
    for flow_, name, entrypoint, parameters in registering:
        deployed = flow_.from_source(source=str(source), entrypoint=entrypoint)
        deployed.deploy(
            name=name,
            work_pool_name=pool,
            parameters=parameters,
            tags=["pacsflow"],
            # Heartbeats let the server mark a run Crashed when its worker dies.
            job_variables={"env": heartbeat_env()},
            print_next_steps=False,
        )
        names.append(f"{flow_.name}/{name}")
    refresh_forms(site or "default")
    return names
