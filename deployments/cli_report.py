"""``pacsflow report``: the full per-study report of a project, to a local file.

It reads the ledger directly and never talks to Prefect: the file holds identifiers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pacsflow.config import load_project_config, load_site_config
from pacsflow.errors import ConfigError
from pacsflow.report import ReportFormat, study_report, write_report

console = Console()
SITE_FILE = Path("pacsflow.yaml")


def _slug(project: str) -> str:
    """A slug as given, or the name in a project file given by its path."""
    path = Path(project)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"no project file at {path}; give its path or the project's slug")
        return load_project_config(path).name
    return project


def report(
    project: Annotated[str, typer.Option(help="Project slug, or the project file's path.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Site file.")] = SITE_FILE,
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
    from deployments.cli import _fail_input, _ledger

    try:
        site = load_site_config(config)
        slug = _slug(project)
        with _ledger(site)() as session:
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
