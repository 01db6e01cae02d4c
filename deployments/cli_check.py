"""``pacsflow check``: the pre-flight check (C-FIND only) of a project's manifest.

Runs the ``check-project`` flow (:mod:`flows.check`) in this process and prints the
studies per class. Like ``extract``, the inputs are validated before Prefect is touched,
so a bad config, project or manifest exits 2 having changed nothing. What reaches Prefect
is ledger ids and counts; the identifiers stay in the ledger.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deployments.options import ConfigOption, SiteOption
from pacsflow.check import LABELS, CheckResult
from pacsflow.config import SiteConfig, load_project_config, load_site_config
from pacsflow.errors import ConfigError, ManifestError
from pacsflow.manifest import read_manifest

console = Console()


def _validate(config: Path, project: str, manifest: Path) -> tuple[SiteConfig, str]:
    """The site, and the project as the flow takes it: a file's absolute path, or a slug."""
    from deployments.cli import _fail_input, _load_inputs, _project_file

    if Path(project).suffix or (config.parent / "projects" / f"{project}.yaml").exists():
        project_file = _project_file(project, config)
        site, _proj, _rows = _load_inputs(config, project_file, manifest)
        return site, str(project_file.resolve())
    try:  # a slug: the flow resolves it among the site's registered projects
        site = load_site_config(config)
        read_manifest(manifest, project)
    except (ConfigError, ManifestError) as exc:
        raise _fail_input(str(exc)) from None
    return site, project


def _print_counts(project: str, counts: dict[str, int]) -> None:
    table = Table(title=f"Pre-flight check of {project} (C-FIND only, nothing retrieved)")
    table.add_column("class")
    table.add_column("studies", justify="right")
    for result in CheckResult:
        table.add_row(LABELS[result], str(counts.get(result.value, 0)))
    console.print(table)
    console.print(f"The studies found hold {counts.get('expected_instances', 0)} instances.")
    if counts.get(CheckResult.DONE.value):
        console.print(
            "Studies finished in the ledger (exported, not found, excluded) are not asked "
            "again; `pacsflow status` shows where each came from, and `pacsflow requeue "
            "--status not_found` makes not-found ones pending so a check asks again."
        )


def check(
    project: Annotated[str, typer.Option(help="Project file, or the slug of a registered one.")],
    manifest: Annotated[Path, typer.Option(help="Manifest, .csv or .parquet")],
    config: ConfigOption = None,
    site_name: SiteOption = "default",
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs on the console.")] = False,
) -> None:
    """Pre-flight check: ask every source where each study is (C-FIND only, nothing is
    retrieved) and print the studies per class. Exit 0 when the check ran, 1 when it
    failed, 2 on invalid input."""
    from deployments.cli import _connect, _site_path

    config = _site_path(config)
    site, target = _validate(config, project, manifest)
    _connect(verbose)
    from blocks.site import save_site
    from flows.check import check_project

    save_site(site, name=site_name)
    state = check_project(
        project=target, manifest=str(manifest.resolve()), site=site_name, return_state=True
    )
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        console.print(f"[bold red]error:[/] the check failed: {error}", highlight=False)
        raise typer.Exit(2 if isinstance(error, ConfigError | ManifestError) else 1)
    counts = state.result()
    name = load_project_config(Path(target)).name if Path(target).suffix else target
    _print_counts(name, counts)
    ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    console.print(f"Flow run: {ui}/runs/flow-run/{state.state_details.flow_run_id}")
    console.print(
        "The ledger keeps what was found; `pacsflow extract` fetches the found studies "
        "without asking again for 24 hours."
    )
