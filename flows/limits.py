"""Prefect tag concurrency limits, one per source, shared by every flow run and worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError

from pacsflow.config import SiteConfig


def source_tag(source_name: str) -> str:
    return f"source:{source_name}"


def image_limit_name(source_name: str) -> str:
    return f"source-images-{source_name}"


def image_slots(expected_instances: int | None, max_images: int) -> int:
    """Slots a retrieval occupies: its instance count, capped at the limit.

    A study larger than the limit takes the whole limit (it cannot be split), so it
    runs alone against that source rather than waiting forever.
    """
    return max(1, min(expected_instances or 1, max_images))


def ensure_source_limits(site: SiteConfig, names: list[str]) -> dict[str, int]:
    """Create or update each named source's limits on the Prefect server.

    ``max_concurrent`` becomes the tag limit ``source:<name>`` (one slot per lane: its
    retrievals, and its queries);
    ``max_images`` the global concurrency limit ``source-images-<name>`` (instances
    being retrieved). The server keeps them, so they hold across projects, flow runs and
    workers. ``prefect.yaml`` cannot create either; this is where they come from.
    """
    limits = {}
    with get_client(sync_client=True) as client:
        for name in names:
            source = site.sources[name]
            tag = source_tag(name)
            _settle(partial(client.create_concurrency_limit, tag, source.max_concurrent))
            limits[tag] = source.max_concurrent
            if source.max_images:
                images = image_limit_name(name)
                upsert = client.upsert_global_concurrency_limit_by_name
                _settle(partial(upsert, images, source.max_images))
                limits[images] = source.max_images
    return limits


#: Tries to create or update one limit. Both Prefect 3.9's "create or update"s read,
#: then insert (the tag limit on the server, the global one in the client): runs that
#: start together can all find a limit missing, and all but one insert are refused with
#: 409 Conflict (the client's ObjectAlreadyExists). Tried again, the limit is there.
SETTLE_TRIES = 5


def _settle(create_or_update: Callable[[], object]) -> None:
    for attempt in range(1, SETTLE_TRIES + 1):
        try:
            create_or_update()
            return
        except (PrefectHTTPStatusError, ObjectAlreadyExists) as exc:
            conflict = isinstance(exc, ObjectAlreadyExists) or exc.response.status_code == 409
            if not conflict or attempt == SETTLE_TRIES:
                raise
            time.sleep(0.1 * attempt)


#: Waiting task runs read to tell another pull's lanes from our sibling chunks'.
PENDING_LOOKED_AT = 50


def others_wait_for(tag: str, flow_run_id: UUID | None, pull: str | None = None) -> bool:
    """Whether a task run of another live flow run than ``flow_run_id`` waits for ``tag``.

    A task waiting for its tag's slot stays ``Pending`` until it gets one. Lanes ask this
    before giving their slot back: handing a slot over costs seconds (the next lane must
    be created and win the slot, and a SQLite-backed server answers some of those
    requests 503, after which the client waits 2 s), so a lane that nobody waits for
    keeps its slot. Pending runs of crashed or cancelled flow runs are not waiting, nor
    are the lanes of the asking run itself (its dispatcher starts a lane only when one of
    its own ended, and they would pass the slot round among themselves), nor, given the
    asking run's ``pull``, those of the other chunks of that pull: they work on the same
    studies, so a turn would only cost the hand-over. When the server cannot say, the
    answer is yes: the slot is handed over.
    """
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
        TaskRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as client:
            waiting = client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(not_any_=[flow_run_id]) if flow_run_id else None,
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
                ),
                task_run_filter=TaskRunFilter(
                    tags=TaskRunFilterTags(all_=[tag]),
                    state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.PENDING])),
                ),
                limit=PENDING_LOOKED_AT,
            )
            if not waiting or pull is None:
                return bool(waiting)
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=list({t.flow_run_id for t in waiting if t.flow_run_id}))
                )
            )
    except Exception:
        return True
    return any(run.parameters.get("pull") != pull for run in runs)
