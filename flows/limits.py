"""Prefect tag concurrency limits, one per source, shared by every flow run and worker."""

from __future__ import annotations

from prefect.client.orchestration import get_client

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

    ``max_concurrent`` becomes the tag limit ``source:<name>`` (queries and retrievals);
    ``max_images`` the global concurrency limit ``source-images-<name>`` (instances
    being retrieved). The server keeps them, so they hold across projects, flow runs and
    workers. ``prefect.yaml`` cannot create either; this is where they come from.
    """
    limits = {}
    with get_client(sync_client=True) as client:
        for name in names:
            source = site.sources[name]
            client.create_concurrency_limit(
                tag=source_tag(name), concurrency_limit=source.max_concurrent
            )
            limits[source_tag(name)] = source.max_concurrent
            if source.max_images:
                client.upsert_global_concurrency_limit_by_name(
                    image_limit_name(name), source.max_images
                )
                limits[image_limit_name(name)] = source.max_images
    return limits
