"""The main flow: extract one project's manifest."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.futures import wait
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.boundary import confined
from flows.limits import ensure_source_limits
from flows.runtime import profile, pseudonymizer, resolve_project, workspace
from flows.study import process_study
from pacsflow.config import ProjectConfig
from pacsflow.errors import PacsflowError
from pacsflow.ledger import repository as repo
from pacsflow.manifest import read_manifest

#: Study workers per flow run. On 2 cores more threads do not help a Python pipeline;
#: the sources' tag limits, not this number, protect the sources.
DEFAULT_WORKERS = 4


class StudiesFailed(PacsflowError):
    """Some studies failed; their reasons are in the ledger (``pacsflow status``)."""


@task(task_run_name="check-project-key-and-profile")
def check_key_and_profile(site: str, project: ProjectConfig, force_key_change: bool) -> None:
    """Refuse a changed pseudonymisation key once the project has exported studies.

    Also builds the de-identification profile, so a bad profile file fails the run
    before any study is touched, and records its fingerprint for audit.
    """
    fingerprint = pseudonymizer(project).hash_text("pacsflow key fingerprint", "fingerprint")
    with workspace(site).sessions() as session:
        repo.check_project_key(session, project.name, fingerprint, force=force_key_change)
        repo.record_profile(session, project.name, profile(project).fingerprint)


@task(task_run_name="ingest-manifest")
def ingest_manifest(site: str, project_name: str, manifest: str) -> dict[str, int]:
    """Validate the whole manifest, then add new studies to the ledger. Returns counts."""
    with confined("ingest"):
        rows = read_manifest(manifest, project_name)
        with workspace(site).sessions() as session:
            result = repo.ingest_manifest(session, project_name, rows)
    return {"rows": len(rows), "added": result.added, "already_known": result.already_known}


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"extract-{Path(flow_run.parameters['project']).stem}"


@flow(
    name="extract-project",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_WORKERS),
)
def extract_project(
    project: str, manifest: str, site: str = "default", force_key_change: bool = False
) -> dict[str, int]:
    """Ingest ``manifest`` for ``project``, then process every study not yet done.

    ``project`` is a project file or a slug (``projects/<slug>.yaml``); ``site`` names
    the site block saved by ``pacsflow configure``. Finished studies are filtered out
    from the ledger before any task is created.
    """
    logger = get_run_logger()
    config = resolve_project(project)
    ws = workspace(site)
    config.check_against(ws.site)
    check_key_and_profile(site, config, force_key_change)
    ingested = ingest_manifest(site, config.name, manifest)
    logger.info("manifest: %(rows)s studies, %(added)s new", ingested)
    ensure_source_limits(ws.site, config.sources)

    with ws.sessions() as session:
        todo = repo.studies_to_process(session, config.name)
    logger.info("%s studies to process", len(todo))
    futures = [process_study.submit(site, config, study_id, ref) for study_id, ref in todo]
    wait(futures)

    with ws.sessions() as session:
        counts = repo.status_counts(session, config.name)
    create_table_artifact(
        key=f"{config.name}-status",
        table=[{"status": status, "studies": n} for status, n in counts.items()],
        description=f"Studies per status for project {config.name} (no patient data).",
    )
    failed_now = sum(1 for f in futures if f.state.is_failed())
    if failed_now:
        raise StudiesFailed(
            f"{failed_now} studies failed this run; see `pacsflow status --project {config.name}`"
        )
    return counts
