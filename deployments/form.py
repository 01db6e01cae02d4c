"""The ``extract-project`` run form: readable titles and the site's projects to pick from.

Prefect builds a deployment's form from the flow's signature: parameter names as titles,
descriptions from the docstring. This adds titles a user reads, and makes ``project`` a
choice between the projects registered for the site (``blocks/projects.py``) and a
project file's path, so scripts that pass paths keep working.
"""

from __future__ import annotations

import copy
from typing import Any

from blocks.projects import known_projects

TITLES = {
    "project": "Project",
    "manifest": "Manifest",
    "site": "Site",
    "force_key_change": "Accept a new pseudonymisation key",
    "workers": "Workers",
    "export_lanes": "Export lanes",
    "studies_per_worker": "Studies per worker, at least",
}
FLOW_NAME = "extract-project"
#: Flows whose forms offer the site's projects: the pull, and its pre-flight check.
FORM_FLOWS = [FLOW_NAME, "check-project"]


def form_schema(schema: dict[str, Any], projects: list[str]) -> dict[str, Any]:
    """``schema`` (a deployment's parameter schema) with titles and the project choice."""
    schema = copy.deepcopy(schema)
    properties = schema.get("properties", {})
    for name, title in TITLES.items():
        if name in properties:
            properties[name]["title"] = title
    project = properties.get("project")
    if project is not None and not project.get("readOnly"):  # not pinned by a schedule
        project.pop("anyOf", None)
        if projects:
            project.pop("type", None)
            project["anyOf"] = [
                {"title": "A project of this site", "enum": sorted(projects), "type": "string"},
                {"title": "A project file", "type": "string"},
            ]
        else:
            project["type"] = "string"
    return schema


def refresh_forms(site: str = "default") -> int:
    """Offer the site's current projects in every extract-project and check-project form.

    Called after a project is registered; returns how many deployments were updated.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    projects = list(known_projects(site))
    updated = 0
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=FORM_FLOWS))
        )
        for deployment in deployments:
            schema = form_schema(deployment.parameter_openapi_schema or {}, projects)
            if schema != deployment.parameter_openapi_schema:
                client.update_deployment(
                    deployment.id, DeploymentUpdate(parameter_openapi_schema=schema)
                )
                updated += 1
    return updated
