"""Goal 1, saturation: does pacsflow keep a busy source at its limit, and never above it?

Run ``python -m bench.saturation [--studies 200] [--k 4] [--delay 1.0]``. A sandbox PACS in
its own process takes ``--delay`` seconds per retrieval and records every request it
serves. pacsflow, with the source's ``max_concurrent`` at k, pulls ``--studies``
one-instance studies from it end to end (``pacsflow extract`` as a subprocess) on a Prefect
server on SQLite (the local default) and on PostgreSQL (ledger on PostgreSQL too).

The ideal is k studies per ``--delay`` seconds. Printed, per server: throughput against
that ideal (goal >= 0.9) and against the bare pynetdicom script of
:mod:`bench.baselines.bare_pipeline` with k threads on the same source in the same run;
and from the source's own record, the most retrievals in flight (goal: never above k) and
queries (a lane C-FINDs its next study while it retrieves one: never above k either), and
the share of the run, while studies were still waiting, with k retrievals in flight
(goal >= 90%).
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

from bench.harness import (
    BACKENDS,
    BARE_AE,
    RECEIVER_AE,
    SourceRecord,
    add_extract_args,
    bare_baseline,
    check,
    exported,
    figure,
    prefect_server,
    run_extract,
    sandbox_process,
    status_counts,
    write_site,
)
from tests.servers import free_port


def _print_source(record: SourceRecord, k: int) -> bool:
    """The source's own view; True when its goals are met."""
    print(
        f"  source saw {record.operations} requests, {record.retrievals} retrievals, busy for "
        f"{record.busy_seconds:.1f} s"
    )
    return all(
        [
            check(
                "source: max retrievals in flight",
                record.max_retrievals,
                f"<= {k}",
                record.max_retrievals <= k,
            ),
            # A lane C-FINDs its next study while it retrieves one (the source's
            # find_ahead): at most one query per lane beside its retrieval.
            check(
                "source: max queries in flight",
                record.max_queries,
                f"<= {k}",
                record.max_queries <= k,
            ),
            check(
                "source: max requests in flight",
                record.max_operations,
                f"<= {2 * k}",
                record.max_operations <= 2 * k,
            ),
            check(
                "source: share of busy time at k retrievals",
                record.at_limit,
                ">= 0.90",
                record.at_limit >= 0.9,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--k", type=int, default=4, help="The source's limit.")
    parser.add_argument("--delay", type=float, default=1.0, help="Seconds per retrieval.")
    parser.add_argument("--retrieve", choices=("move", "get"), default="move")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgres")
    add_extract_args(parser)
    args = parser.parse_args()
    k, n = args.k, args.studies
    ideal = k / args.delay
    print(
        f"Saturation: {n} one-instance studies, source limit k={k}, {args.delay:g} s per "
        f"retrieval (ideal {ideal:.2f} studies/s), C-{args.retrieve.upper()}"
    )
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        receiver_port, bare_port = free_port(), free_port()
        with sandbox_process(
            root / "pacs",
            studies=n,
            retrieve_delay=args.delay,
            destinations={RECEIVER_AE: receiver_port, BARE_AE: bare_port},
        ) as pacs:
            rows = pacs.rows

            mark = pacs.log_offset()
            bare = bare_baseline(
                root, pacs.source, rows, k=k, retrieve=args.retrieve, scp_port=bare_port
            )
            bare_rate = bare.studies / bare.seconds
            print(
                f"\nbare pynetdicom script, {k} threads: {bare.studies} studies in "
                f"{bare.seconds:.1f} s = {bare_rate:.2f} studies/s "
                f"({bare_rate / ideal:.2f} of ideal)"
            )
            _print_source(SourceRecord.of(pacs.activity(mark), k), k)

            for backend in args.backends.split(","):
                with prefect_server(root / backend, backend) as server:
                    site = write_site(
                        root / f"site-{backend}",
                        pacs.source,
                        rows,
                        limit=k,
                        retrieve=args.retrieve,
                        receiver_port=receiver_port,
                        ledger_url=server.ledger_url,
                    )
                    mark = pacs.log_offset()
                    run = run_extract(site, server.api_url, shlex.split(args.extract_args))
                    ops = pacs.activity(mark)
                    if run.returncode != 0:
                        print(f"  pacsflow extract exit {run.returncode}, output (tail):")
                        print(run.tail(40))
                    counts = status_counts(site)  # while a PostgreSQL ledger still runs
                studies, _ = exported(site.export)
                rate = studies / run.seconds
                print(
                    f"\npacsflow on a {server.name} Prefect server: exit {run.returncode}, "
                    f"{studies}/{n} exported in {run.seconds:.1f} s = {rate:.2f} studies/s; "
                    f"ledger {counts}"
                )
                ok_all = check(
                    "every study exported", studies / n, "= 1", studies == n and run.returncode == 0
                )
                ok_rate = check(
                    "throughput / (k per s), end to end",
                    rate / ideal,
                    ">= 0.9",
                    rate / ideal >= 0.9,
                )
                figure("throughput / bare script (same source, same k)", rate / bare_rate)
                if ops:
                    # What the command's start-up costs: the bare script is timed from its
                    # first request, with its imports done; this is pacsflow timed alike.
                    startup = min(op.started_wall for op in ops) - run.started_wall
                    after = run.started_wall + run.seconds - max(op.ended_wall for op in ops)
                    print(
                        f"  start-up: first request {startup:.1f} s after the command "
                        f"started; exit {after:.1f} s after the last request ended"
                    )
                    figure(
                        "throughput / (k per s), from the first request",
                        studies / (run.seconds - startup) / ideal,
                    )
                ok_source = _print_source(SourceRecord.of(ops, k), k)
                all_ok = all_ok and ok_all and ok_rate and ok_source
    print(f"\nsaturation: {'PASS' if all_ok else 'FAIL'}")
    raise SystemExit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
