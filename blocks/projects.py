"""The projects a site knows, kept on the Prefect server so the run form can list them.

A Prefect Variable per site maps each project's slug to its project file (a path the
workers can read). ``pacsflow configure`` registers the projects beside the site file,
``pacsflow project add FILE`` any other. Slugs and paths are not patient data.
"""

from __future__ import annotations

from pathlib import Path

from prefect.variables import Variable

from pacsflow.config import ProjectConfig, load_project_config


def variable_name(site: str) -> str:
    return f"pacsflow-projects-{site}"


def known_projects(site: str = "default") -> dict[str, str]:
    """Slug -> project file of every project registered for ``site`` (may be empty)."""
    value = Variable.get(variable_name(site), default={})
    return dict(value) if isinstance(value, dict) else {}


def register_project(path: str | Path, site: str = "default") -> ProjectConfig:
    """Validate the project file and add (or update) it in ``site``'s list."""
    path = Path(path).resolve()
    config = load_project_config(path)
    projects = known_projects(site)
    projects[config.name] = str(path)
    Variable.set(variable_name(site), dict(sorted(projects.items())), overwrite=True)
    return config
