"""The main flow: extract one project's manifest.

``extract-project`` validates and ingests the manifest, checks the key and the profile,
sets the sources' limits, and then hands the studies the ledger says are not done to the
retrieval subflow ``process-studies``: in this process, and with ``workers`` > 1 also as
up to ``workers - 1`` runs of the ``process-studies`` deployment on a work pool (one per
``studies_per_worker`` studies to do), which share the studies through the ledger's
claims. Finished studies are filtered out by one count query; no task exists per study.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Annotated

from prefect import flow, task
from prefect.logging import get_run_logger
from pydantic import Field

from flows.boundary import confined
from flows.limits import ensure_source_limits
from flows.naming import run_name
from flows.process import EXPORT_LANES, process_studies
from flows.progress import Progress, report
from flows.runtime import profile, pseudonymizer, resolve_project, workspace
from pacsflow.config import ProjectConfig
from pacsflow.errors import PacsflowError
from pacsflow.ledger import claims
from pacsflow.ledger import repository as repo
from pacsflow.manifest import read_manifest

#: The deployment that ``workers`` > 1 runs chunks of a pull on (see deployments/).
CHUNK_DEPLOYMENT = "process-studies/process-studies"

#: Studies to do per run of process-studies, at the least, before a pull is split.
STUDIES_PER_WORKER = 100


def chunk_count(todo: int, workers: int, studies_per_worker: int) -> int:
    """How many runs of process-studies share a pull of ``todo`` studies: ``workers`` at
    most, and one per ``studies_per_worker`` studies.

    Why not always ``workers``: a chunk run adds no retrieval slots (chunk 0's lanes can
    hold every slot of the project's sources), only export capacity, and it costs a new
    process on a worker (seconds of CPU for imports) before its first claim. On a small
    pull it found nothing left to claim when it started, and its start-up slowed the runs
    doing the work (two-worker benchmark: sources at their limit 40-55% of their busy
    time with a chunk run per project, 69-70% without; README, Performance).
    """
    return max(1, min(workers, -(-todo // studies_per_worker)))


class StudiesFailed(PacsflowError):
    """Some studies failed; their reasons are in the ledger (``pacsflow status``)."""


@task(task_run_name="check-project-key-and-profile")
def check_key_and_profile(site: str, project: ProjectConfig, force_key_change: bool) -> None:
    """Refuse a changed pseudonymisation key once the project has exported studies.

    Also builds the de-identification profile, so a bad profile file fails the run
    before any study is touched, and records its fingerprint for audit.
    """
    key = pseudonymizer(project, site, ttl=0)  # as the Secret block is now
    fingerprint = key.hash_text("pacsflow key fingerprint", "fingerprint")
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

    today = dt.datetime.now(dt.UTC).date()
    return run_name(flow_run.parameters["project"], flow_run.name, str(flow_run.id), today)


def _run_chunks(
    project: ProjectConfig, site: str, pull: str, total: int, workers: int, export_lanes: int
) -> None:
    """Run the pull in ``workers`` chunks: ``workers - 1`` deployment runs on the work
    pool, and chunk 0 here, as a subflow; then wait for them all.

    This run's process is started already, and warm: a deployment run in its place would
    pay a worker's poll and a new process (seconds of imports) before its first study.
    The chunks share the pull's studies through the ledger's claims, so when chunk 0 ends
    no study is left to claim; the others finish the studies they hold.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    runs = [
        run_deployment(
            CHUNK_DEPLOYMENT,
            parameters={
                "project": project.model_dump(mode="json"),
                "pull": pull,
                "site": site,
                "total": total,
                "chunk": chunk,
            },
            timeout=0,
            as_subflow=True,
        )
        for chunk in range(1, workers)
    ]
    logger.info("started %s process-studies runs on the work pool; chunk 0 runs here", len(runs))
    process_studies(
        project=project, pull=pull, site=site, total=total, chunk=0, export_lanes=export_lanes
    )
    progress = Progress(workspace(site), project.name, pull, total)
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(run.id).state for run in runs]
            progress.update()
            if all(state is not None and state.is_final() for state in states):
                break
            time.sleep(1.0)
    progress.update(force=True)
    bad = [s.name for s in states if not s.is_completed()]
    if bad:
        logger.warning("%s of %s chunk runs did not complete: %s", len(bad), len(runs), bad)


@flow(name="extract-project", flow_run_name=_run_name)
def extract_project(
    project: str,
    manifest: str,
    site: str = "default",
    force_key_change: bool = False,
    workers: Annotated[int, Field(ge=1)] = 1,
    export_lanes: Annotated[int, Field(ge=1)] = EXPORT_LANES,
    studies_per_worker: Annotated[int, Field(ge=1)] = STUDIES_PER_WORKER,
) -> dict[str, int]:
    """Ingest the manifest for the project, then process every study not yet done.

    The run form shows the descriptions below (Prefect reads them from this docstring)
    and the titles in ``deployments/form.py``.

    Args:
        project: The project to pull: one the site knows (`pacsflow project add`), or
            the path of a project file.
        manifest: CSV or parquet of MRN, accession number and study date (study UID
            optional), at a path every worker can read. Read afresh on every run.
        site: The site block saved by `pacsflow configure`.
        force_key_change: Accept a changed pseudonymisation key. Only when it was
            changed on purpose: studies exported before keep their old pseudonyms.
        workers: Split the pull over at most this many runs of process-studies: one in
            this flow run, the others on the work pool; 1 runs it all here.
        export_lanes: Studies de-identified and exported at once in each run.
        studies_per_worker: A pull is split only when each run gets at least this many
            studies to do: a smaller one runs in fewer runs than `workers`.
    """
    logger = get_run_logger()
    config = resolve_project(project, site)
    ws = workspace(site, ttl=0)  # as the blocks are now; tasks reuse it
    config.check_against(ws.site)
    check_key_and_profile(site, config, force_key_change)
    ingested = ingest_manifest(site, config.name, manifest)
    logger.info("manifest: %(rows)s studies, %(added)s new", ingested)
    ensure_source_limits(ws.site, config.sources)

    pull = uuid.uuid4().hex
    with ws.sessions() as session:
        released = claims.release_dead(session, config.name)
        todo = repo.count_to_process(session, config.name)
    if released:
        logger.info("%s studies held by stopped workers are free again", released)
    logger.info("%s studies to process", todo)
    chunks = chunk_count(todo, workers, studies_per_worker)
    if chunks < workers and todo:
        logger.info(
            "%s runs of process-studies for %s studies (one per %s studies, at most %s)",
            chunks,
            todo,
            studies_per_worker,
            workers,
        )
    if todo and chunks > 1:
        _run_chunks(config, site, pull, todo, chunks, export_lanes)
    elif todo:
        process_studies(project=config, pull=pull, site=site, total=todo, export_lanes=export_lanes)

    counts = report(ws, config.name, pull)
    with ws.sessions() as session:
        failed_now = repo.pull_counts(session, config.name, pull).get("failed", 0)
    if failed_now:
        raise StudiesFailed(
            f"{failed_now} studies failed this run; see `pacsflow status --project {config.name}`"
        )
    return counts
