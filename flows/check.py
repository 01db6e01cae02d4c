"""The pre-flight check flow: ask every source about a manifest's studies, retrieve nothing.

``check-project`` ingests the manifest as ``extract-project`` does, then asks the
project's sources in order (:mod:`pacsflow.check`): the primary about every study still
to do, the next source about those the primary does not hold, and so on. The C-FINDs run
in **check lanes**, task runs tagged ``source:<name>`` like the retrieval lanes, so they
share each source's tag concurrency limit with every extraction; a lane keeps one
association open for its studies and, every ``lane_seconds``, gives its slot back if a
lane of another run waits for the source (as retrieval lanes do). A source
outside its extraction window is not queried: its studies are reported "not checked:
outside its window". The run ends with a table artifact of counts per class and one of
the studies that need a look, by ledger id; what was found is in the ledger.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows import clock
from flows.boundary import confined
from flows.lanes import LANE_SECONDS
from flows.limits import ensure_source_limits, others_wait_for, source_tag
from flows.naming import run_name
from flows.runtime import resolve_project, workspace
from pacsflow.check import FOUND, LABELS, CheckResult, check_at_source
from pacsflow.config import ProjectConfig
from pacsflow.dicom.association import SourceAssociation
from pacsflow.errors import SourceUnavailable
from pacsflow.failures import describe
from pacsflow.ledger import checks
from pacsflow.ledger import repository as repo
from pacsflow.manifest import read_manifest
from pacsflow.pipeline import Workspace
from pacsflow.windows import is_open

#: Rows listed by ledger id in the "needs a look" artifact, at most.
LISTED = 200
#: Classes a person should look at before the pull.
NEEDS_A_LOOK = (
    CheckResult.NOT_FOUND,
    CheckResult.AMBIGUOUS,
    CheckResult.DATE_MISMATCH,
    CheckResult.OUTSIDE_WINDOW,
    CheckResult.UNAVAILABLE,
)


@task(task_run_name="ingest-manifest-for-check")
def ingest_for_check(site: str, project_name: str, manifest: str) -> tuple[list[int], int]:
    """Validate and ingest the manifest; the ledger ids of its studies still to do, and
    how many of its studies are done already."""
    with confined("ingest"):
        rows = read_manifest(manifest, project_name)
        with workspace(site).sessions() as session:
            repo.ingest_manifest(session, project_name, rows)
            return checks.manifest_studies(session, project_name, rows)


@task(task_run_name="check-{source_name}-lane-{lane}", cache_policy=NO_CACHE)
def check_lane(
    site: str,
    project: ProjectConfig,
    source_name: str,
    lane: int,
    study_ids: list[int],
    lane_seconds: float = LANE_SECONDS,
) -> dict[str, object]:
    """C-FIND ``study_ids`` at one source over one association, until done or time is up.

    Carries the tag ``source:<name>`` (set by the flow), so it runs only while it holds
    one of the source's slots. Returns, by ledger id, the class of every study it asked
    (``"next"``: not there, for the next source), ``instances`` (the found studies'
    expected instances), and ``stopped``: ``"window"`` when the window closed,
    ``"unavailable"`` when the source stopped answering, else None.
    """
    logger = get_run_logger()
    ws = workspace(site)
    index = project.sources.index(source_name)
    last = index == len(project.sources) - 1
    windows = ws.site.sources[source_name].windows
    deadline = time.monotonic() + lane_seconds
    classes: dict[int, str] = {}
    instances = 0
    stopped = None
    with SourceAssociation(ws.site.sources[source_name], ws.calling_ae) as association:
        for study_id in study_ids:
            if time.monotonic() >= deadline:
                if others_wait_for(source_tag(source_name), runtime_flow_run.get_id()):
                    break  # its slot goes to the waiting run; the flow queues the rest
                deadline = time.monotonic() + lane_seconds
            if not is_open(windows, clock.now()):
                stopped = "window"
                break
            try:
                result = check_at_source(
                    ws, study_id, source_name, index, last, project.ambiguity, association
                )
            except SourceUnavailable as exc:  # our message: names the source, no identifiers
                logger.warning(
                    "source %s did not answer for study %s: %s", source_name, study_id, exc
                )
                stopped = "unavailable"
                break
            except Exception as exc:  # a library's message may quote identifiers: type only
                failure = describe("check", exc)
                with ws.sessions() as session:  # the full reason, ledger only
                    checks.record_unchecked(
                        session, [study_id], CheckResult.UNAVAILABLE.value, failure.detail
                    )
                logger.warning("study %s at %s: %s", study_id, source_name, failure.public)
                classes[study_id] = CheckResult.UNAVAILABLE.value  # recorded with its reason
                stopped = "unavailable"
                break
            classes[study_id] = result.value if result else "next"
            if result in FOUND:
                instances += _expected(ws, study_id)
    return {"classes": classes, "instances": instances, "stopped": stopped}


def _expected(ws: Workspace, study_id: int) -> int:
    with ws.sessions() as session:
        return repo.get_study(session, study_id).expected_instances or 0


def _split(ids: list[int], lanes: int) -> list[list[int]]:
    """``ids`` dealt round-robin into at most ``lanes`` non-empty chunks."""
    chunks = [ids[i::lanes] for i in range(max(1, lanes))]
    return [c for c in chunks if c]


def _not_checked(ws: Workspace, ids: list[int], result: CheckResult, source: str) -> None:
    detail = f"source {source}: {LABELS[result]}"
    with ws.sessions() as session:
        checks.record_unchecked(session, ids, result.value, detail)


def _check_source(
    ws: Workspace,
    site: str,
    project: ProjectConfig,
    source_name: str,
    ids: list[int],
    lane_seconds: float,
    counts: Counter[str],
) -> tuple[list[int], int]:
    """Ask one source about ``ids``: the ids for the next source, and instances found.

    Lanes run at most the source's ``max_concurrent`` at once from this run; the tag
    limit bounds them with every other run. Studies left when the window closes or the
    source stops answering are recorded as not checked.
    """
    logger = get_run_logger()
    source = ws.site.sources[source_name]
    remaining, passed_on, instances, lane = list(ids), [], 0, 0
    while remaining:
        if not is_open(source.windows, clock.now()):
            logger.info(
                "%s studies not checked: source %s is outside its extraction window",
                len(remaining),
                source_name,
            )
            _not_checked(ws, remaining, CheckResult.OUTSIDE_WINDOW, source_name)
            counts[CheckResult.OUTSIDE_WINDOW] += len(remaining)
            break
        futures = []
        for chunk in _split(remaining, source.max_concurrent):
            lane += 1
            lane_task = check_lane.with_options(tags=[source_tag(source_name)])
            futures.append(lane_task.submit(site, project, source_name, lane, chunk, lane_seconds))
        wait(futures)
        asked: set[int] = set()
        down = False
        for future in futures:
            report = future.result()
            for study_id, result in report["classes"].items():
                asked.add(study_id)
                if result == "next":
                    passed_on.append(study_id)
                else:
                    counts[result] += 1
            instances += report["instances"]
            down = down or report["stopped"] == "unavailable"
        remaining = [i for i in remaining if i not in asked]
        if down and remaining:
            _not_checked(ws, remaining, CheckResult.UNAVAILABLE, source_name)
            counts[CheckResult.UNAVAILABLE] += len(remaining)
            break
    return passed_on, instances


def _report(project: str, counts: Counter[str], instances: int, ws: Workspace, ids: list[int]):
    """The artifacts: counts per class, and the studies that need a look by ledger id."""
    table = [{"class": LABELS[result], "studies": counts.get(result, 0)} for result in CheckResult]
    create_table_artifact(
        key=f"{project}-check",
        table=table,
        description=f"Pre-flight check of project {project}: studies per class (C-FIND "
        f"only, nothing retrieved); the found studies hold {instances} instances. No "
        "patient data.",
    )
    with ws.sessions() as session:
        look = checks.studies_with_results(session, ids, [r.value for r in NEEDS_A_LOOK])
    if look:
        create_table_artifact(
            key=f"{project}-check-rows",
            table=[{"ledger id": i, "class": LABELS[CheckResult(r)]} for i, r in look[:LISTED]],
            description="Studies the check could not find, could not tell apart or did not "
            "ask, by ledger id; `pacsflow status` and the ledger hold the details.",
        )


def _run_name() -> str:
    import datetime as dt

    from prefect.runtime import flow_run

    today = dt.datetime.now(dt.UTC).date()
    name = run_name(flow_run.parameters["project"], flow_run.name, str(flow_run.id), today)
    return name if name == flow_run.name else f"check-{name}"


@flow(
    name="check-project",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=16),
)
def check_project(
    project: str,
    manifest: str,
    site: str = "default",
    lane_seconds: Annotated[float, Field(gt=0)] = LANE_SECONDS,
) -> dict[str, int]:
    """Pre-flight check: where each of the manifest's studies is, C-FIND only.

    Returns the count of studies per class (see ``pacsflow.check.CheckResult``) and
    ``expected_instances``, the instances the found studies hold.

    Args:
        project: The project: one the site knows (`pacsflow project add`), or the path
            of a project file.
        manifest: CSV or parquet of MRN, accession number and study date (study UID
            optional), at a path every worker can read.
        site: The site block saved by `pacsflow configure`.
        lane_seconds: Seconds between a check lane's looks for another run waiting for
            its source's slot (it then gives the slot back).
    """
    logger = get_run_logger()
    config = resolve_project(project, site)
    ws = workspace(site, ttl=0)
    config.check_against(ws.site)
    ids, done = ingest_for_check(site, config.name, manifest)
    logger.info("%s studies to check, %s done already", len(ids), done)
    ensure_source_limits(ws.site, config.sources)
    counts: Counter[str] = Counter({CheckResult.DONE.value: done} if done else {})
    instances = 0
    pending = ids
    for source_name in config.sources:
        if not pending:
            break
        pending, found = _check_source(ws, site, config, source_name, pending, lane_seconds, counts)
        instances += found
    assert not pending, "the last source records its not-found studies"
    _report(config.name, counts, instances, ws, ids)
    result = {r.value: counts.get(r.value, 0) for r in CheckResult}
    logger.info("check of %s: %s; %s instances expected", config.name, result, instances)
    return {**result, "expected_instances": instances}
