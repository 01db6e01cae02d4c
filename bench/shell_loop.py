"""Goal 4, against the shell loop sites run today: dcmtk findscu + movescu, one row at a time.

Run ``python -m bench.shell_loop [--studies 200] [--k 5] [--delay 1.0]``. Two sources, the
same one-instance studies in each, the loop of :mod:`bench.baselines.dcmtk_loop` and
``pacsflow extract`` (source limit k) against each in the same run:

* busy: a sandbox PACS at ``--delay`` seconds per retrieval. The loop waits out every
  delay in turn; pacsflow should overlap k of them: goal at least 4.5x the loop's speed.
* plain: Orthanc on loopback, no delay. The loop does no de-identification; pacsflow
  does and should still be faster (goal > 1x).
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from bench.baselines.dcmtk_loop import dcmtk_installed, run_dcmtk_loop
from bench.harness import (
    BACKENDS,
    RECEIVER_AE,
    PrefectBackend,
    Source,
    add_extract_args,
    check,
    exported,
    figure,
    prefect_server,
    run_extract,
    sandbox_process,
    seeded_orthanc,
    status_counts,
    write_site,
)
from bench.studies import synthetic_studies
from tests.servers import free_port

LOOP_AE = "LOOP"
PARTS = ("busy", "plain")


def _race(
    label: str,
    root: Path,
    source: Source,
    rows: list[dict[str, str]],
    server: PrefectBackend,
    args: argparse.Namespace,
    ports: dict[str, int],
    goal: float,
    strict: bool = False,
) -> bool:
    """The loop, then pacsflow, against ``source``; print both; True when pacsflow's speed
    is at least ``goal`` times the loop's (above it, if ``strict``)."""
    n = len(rows)
    loop = run_dcmtk_loop(
        rows,
        (source.ae_title, source.host, source.port),
        out_dir=root / "loop-out",
        store_port=ports[LOOP_AE],
        ae_title=LOOP_AE,
    )
    site = write_site(
        root / "site",
        source,
        rows,
        limit=args.k,
        receiver_port=ports[RECEIVER_AE],
        ledger_url=None,
    )
    run = run_extract(site, server.api_url, shlex.split(args.extract_args))
    studies, _ = exported(site.export)
    loop_rate, rate = loop.studies / loop.seconds, studies / run.seconds
    print(f"\n{label}")
    print(
        f"  dcmtk loop: {loop.studies}/{n} studies in {loop.seconds:.1f} s (no de-identification)"
    )
    figure("dcmtk loop: studies/s", loop_rate)
    print(
        f"  pacsflow, k={args.k}: exit {run.returncode}, {studies}/{n} exported in "
        f"{run.seconds:.1f} s; ledger {status_counts(site)}"
    )
    figure("pacsflow: studies/s", rate)
    ok_all = check("every study exported", studies / n, "= 1", studies == n and run.returncode == 0)
    ratio = rate / loop_rate
    met = ratio > goal if strict else ratio >= goal
    ok_rate = check(
        "pacsflow / dcmtk loop (studies/s)", ratio, f"{'>' if strict else '>='} {goal:g}", met
    )
    if run.returncode != 0:
        print(f"  pacsflow extract output (tail):\n{run.tail(15)}")
    return ok_all and ok_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--k", type=int, default=5, help="pacsflow's source limit.")
    parser.add_argument("--delay", type=float, default=1.0, help="Busy source: s per retrieval.")
    parser.add_argument("--parts", default=",".join(PARTS), help="busy,plain")
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    add_extract_args(parser)
    args = parser.parse_args()
    if not dcmtk_installed():
        raise SystemExit("dcmtk is not installed (apt-get install dcmtk; scripts/system-deps.sh)")
    parts = args.parts.split(",")
    print(
        f"Against the shell loop: {args.studies} one-instance studies, pacsflow k={args.k}, "
        f"Prefect server on {args.backend}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        ports = {RECEIVER_AE: free_port(), LOOP_AE: free_port()}
        with prefect_server(root / args.backend, args.backend) as server:
            if "busy" in parts:
                with sandbox_process(
                    root / "busy" / "pacs",
                    studies=args.studies,
                    retrieve_delay=args.delay,
                    destinations=ports,
                ) as pacs:
                    label = f"busy source: sandbox PACS at {args.delay:g} s per retrieval"
                    results.append(
                        _race(
                            label, root / "busy", pacs.source, pacs.rows, server, args, ports, 4.5
                        )
                    )
            if "plain" in parts:
                studies = synthetic_studies(args.studies, 1)
                with seeded_orthanc(root / "plain" / "orthanc", studies, ports) as (
                    source,
                    _,
                    rows,
                ):
                    label = "plain loopback: Orthanc, no delay"
                    results.append(
                        _race(
                            label,
                            root / "plain",
                            source,
                            rows,
                            server,
                            args,
                            ports,
                            1.0,
                            strict=True,
                        )
                    )
    print(f"\nshell loop: {'PASS' if all(results) else 'FAIL'}")
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
