"""pacsflow against the bare script, from the same Orthanc, with the same limit: goals 2 and 3.

:func:`compare` seeds one Orthanc, runs :func:`bench.baselines.bare_pipeline.run_bare`
with k threads, then ``pacsflow extract`` with the source's ``max_concurrent`` at k, and
prints both and their ratio against the goal. ``bench.small_studies`` and
``bench.large_studies`` differ only in the studies and the goal.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.harness import (
    BACKENDS,
    BARE_AE,
    RECEIVER_AE,
    add_extract_args,
    bare_baseline,
    check,
    exported,
    figure,
    prefect_server,
    run_extract,
    seeded_orthanc,
    status_counts,
    write_site,
)
from bench.studies import BenchStudy
from tests.servers import free_port


def _arguments(parser: argparse.ArgumentParser, studies: int, instances: int) -> None:
    parser.add_argument("--studies", type=int, default=studies)
    parser.add_argument("--instances", type=int, default=instances, help="Per study.")
    parser.add_argument("--k", type=int, default=4, help="Source limit and bare threads.")
    parser.add_argument("--retrieve", choices=("move", "get"), default="move")
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    add_extract_args(parser)


def compare(
    title: str, studies: Iterable[BenchStudy], args: argparse.Namespace, goal: float
) -> bool:
    """Seed, run both, print; True when pacsflow reaches ``goal`` of the bare script."""
    n, k = args.studies, args.k
    print(
        f"{title}: {n} studies x {args.instances} instances from Orthanc, k={k}, "
        f"C-{args.retrieve.upper()}, Prefect server on {args.backend}"
    )
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        receiver_port, bare_port = free_port(), free_port()
        started = time.monotonic()
        with seeded_orthanc(
            root / "orthanc", studies, {RECEIVER_AE: receiver_port, BARE_AE: bare_port}
        ) as (source, orthanc, rows):
            instances = orthanc.instance_count()
            size_mb = orthanc.statistics()["TotalDiskSizeMB"]
            print(
                f"seeded {len(rows)} studies, {instances} instances, {size_mb} MB in "
                f"{time.monotonic() - started:.0f} s"
            )
            bare = bare_baseline(
                root, source, rows, k=k, retrieve=args.retrieve, scp_port=bare_port
            )
            with prefect_server(root / args.backend, args.backend) as server:
                site = write_site(
                    root / "site",
                    source,
                    rows,
                    limit=k,
                    retrieve=args.retrieve,
                    receiver_port=receiver_port,
                    ledger_url=server.ledger_url,
                )
                run = run_extract(site, server.api_url, shlex.split(args.extract_args))
                counts = status_counts(site)
        studies_out, instances_out = exported(site.export)
    bare_rate, rate = bare.studies / bare.seconds, studies_out / run.seconds
    print(
        f"\nbare pynetdicom script, {k} threads: {bare.studies} studies, {bare.instances} "
        f"instances in {bare.seconds:.1f} s"
    )
    figure("bare: studies/s", bare_rate)
    figure("bare: instances/s", bare.instances / bare.seconds)
    print(
        f"\npacsflow extract: exit {run.returncode}, {studies_out} studies, {instances_out} "
        f"instances exported in {run.seconds:.1f} s; ledger {counts}"
    )
    figure("pacsflow: studies/s", rate)
    figure("pacsflow: instances/s", instances_out / run.seconds)
    ok_all = check(
        "every study exported", studies_out / n, "= 1", studies_out == n and run.returncode == 0
    )
    ok_rate = check(
        "pacsflow / bare script (studies/s)",
        rate / bare_rate,
        f">= {goal:g}",
        rate / bare_rate >= goal,
    )
    if run.returncode != 0:
        print(f"  pacsflow extract output (tail):\n{run.tail(15)}")
    ok = ok_all and ok_rate
    print(f"\n{title.lower()}: {'PASS' if ok else 'FAIL'}")
    return ok


def main(
    doc: str,
    title: str,
    make_studies: Callable[[int, int], Iterable[BenchStudy]],
    *,
    studies: int,
    instances: int,
    goal: float,
) -> None:
    """The command line of a benchmark module: its defaults, its studies, its goal."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    _arguments(parser, studies, instances)
    args = parser.parse_args()
    ok = compare(title, make_studies(args.studies, args.instances), args, goal)
    raise SystemExit(0 if ok else 1)
