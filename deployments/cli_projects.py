"""``pacsflow project add|list``: the projects a site offers in the run form."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pacsflow.config import SLUG
from pacsflow.errors import ConfigError

app = typer.Typer(help="Register projects, so the Prefect run form lists them.")
console = Console()


def register_beside(config: Path, site: str = "default") -> list[str]:
    """Register every ``projects/*.yaml`` next to the site file ``config``; their slugs."""
    from blocks.projects import register_project

    return [register_project(path, site).name for path in sorted(_project_files(config))]


def _project_files(config: Path) -> list[Path]:
    folder = Path(config).resolve().parent / "projects"
    return [*folder.glob("*.yaml"), *folder.glob("*.yml")]


@app.command("add")
def add(
    project_file: Annotated[Path, typer.Argument(help="Project file, e.g. projects/x.yaml")],
    site: Annotated[
        str, typer.Option(envvar="PACSFLOW_SITE", help="Site block the project belongs to.")
    ] = "default",
) -> None:
    """Register a project file: the run form then offers the project by name."""
    from deployments.cli import _connect, _fail_input

    try:
        if not re.fullmatch(SLUG, site):
            raise ConfigError(
                f"{site!r} is not a site block name: lowercase letters, digits, dashes"
            )
        if not project_file.exists():
            raise ConfigError(f"no project file at {project_file}; give the path of its YAML")
        _connect()
        from blocks.projects import register_project
        from deployments.form import refresh_forms

        config = register_project(project_file, site)
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None
    refreshed = refresh_forms(site)
    console.print(
        f"Registered project {config.name!r} ({project_file.resolve()}) for site {site!r}"
        + (f"; {refreshed} deployment forms now offer it" if refreshed else "")
    )


@app.command("list")
def list_(
    site: Annotated[str, typer.Option(help="Site block.")] = "default",
) -> None:
    """The projects registered for the site, with their files."""
    from deployments.cli import _connect

    _connect()
    from blocks.projects import known_projects

    projects = known_projects(site)
    if not projects:
        console.print(f"No projects registered for site {site!r}: `pacsflow project add FILE`.")
    for slug, path in projects.items():
        console.print(f"{slug}\t{path}")
