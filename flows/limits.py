"""Prefect tag concurrency limits, one per source, shared by every flow run and worker."""

from __future__ import annotations

from prefect.client.orchestration import get_client

from pacsflow.config import SiteConfig


def source_tag(source_name: str) -> str:
    return f"source:{source_name}"


def ensure_source_limits(site: SiteConfig, names: list[str]) -> dict[str, int]:
    """Create or update the tag limit of each named source from its ``max_concurrent``.

    The server keeps the limit, so it holds across projects, flow runs and workers.
    ``prefect.yaml`` cannot create tag limits; this is where they come from.
    """
    limits = {}
    with get_client(sync_client=True) as client:
        for name in names:
            limit = site.sources[name].max_concurrent
            client.create_concurrency_limit(tag=source_tag(name), concurrency_limit=limit)
            limits[source_tag(name)] = limit
    return limits
