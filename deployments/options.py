"""Options several pacsflow commands share, so they read and check the same everywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from pacsflow.config import SLUG

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Site configuration file [default: pacsflow.yaml, else the demo's].",
        show_default=False,
    ),
]
ProjectOption = Annotated[
    str, typer.Option(help="Project file (projects/my-study.yaml) or its slug (my-study).")
]


def _site_name(value: str) -> str:
    if not re.fullmatch(SLUG, value):
        raise typer.BadParameter(
            f"{value!r} is not a block name: use lowercase letters, digits and dashes"
        )
    return value


SiteOption = Annotated[
    str,
    typer.Option(
        "--site",
        envvar="PACSFLOW_SITE",
        callback=_site_name,
        help="Name of the site block on the Prefect server: one per site sharing a server.",
    ),
]
