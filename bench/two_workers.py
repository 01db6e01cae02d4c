"""Benchmark 6, two workers: three projects at once on a work pool share two sources.

Run ``python -m bench.two_workers [--studies 60] [--delay 1.0]``. The production path: a
Prefect server on PostgreSQL, the ledger on PostgreSQL, ``pacsflow deploy`` on a process
work pool, two ``prefect worker start`` processes, a standing ``pacsflow receiver``, and
three ``extract-project`` runs with ``workers=2`` started together, as the UI would.
Two busy sandbox PACS (``--delay`` s per retrieval) with limits k=3 (primary) and k=2
(secondary) record what they serve; each project asks for a third of each source's
studies, so every study of the secondary is first looked for in the primary.

Printed, per source, from its own record: the most retrievals in flight (goal: never above
its k) and the share of its busy time with k retrievals in flight (goal >= 90% while work
remains), and the run's throughput against the ideal of both sources at their limits.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.harness import (
    RECEIVER_AE,
    REPO,
    SourceRecord,
    check,
    child_env,
    figure,
    prefect_server,
    sandbox_process,
    standing_receiver,
)
from bench.studies import write_manifest
from pacsflow.config import ProjectConfig, SiteConfig
from tests.servers import LOOPBACK, free_port, start_prefect_worker

LIMITS = {"primary": 3, "secondary": 2}
PROJECTS = ("alpha", "beta", "gamma")
POOL = "bench-two-workers"


def _pacsflow(*args: str, api_url: str, cwd: Path) -> None:
    command = [str(Path(sys.executable).parent / "pacsflow"), *args]
    done = subprocess.run(
        command, cwd=cwd, env=child_env(PREFECT_API_URL=api_url), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _write_site(folder: Path, sources: dict, ledger_url: str, receiver_port: int) -> Path:
    site = SiteConfig(
        ledger=ledger_url,
        receiver={"ae_title": RECEIVER_AE, "host": LOOPBACK, "port": receiver_port},
        staging=folder / "staging",
        sources={
            name: {
                "ae_title": pacs.source.ae_title,
                "host": LOOPBACK,
                "port": pacs.source.port,
                "max_concurrent": LIMITS[name],
                "retrieve": "move",
            }
            for name, pacs in sources.items()
        },
        destinations={"out": {"type": "filesystem", "path": folder / "export"}},
    )
    path = folder / "pacsflow.yaml"
    path.write_text(yaml.safe_dump(site.model_dump(mode="json"), sort_keys=False))
    (folder / "projects").mkdir(exist_ok=True)
    for name in PROJECTS:
        project = ProjectConfig(
            name=name, sources=["primary", "secondary"], destination="out", profile="basic"
        )
        (folder / "projects" / f"{name}.yaml").write_text(
            yaml.safe_dump(project.model_dump(mode="json", exclude={"base_dir"}), sort_keys=False)
        )
    return path


def _run_all(api_url: str, folder: Path, manifests: dict[str, Path], timeout: float) -> list:
    """Start the three pulls together through the API and wait for them all."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("extract-project/extract-project")
        runs = [
            client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "project": str(folder / "projects" / f"{name}.yaml"),
                    "manifest": str(manifests[name]),
                    "workers": 2,
                },
            )
            for name in PROJECTS
        ]
        # One request a second for all three: the server measured is the one asked.
        ids = FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in runs]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = {run.id: run.state for run in client.read_flow_runs(flow_run_filter=ids)}
            states = [found.get(run.id) for run in runs]  # in PROJECTS' order
            if all(state is not None and state.is_final() for state in states):
                return states
            time.sleep(1)
    raise RuntimeError(f"runs not finished after {timeout} s: {states}")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60, help="Studies per source.")
    parser.add_argument("--delay", type=float, default=1.0, help="Seconds per retrieval.")
    args = parser.parse_args()
    n = args.studies
    ideal = sum(LIMITS.values()) / args.delay
    print(
        f"Two workers: 3 projects, {n} studies on each of two sources (limits {LIMITS}), "
        f"{args.delay:g} s per retrieval; ideal {ideal:.1f} studies/s"
    )
    ok = True
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        receiver_port = free_port()
        with (
            sandbox_process(
                root / "primary",
                studies=n,
                retrieve_delay=args.delay,
                destinations={RECEIVER_AE: receiver_port},
                ae_title="PRIMARY",
                seed=1,
            ) as primary,
            sandbox_process(
                root / "secondary",
                studies=n,
                retrieve_delay=args.delay,
                destinations={RECEIVER_AE: receiver_port},
                ae_title="SECONDARY",
                seed=2,
            ) as secondary,
            prefect_server(root / "server", "postgres") as server,
        ):
            folder = root / "site"
            folder.mkdir()
            sources = {"primary": primary, "secondary": secondary}
            config = _write_site(folder, sources, server.ledger_url, receiver_port)
            manifests = {
                name: write_manifest(
                    primary.rows[i::3] + secondary.rows[i::3], folder / f"{name}.csv"
                )
                for i, name in enumerate(PROJECTS)
            }
            _pacsflow("configure", str(config), api_url=server.api_url, cwd=folder)
            _pacsflow("deploy", "--pool", POOL, api_url=server.api_url, cwd=REPO)
            # One standing receiver per machine, as README's production path runs it: no
            # flow run's process owns the C-MOVE port, so none takes it away as it ends
            # (the moves under way then failed, and all slots sat idle ~1.5 s).
            with standing_receiver(config, receiver_port):
                workers = [
                    start_prefect_worker(root / f"worker-{i}", server.api_url, POOL, name=f"w{i}")
                    for i in range(2)
                ]
                try:
                    marks = {name: pacs.log_offset() for name, pacs in sources.items()}
                    started, started_wall = time.monotonic(), time.time()
                    states = _run_all(server.api_url, folder, manifests, timeout=60 + 20 * n)
                    seconds = time.monotonic() - started
                finally:
                    for worker in workers:
                        worker.stop()
            exported = [p for p in (folder / "export").glob("*/*/*") if p.is_dir()]
            exported = [p for p in exported if not p.parts[-2].startswith(".")]
            completed = sum(state.is_completed() for state in states)
            for name, state in zip(PROJECTS, states, strict=True):
                if not state.is_completed():
                    print(f"  run of {name} ended {state.name}: {(state.message or '')[:500]}")
            if completed < 3:
                for i in range(2):
                    log = root / f"worker-{i}" / f"worker-w{i}.log"
                    errors = [line for line in _lines(log) if "Error" in line or "error" in line]
                    print(f"  worker w{i}, last error lines:", *errors[-8:], sep="\n    ")
            print(
                f"\n{completed}/3 runs completed, {len(exported)}/{2 * n} studies exported in "
                f"{seconds:.1f} s = {len(exported) / seconds:.2f} studies/s"
            )
            ok &= check("every study exported", len(exported) / (2 * n), "= 1", completed == 3)
            figure("throughput / ideal (both sources at k)", len(exported) / seconds / ideal)
            for name, pacs in sources.items():
                k = LIMITS[name]
                ops = pacs.activity(marks[name])
                record = SourceRecord.of(ops, k)
                print(
                    f"  {name}: {record.operations} requests, busy {record.busy_seconds:.1f} s, "
                    f"from {min(op.started_wall for op in ops) - started_wall:.1f} s after the "
                    f"runs were created to {max(op.ended_wall for op in ops) - started_wall:.1f} s"
                )
                ok &= check(
                    f"{name}: max retrievals in flight",
                    record.max_retrievals,
                    f"<= {k}",
                    record.max_retrievals <= k,
                )
                ok &= check(
                    f"{name}: share of busy time at k",
                    record.at_limit,
                    ">= 0.90",
                    record.at_limit >= 0.9,
                )
    print(f"\ntwo workers: {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
