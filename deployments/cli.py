"""The ``pacsflow`` command.

Inputs are validated before Prefect is touched, so a bad config or manifest exits 2
having changed nothing. Prefect is imported only after :func:`ensure_server` has set
the environment it reads at import.
"""

from __future__ import annotations

import atexit
import contextvars
import gc
import json
import os
import shutil
import signal
import socket
import threading
import time
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deployments import projects
from deployments.cli_projects import app as projects_app
from deployments.cli_report import report as report_command
from deployments.options import ConfigOption, ProjectOption, SiteOption
from deployments.server import ensure_server, is_ours, read_state, stop_local_server
from deployments.status import LISTED, listed_studies
from pacsflow.config import (
    ProjectConfig,
    SiteConfig,
    load_project_config,
    load_site_config,
)
from pacsflow.deid.pixels import PixelPolicy
from pacsflow.deid.profile import build_profile
from pacsflow.errors import ConfigError, ManifestError
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.ledger.models import FINAL, StudyStatus
from pacsflow.ledger.repository import KeyChanged
from pacsflow.manifest import read_manifest

app = typer.Typer(
    help="Pull research imaging out of PACS: find, retrieve, de-identify, export.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
#: The site block's default name (``blocks.site.DEFAULT_SITE``; blocks import prefect).
DEFAULT_SITE = "default"
#: Statuses that end an attempt (the progress bar's "done"); every final status.
DONE = tuple(status.value for status in FINAL)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"pacsflow {version('pacsflow')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Pull research imaging out of PACS: find, retrieve, de-identify, export."""
    _exit_without_final_collection()


def _exit_without_final_collection() -> None:
    """Let the process end without a last garbage collection over everything it imported.

    At exit Python collects cyclic garbage across the whole heap (Prefect, pandas,
    SQLAlchemy and pydicom are loaded): most of a second after the command has finished
    and printed everything. Freezing the heap at exit skips that pass; the operating
    system frees the memory anyway. The ``atexit`` handlers still run, Prefect's logs and
    events are drained before them, and module teardown still releases what is not in a
    cycle; only objects held in reference cycles are not finalised, and pacsflow relies on
    no finaliser (it closes files and ledger sessions with ``with``; there is no
    ``__del__``). Registered once, whatever the number of commands run in this process.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def _fail_input(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


def _site_path(config: Path | None) -> Path:
    """The site file meant (see :func:`projects.site_config_path`); exit 2 if there is none."""
    try:
        return projects.site_config_path(config)
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None


def _project_file(project: str, config: Path) -> Path:
    try:
        return projects.project_file(project, config)
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None


def _project_slug(project: str | None, config: Path, sessions) -> str:
    """The slug ``project`` names; without one, the ledger's only project."""
    with sessions() as session:
        in_ledger = projects.ledger_projects(session)
    try:
        if project is not None:
            return projects.project_slug(project, config, in_ledger)
        if len(in_ledger) == 1:
            return in_ledger[0]
        listed = ", ".join(in_ledger) or "none yet"
        raise ConfigError(f"pass --project: the ledger holds these projects: {listed}")
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None


def _load_inputs(
    config: Path, project: Path, manifest: Path | None
) -> tuple[SiteConfig, ProjectConfig, int]:
    try:
        site = load_site_config(config)
        proj = load_project_config(project)
        proj.check_against(site)
        # Build the profile now: a mistake in a profile file is invalid input too.
        build_profile(proj.profile, proj.profile_options, proj.resolved_profile_files)
        PixelPolicy.for_project(proj)  # and a mistake in a pixel recipe file
        rows = len(read_manifest(manifest, proj.name)) if manifest else 0
    except (ConfigError, ManifestError) as exc:
        raise _fail_input(str(exc)) from None
    return site, proj, rows


def _connect(verbose: bool = False):
    """Point Prefect at its server. Must run before anything imports prefect.

    Unless ``verbose``, Prefect's console handler shows warnings only, so the progress
    bar stays readable; every log still reaches the Prefect UI.
    """
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    try:
        server = ensure_server()
    except RuntimeError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if server.note:
        console.print(f"[yellow]note:[/] {server.note}", highlight=False)
    if server.started_here:
        console.print(
            f"Started pacsflow's local Prefect server: UI at [link]{server.ui_url}[/]; it keeps "
            "running for the UI, `pacsflow server stop` stops it."
        )
        if not os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL"):
            console.print(
                "[dim]Its database is SQLite: fine for trying pacsflow. For real projects set "
                "PREFECT_SERVER_DATABASE_CONNECTION_URL to a PostgreSQL database (README: "
                "Many workers).[/]"
            )
    return server


@app.command()
def configure(
    config: Annotated[Path, typer.Argument(help="Site file, e.g. pacsflow.yaml")],
    site_name: SiteOption = DEFAULT_SITE,
) -> None:
    """Save the site's sources, destinations and ledger as Prefect blocks (idempotent)."""
    try:
        site = load_site_config(config)
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None
    _connect()
    from blocks.site import save_site

    save_site(site, name=site_name)
    migrate(make_engine(site.ledger))
    console.print(
        f"Saved {len(site.sources)} sources and {len(site.destinations)} "
        "destinations as Prefect blocks; the ledger is ready."
    )
    from deployments.cli_projects import register_beside
    from deployments.crashes import ensure_crash_automation
    from deployments.form import refresh_forms

    if ensure_crash_automation() != "unchanged":
        console.print("Flow runs whose worker dies are now marked Crashed (an automation).")
    if registered := register_beside(config, site=site_name):
        refresh_forms(site_name)
        console.print(f"Projects offered in the run form: {', '.join(registered)}")


def _ledger(site: SiteConfig):
    """Sessions on the site's ledger, migrated once here (not on every progress poll, where
    it would race the flow's own migration of a new ledger)."""
    engine = make_engine(site.ledger)
    migrate(engine)
    return session_factory(engine)


def _counts(sessions, project: str) -> tuple[dict[str, int], dict[str, int]]:
    with sessions() as session:
        return repo.status_counts(session, project), repo.source_counts(session, project)


def _summary(sessions, project: ProjectConfig) -> dict[str, int]:
    """The final table, on the sessions the progress display used (migrated already)."""
    counts, by_source = _counts(sessions, project.name)
    console.print(_counts_table(project.name, counts, by_source))
    return counts


def _counts_table(project: str, counts: dict[str, int], by_source: dict[str, int]) -> Table:
    table = Table(title=f"Project {project}")
    table.add_column("status")
    table.add_column("studies", justify="right")
    for status, n in counts.items():
        table.add_row(status, str(n))
    for source, n in sorted(by_source.items()):
        table.add_row(f"  exported from {source}", str(n))
    return table


def run_extract(
    site: SiteConfig,
    project_file: Path,
    project: ProjectConfig,
    manifest: Path,
    workers: int = 1,
    force_key_change: bool = False,
    export_lanes: int | None = None,
    site_name: str = DEFAULT_SITE,
) -> int:
    """Run the flow in this process, show progress from the ledger, return the exit code.

    The site's blocks are saved while the flow's modules are imported: saving waits on the
    server most of the time, importing needs the CPU, and done one after the other they
    cost 0.1-0.4 s more before the first study is asked for (measured).
    """
    from blocks.site import save_site

    with ThreadPoolExecutor(1, thread_name_prefix="pacsflow-save-site") as pool:
        # In a copy of this thread's context, so the save sees the same Prefect settings.
        saved = pool.submit(contextvars.copy_context().run, save_site, site, name=site_name)
        from flows.extract import extract_project
        from pacsflow.dicom.receiver import stop_process_receiver

        saved.result()  # a failed save raises here, before any flow run exists
    sessions = _ledger(site)
    known_before = sum(_counts(sessions, project.name)[0].values())
    outcome: dict[str, object] = {}
    options = {"export_lanes": export_lanes} if export_lanes else {}

    def target() -> None:
        outcome["state"] = extract_project(
            project=str(project_file.resolve()),
            manifest=str(manifest.resolve()),
            site=site_name,
            force_key_change=force_key_change,
            workers=workers,
            return_state=True,
            **options,
        )

    worker = threading.Thread(target=target, name="pacsflow-flow", daemon=True)
    worker.start()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"extracting {project.name}", total=None, detail="")
        while worker.is_alive():
            worker.join(1.0)
            counts, _ = _counts(sessions, project.name)
            detail = "  ".join(f"{k} {v}" for k, v in counts.items() if v)
            progress.update(
                bar,
                total=sum(counts.values()) or None,
                completed=sum(counts[s] for s in DONE),
                detail=detail,
            )
    stop_process_receiver()
    state = outcome.get("state")
    if state is not None and state.is_failed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, KeyChanged | ConfigError | ManifestError):
            console.print(f"[bold red]error:[/] {error}", highlight=False)
            return 2
    counts = _summary(sessions, project)
    new = sum(counts.values()) - known_before
    console.print(
        f"{new} new studies"
        + ("; the manifest holds nothing this project has not seen." if not new else ".")
    )
    if state is not None:
        flow_run_id = state.state_details.flow_run_id
        ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
        console.print(f"Flow run: {ui}/runs/flow-run/{flow_run_id}  ({state.name})")
    dest = site.destinations[project.destination]
    if dest.type == "filesystem":
        console.print(f"Exported studies are under {Path(dest.path).resolve() / project.name}")
    else:
        console.print(f"Exported studies went to destination {project.destination} ({dest.type})")
    unfinished = (*repo.NEEDS_ATTENTION, StudyStatus.PENDING, StudyStatus.RETRIEVING)
    if any(counts[s.value] for s in unfinished):
        console.print("Some studies did not finish; `pacsflow status` shows why.")
        return 1
    return 0


