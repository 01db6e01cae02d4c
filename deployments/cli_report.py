"""``pacsflow report``: the full per-study report of a project, to a local file.

It reads the ledger directly and never talks to Prefect: the file holds identifiers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deployments.options import ConfigOption
from pacsflow.config import load_site_config
from pacsflow.errors import ConfigError
from pacsflow.report import ReportFormat, study_report, write_report

console = Console()


def report(
    project: Annotated[
        str | None,
        typer.Option(help="Project file or slug [default: the ledger's only project]."),
    ] = None,
    config: ConfigOption = None,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="File format.", case_sensitive=False)
    ] = ReportFormat.CSV,
    output: Annotated[
        Path | None,
        typer.Option(help="File to write; default .pacsflow/reports/<project>.<format>."),
    ] = None,
) -> None:
    """Write every study of the project (identifiers, status, source, counts, pseudonyms,
    error and times) to a local file for the data team. It never goes to Prefect."""
    from deployments.cli import _fail_input, _ledger, _project_slug, _site_path

    config = _site_path(config)
    try:
        site = load_site_config(config)
        sessions = _ledger(site)
        slug = _project_slug(project, config, sessions)
        with sessions() as session:
            frame = study_report(session, slug)
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None
    target = output or Path(".pacsflow") / "reports" / f"{slug}.{fmt.value}"
    written = write_report(frame, target, fmt)
    console.print(f"Report of {slug}: {len(frame)} studies in {written}", highlight=False)
    console.print(
        "[bold yellow]warning:[/] this file holds patient identifiers (MRNs, accession "
        "numbers, study UIDs): keep it on this site's storage, readable by the data team "
        "only, and never attach it to a Prefect run or a ticket.",
        highlight=False,
    )
