"""Processing one study: tasks that wrap :mod:`pacsflow.pipeline`, and the retrieve subflow.

Only ledger ids, source names and counts cross into Prefect. Tasks that talk to a
source carry its ``source:<name>`` tag, so the source's tag concurrency limit bounds
them globally. Retries happen here and only here, for :class:`RetriableError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from prefect import flow, task
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from flows.boundary import StudyStepFailed, confined
from flows.limits import image_limit_name, image_slots, source_tag
from flows.runtime import profile, pseudonymizer, workspace
from pacsflow import pipeline
from pacsflow.config import ProjectConfig
from pacsflow.errors import RetriableError


def _recorder(ws: pipeline.Workspace, study_id: int) -> Callable[[str], None]:
    return lambda reason: pipeline.record_failure(ws, study_id, reason)


def _retriable(task, task_run, state) -> bool:
    try:
        state.result()
    except RetriableError:
        return True
    except Exception:
        return False
    return False


@task(task_run_name="find-study-{study_id}-at-{source_name}", retry_condition_fn=_retriable)
def find_study(site: str, study_id: int, source_name: str) -> bool:
    """C-FIND one source; True when the study is there."""
    ws = workspace(site)
    with confined("find", _recorder(ws, study_id)):
        return pipeline.locate(ws, study_id, source_name)


@task(task_run_name="fetch-study-{study_id}-from-{source_name}", retry_condition_fn=_retriable)
def fetch_study(site: str, study_id: int, source_name: str) -> int:
    """C-MOVE or C-GET the located study into staging; returns instances received.

    With an image limit on the source, the retrieval first occupies as many slots of
    it as the study has instances.
    """
    ws = workspace(site)
    max_images = ws.site.sources[source_name].max_images
    with confined("fetch", _recorder(ws, study_id)):
        if not max_images:
            return pipeline.fetch(ws, study_id, source_name)
        slots = image_slots(pipeline.expected_instances(ws, study_id), max_images)
        with concurrency(image_limit_name(source_name), occupy=slots, strict=True):
            return pipeline.fetch(ws, study_id, source_name)


@flow(flow_run_name="retrieve-study-{study_id}", log_prints=False)
def retrieve_study(site: str, study_id: int, sources: list[str]) -> str | None:
    """Try the sources in order; the first that holds the study is retrieved from.

    Only a clean "not there" moves on to the next source: a source that stays down
    after its retries fails the study, which is then retried on a later run.
    """
    logger = get_run_logger()
    config = workspace(site).site
    for name in sources:
        delays = config.sources[name].retry_delays
        options = {
            "tags": [source_tag(name)],
            "retries": len(delays),
            "retry_delay_seconds": delays or 0,
        }
        if find_study.with_options(**options)(site, study_id, name):
            count = fetch_study.with_options(**options)(site, study_id, name)
            logger.info("study %s: %s instances retrieved from %s", study_id, count, name)
            return name
        logger.info("study %s: not at %s", study_id, name)
    return None


@task(
    task_run_name="deidentify-export-{study_id}",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_retriable,
)
def deidentify_and_export(site: str, study_id: int, project: ProjectConfig) -> str:
    """Filter, de-identify, PHI-check and export the staged study; returns its status."""
    ws = workspace(site)
    with confined("de-identify and export", _recorder(ws, study_id)):
        return pipeline.deidentify_and_export(
            ws, study_id, project, pseudonymizer(project), profile(project)
        )


def study_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Hash of (project, study): the ledger ref is random, so no identifier is hashed."""
    text = f"{parameters['project'].name}|{parameters['study_ref']}"
    return "pacsflow-study-" + hashlib.sha256(text.encode()).hexdigest()


@task(task_run_name="study-{study_id}", cache_key_fn=study_cache_key, persist_result=True)
def process_study(site: str, project: ProjectConfig, study_id: int, study_ref: str) -> str:
    """Find, retrieve, de-identify and export one study; returns its final status.

    A failure is recorded in the ledger with its reason and re-raised, so the task
    fails alone and is not cached; the other studies go on.
    """
    ws = workspace(site)
    try:
        with confined("process", _recorder(ws, study_id)):
            if not pipeline.begin(ws, study_id):
                return "exported"
            source = retrieve_study(site, study_id, project.sources)
            if source is None:
                pipeline.record_not_found(ws, study_id)
                return "not_found"
            return deidentify_and_export(site, study_id, project)
    except StudyStepFailed:
        raise  # the full reason is already in the ledger
    except BaseException as exc:  # our own errors: written without identifiers
        pipeline.record_failure(ws, study_id, f"{type(exc).__name__}: {exc}")
        raise