@app.command()
def extract(
    project: ProjectOption,
    manifest: Annotated[Path, typer.Option(help="Manifest, .csv or .parquet")],
    config: ConfigOption = None,
    site_name: SiteOption = DEFAULT_SITE,
    workers: Annotated[
        int,
        typer.Option(
            help="Split the pull over at most this many process-studies runs on a work "
            "pool, one per 100 studies (needs the deployments and workers; see README). "
            "1 runs it all here."
        ),
    ] = 1,
    export_lanes: Annotated[
        int | None,
        typer.Option(help="Studies de-identified and exported at once in this process."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs on the console.")] = False,
    force_key_change: Annotated[
        bool, typer.Option(help="Accept a new pseudonymisation key for a project with exports.")
    ] = False,
) -> None:
    """Extract a project's manifest: exit 0 if all ended exported, not found or excluded,
    1 if any failed, was quarantined, ambiguous or partial, 2 on invalid input."""
    config = _site_path(config)
    project_file = _project_file(project, config)
    site, proj, rows = _load_inputs(config, project_file, manifest)
    console.print(f"Manifest is valid: {rows} studies.")
    _connect(verbose)
    raise typer.Exit(
        run_extract(
            site, project_file, proj, manifest, workers, force_key_change, export_lanes, site_name
        )
    )


@app.command()
def status(
    project: Annotated[
        str | None,
        typer.Option(help="Project file or slug [default: the ledger's only project]."),
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts per status and per source, and the studies not found, failed, quarantined,
    ambiguous, partial or excluded, or exported with instances missing, by ledger id with
    their identifiers masked."""
    config = _site_path(config)
    try:
        site = load_site_config(config)
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None
    sessions = _ledger(site)
    slug = _project_slug(project, config, sessions)
    counts, by_source = _counts(sessions, slug)
    with sessions() as session:
        lines = listed_studies(session, slug)
        classes = repo.error_class_counts(session, slug)
        # allow_partial: exported, but short of what the source announced.
        short = repo.partially_exported(session, slug)
    if as_json:
        listed = {s.value: [] for s in LISTED}
        for line in lines:
            listed[line.status].append(
                {"id": line.id, "mrn": line.mrn, "accession": line.accession, "reason": line.reason}
            )
        report = {
            "project": slug,
            "counts": counts,
            "exported_by_source": by_source,
            "error_classes": [
                {"status": st, "error_class": kind, "studies": n} for st, kind, n in classes
            ],
            **listed,
            "exported_partial": [{"id": i, "reason": r} for i, r in short],
        }
        print(json.dumps(report, indent=2))
        return
    console.print(_counts_table(slug, counts, by_source))
    if lines:
        table = Table(title="Studies that did not export (identifiers masked)")
        for column in ("ledger id", "status", "MRN", "accession", "reason"):
            table.add_column(column, overflow="fold")
        for line in lines:
            table.add_row(str(line.id), line.status, line.mrn, line.accession, line.reason)
        console.print(table)
    for study_id, reason in short:
        console.print(f"  exported partial: study {study_id}: {reason}", highlight=False)
    if classes:
        why = Table(title="Why not exported (error classes)")
        for column in ("status", "error class"):
            why.add_column(column)
        why.add_column("studies", justify="right")
        for st, kind, n in classes:
            why.add_row(st, kind, str(n))
        console.print(why)


@app.command()
def requeue(
    project: ProjectOption,
    status: Annotated[
        str, typer.Option(help="not_found, excluded, quarantined, ambiguous or partial.")
    ],
    config: ConfigOption = None,
) -> None:
    """Send a project's not-found, excluded, quarantined, ambiguous or partial studies back
    to the queue."""
    config = _site_path(config)
    try:
        site = load_site_config(config)
        wanted = StudyStatus(status)
        if wanted not in repo.REQUEUEABLE:
            raise ValueError(
                f"--status {status!r} cannot be re-queued; choose one of "
                f"{[s.value for s in repo.REQUEUEABLE]}"
            )
    except (ConfigError, ValueError) as exc:
        raise _fail_input(str(exc)) from None
    sessions = _ledger(site)
    slug = _project_slug(project, config, sessions)
    with sessions() as session:
        count = repo.requeue(session, slug, wanted)
    console.print(f"{count} {status} studies of {slug} are pending again; run extract.")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@app.command()
def sandbox(
    folder: Annotated[Path, typer.Option(help="Where the sandbox keeps its files.")] = Path(
        ".pacsflow/sandbox"
    ),
    primary_port: int = 11242,
    secondary_port: int = 11243,
    receiver_port: int = 11112,
    studies: int = 12,
    retrieve_delay: Annotated[
        float, typer.Option(min=0, help="Seconds each C-MOVE/C-GET waits, as a busy archive.")
    ] = 0.0,
    activity_log: Annotated[
        Path | None,
        typer.Option(help="Append every C-FIND/C-MOVE/C-GET served to this JSONL file."),
    ] = None,
) -> None:
    """Start two local PACS with synthetic studies and write a config, project and manifest."""
    from pacsflow.sandbox.scenario import build_sandbox

    site = build_sandbox(
        folder,
        primary_port=primary_port,
        secondary_port=secondary_port,
        receiver_port=receiver_port,
        n_studies=studies,
        retrieve_delay=retrieve_delay,
        activity_log=activity_log,
    )
    console.print(
        f"Sandbox PACS running: PRIMARY on {primary_port}, SECONDARY on "
        f"{secondary_port}. In another shell:\n  pacsflow extract --config "
        f"{site.config_path} --project {site.project_path} --manifest "
        f"{site.manifest_path}\nCtrl-C stops the sandbox."
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        site.stop()


#: Studies the demo seeds but leaves out of its first pull, for a pull from the UI.
DEMO_MORE = 4


@app.command()
def demo(
    folder: Annotated[Path, typer.Option(help="Where the demo keeps its files.")] = Path(
        ".pacsflow/demo"
    ),
    studies: int = 12,
    fresh: Annotated[bool, typer.Option(help="Start again from an empty ledger.")] = True,
    serve: Annotated[
        bool,
        typer.Option(
            help="Then leave the deployments served in the background, with the sandbox "
            "PACS, so the Prefect UI can start pulls (`pacsflow server stop` stops them)."
        ),
    ] = True,
) -> None:
    """Sandbox PACS, local Prefect server and a full extraction, in one command."""
    from deployments.background import stop_served
    from pacsflow.sandbox.scenario import build_sandbox

    # Its sandbox is about to be rebuilt on other ports: one served demo at a time.
    if (previous := stop_served()) is not None:
        console.print(f"Stopped the deployments the last demo served (pid {previous.pid}).")
    if fresh and folder.exists():
        shutil.rmtree(folder)
    site = build_sandbox(
        folder,
        primary_port=_free_port(),
        secondary_port=_free_port(),
        receiver_port=_free_port(),
        n_studies=studies,
        extra_studies=DEMO_MORE,
    )
    expected = site.expected
    console.print(
        f"Sandbox: {studies} studies requested: {expected['primary']} only in the primary, "
        f"{expected['secondary']} only in the secondary, {expected['both']} in both, "
        f"{expected['neither']} in neither."
    )
    try:
        config = load_site_config(site.config_path)
        project = load_project_config(site.project_path)
        _connect()
        started = time.monotonic()
        code = run_extract(config, site.project_path, project, site.manifest_path)
        console.print(f"Done in {time.monotonic() - started:.1f} s.")
    finally:
        site.stop()
    served = serve and code != 2 and _serve_in_background(site, project.name)
    _tell_where_the_ui_is(served)
    raise typer.Exit(1 if serve and not served else code)


def _serve_in_background(site, project: str) -> bool:
    """Serve the deployments and the demo's sandbox in a process of their own."""
    from deployments.background import start_served, stop_served, wait_until_served
    from deployments.cli_projects import register_beside

    register_beside(site.config_path)  # the run form lists the demo's project
    console.print("Serving the deployments in the background, with the sandbox PACS...")
    state = start_served(site.folder, os.environ["PREFECT_API_URL"])
    deployment_id = wait_until_served(state)
    if deployment_id is None:
        stop_served()
        console.print(
            f"[bold red]error:[/] serving the deployments failed; see {state.log}",
            highlight=False,
        )
        return False
    ui = state.api_url.removesuffix("/api")
    console.print(
        f"Deployments served in the background (pid {state.pid}, log {state.log}). Start "
        f"another pull in the UI: {ui}/deployments/deployment/{deployment_id} > Run > Custom "
        f"run, project {project} from the list, manifest {site.more_manifest_path} "
        f"({site.more} studies the first pull did not ask for).",
        highlight=False,
    )
    return True


def _tell_where_the_ui_is(served: bool = False) -> None:
    api_url = os.environ.get("PREFECT_API_URL", "")
    ui = api_url.removesuffix("/api")
    state = read_state()
    if is_ours(state) and state.api_url == api_url:
        what = "the served deployments and the server keep" if served else "the server keeps"
        console.print(
            f"The Prefect UI is at {ui}; {what} running. Stop "
            f"{'them' if served else 'it'} with `pacsflow server stop`; `pacsflow status` "
            "shows the demo's studies."
        )
    elif served:
        console.print(
            f"The Prefect UI is at {ui}; `pacsflow server stop` stops the served deployments; "
            "`pacsflow status` shows the demo's studies."
        )
    else:
        console.print(f"The Prefect UI is at {ui}; `pacsflow status` shows the demo's studies.")


server_app = typer.Typer(help="pacsflow's own local Prefect server.", no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("status")
def server_status() -> None:
    """Where pacsflow's local server is (URL, pid, home) and whether it is running."""
    state = read_state()
    if os.environ.get("PREFECT_API_URL"):
        console.print(f"PREFECT_API_URL is set: commands use {os.environ['PREFECT_API_URL']}")
    if state is None:
        console.print("pacsflow has no local Prefect server recorded here (.pacsflow/prefect).")
        _served_status()
        return
    running = is_ours(state)
    console.print(
        f"{'running' if running else 'NOT running'}: {state.api_url.removesuffix('/api')}  "
        f"pid {state.pid}  home {state.home}  ours: "
        + ("yes (its token matches)" if running else "no answer with our token on that port"),
        highlight=False,
    )
    _served_status()
    if not running:
        raise typer.Exit(1)
    if os.environ.get("PREFECT_API_URL") != state.api_url:
        console.print(
            f"For Prefect's own CLI (`prefect deployment ls`, ...): "
            f"export PREFECT_API_URL={state.api_url}",
            highlight=False,
        )


def _served_status() -> None:
    from deployments.background import is_running, read_served

    served = read_served()
    if served is not None:
        console.print(
            f"the demo's served deployments: {'running' if is_running(served) else 'NOT running'}"
            f"  pid {served.pid}  log {served.log}",
            highlight=False,
        )


@server_app.command("stop")
def server_stop() -> None:
    """Stop the deployments the demo serves, then pacsflow's local server, by their recorded
    pids; wait for them to exit and forget them."""
    from deployments.background import stop_served

    served = stop_served()  # first: it talks to the server
    if served is not None:
        console.print(f"Stopped the deployments the demo served (pid {served.pid}).")
    stopped = stop_local_server()
    if stopped is None:
        console.print("No local Prefect server of pacsflow's was running here.")
        return
    console.print(f"Stopped pacsflow's Prefect server (pid {stopped.pid}, port {stopped.port}).")


@app.command()
def receiver(config: ConfigOption = None) -> None:
    """Run the C-MOVE receiver in the foreground, shared by every flow run on this host."""
    from pacsflow.dicom.peers import allowed_peers
    from pacsflow.dicom.receiver import Receiver

    config = _site_path(config)
    try:
        site = load_site_config(config)
        running = Receiver(site.receiver, site.staging, allowed_peers(site))
        console.print(
            f"Receiver {site.receiver.ae_title} on {site.receiver.host}:"
            f"{site.receiver.port}, writing to {Path(site.staging).resolve()}"
        )
        running.serve_forever()
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None
    except KeyboardInterrupt:
        running.stop()


@app.command()
def serve(
    project: Annotated[
        str | None, typer.Option(help="Project file or slug for a scheduled pull.")
    ] = None,
    manifest: Annotated[str | None, typer.Option(help="Manifest for a scheduled pull.")] = None,
    cron: Annotated[str | None, typer.Option(help='Schedule, e.g. "0 2 * * *".')] = None,
    timezone: Annotated[
        str, typer.Option(help="IANA time zone of --cron, e.g. Europe/London.")
    ] = "UTC",
    config: ConfigOption = None,
    site_name: SiteOption = DEFAULT_SITE,
    sandbox: Annotated[
        Path | None,
        typer.Option(
            help="Also run the sandbox PACS and a receiver of this demo folder, as "
            "`pacsflow demo` leaves them (e.g. .pacsflow/demo)."
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(help="Take over deployments registered on a work pool by `deploy`."),
    ] = False,
) -> None:
    """Serve extract-project, check-project and process-studies: trigger runs from the
    Prefect UI. With --cron, also a recurring pull of --project's --manifest."""
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _fail_input(
            f"unknown time zone {timezone!r}; use an IANA name like Europe/London"
        ) from None
    if project is not None:
        # The served runs start elsewhere: hand them the file's absolute path.
        project = str(_project_file(project, _site_path(config)).resolve())
    server = _connect(verbose=True)
    from deployments.registrations import RegistrationConflict
    from deployments.serve import DEPLOYMENT, serve_deployments, served_deployments

    try:
        deployments = served_deployments(
            project, manifest, cron, site=site_name, timezone=timezone, replace=replace
        )
    except RegistrationConflict as exc:
        raise _fail_input(str(exc)) from None
    hosted = _host_sandbox(sandbox) if sandbox is not None else []
    names = ", ".join(d.name for d in deployments)
    console.print(f"Serving {names}; trigger runs at {server.ui_url}/deployments")
    if cron:
        console.print(
            f"Stopping this process pauses the schedule of {deployments[-1].name}; "
            "`pacsflow serve` with the same --cron resumes it."
        )
        if not any(d.name == DEPLOYMENT for d in deployments):
            console.print(
                "extract-project, process-studies and check-project stay with the "
                "`pacsflow serve` that already serves them."
            )
    try:
        serve_deployments(deployments)
    finally:
        for running in hosted:
            running.stop()


def _host_sandbox(folder: Path) -> list:
    """Start the sandbox PACS built in ``folder`` again, and a receiver for their moves."""
    from pacsflow.dicom.peers import allowed_peers
    from pacsflow.dicom.receiver import Receiver
    from pacsflow.errors import PacsflowError
    from pacsflow.sandbox.scenario import reopen_sandbox

    try:
        site = load_site_config(folder / "pacsflow.yaml")
        pacs = reopen_sandbox(folder)
    except (ConfigError, PacsflowError, OSError) as exc:
        console.print(f"[bold red]error:[/] cannot host the sandbox: {exc}", highlight=False)
        raise typer.Exit(1) from None
    try:
        receiver = Receiver(site.receiver, site.staging, allowed_peers(site)).start()
    except ConfigError as exc:
        for each in pacs:
            each.stop()
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(
        f"Sandbox PACS of {folder} running: "
        + ", ".join(f"{p.ae_title} on {p.address[1]}" for p in pacs)
        + f"; receiver on {site.receiver.port}"
    )
    return [*pacs, receiver]


@app.command()
def deploy(
    pool: Annotated[str, typer.Option(help="Process work pool to create or use.")] = "pacsflow",
    site_name: SiteOption = DEFAULT_SITE,
    replace: Annotated[
        bool,
        typer.Option(help="Take over deployments a running `pacsflow serve` serves."),
    ] = False,
) -> None:
    """Register extract-project, check-project and process-studies on a process work pool.

    Then run `prefect worker start --pool POOL` on each machine (same code, ledger and
    staging), and trigger extract-project with workers > 1 to share a pull among them.
    Runs use the site block --site names unless the run form gives another.
    """
    server = _connect(verbose=True)
    from deployments.registrations import RegistrationConflict
    from deployments.serve import deploy_to_pool

    try:
        names = deploy_to_pool(pool, site=site_name, replace=replace)
    except RegistrationConflict as exc:
        raise _fail_input(str(exc)) from None
    for name in names:
        console.print(f"Deployed {name} on work pool {pool!r} (site {site_name!r})")
    console.print(
        f"Start workers with: prefect worker start --pool {pool}\n"
        f"Trigger runs at {server.ui_url}/deployments"
    )


@app.command("export-linker")
def export_linker_command(
    project: ProjectOption,
    config: ConfigOption = None,
    destination: Annotated[
        str | None,
        typer.Option(help="The project's destination; needed when the site declares several."),
    ] = None,
    output: Annotated[Path, typer.Option(help="Local folder for the linker file.")] = Path(
        ".pacsflow/linker"
    ),
) -> None:
    """Write the project's linker table (procedure_id to pseudonyms, never an MRN or
    accession) as parquet and send it to the project's destination."""
    from pacsflow.errors import PacsflowError
    from pacsflow.export import make_destination
    from pacsflow.linker import export_linker

    config = _site_path(config)
    try:
        site = load_site_config(config)
        if destination is None and len(site.destinations) != 1:
            raise ConfigError(
                f"the site declares {len(site.destinations)} destinations "
                f"{sorted(site.destinations)}; pass --destination with the project's one"
            )
        name = destination or next(iter(site.destinations))
        if name not in site.destinations:
            raise ConfigError(
                f"--destination {name!r} is not declared in the site config; known "
                f"destinations: {sorted(site.destinations)}"
            )
        target = make_destination(site.destinations[name])
    except ConfigError as exc:
        raise _fail_input(str(exc)) from None
    sessions = _ledger(site)
    project = _project_slug(project, config, sessions)
    try:
        with sessions() as session:
            result = export_linker(session, project, target, output / project)
    except PacsflowError as exc:
        console.print(f"[bold red]error:[/] sending the linker failed: {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"Linker of {project}: {result.rows} exported studies in {result.local}")
    if result.sent_to:
        console.print(f"Sent to {name}: {result.sent_to}")
    else:
        console.print(
            f"Destination {name} ({site.destinations[name].type}) holds DICOM only: hand the "
            "local file to the research team another way."
        )


app.add_typer(projects_app, name="project")
app.command("report")(report_command)

from deployments.cli_check import check  # noqa: E402 (it imports helpers from this module)

app.command()(check)

if __name__ == "__main__":
    app()
