"""What per-source concurrency limits cost, on a SQLite- and a PostgreSQL-backed server.

Runs the same small flow (24 tasks of 50 ms on 4 worker threads) untagged, tagged with
no limit, under a tag concurrency limit of 4 (what ``source:<name>`` does) and under a
global concurrency limit of 4 (what ``max_images`` does), against a fresh Prefect server
on each backend, and prints each time with its ratio to the untagged run on the same
server. Needs PostgreSQL binaries (Debian ``postgresql``). Run: ``python -m bench.source_limits``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS, SECONDS, WORKERS, LIMIT = 24, 0.05, 4, 4
MODES = ("untagged", "tag, no limit", "tag limit", "global limit")


def _run_modes() -> None:
    """Child process: PREFECT_API_URL is set before prefect is imported."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def work(i: int) -> int:
        time.sleep(SECONDS)
        return i

    @task
    def work_global(i: int) -> int:
        with concurrency("bench-global", occupy=1, strict=True):
            time.sleep(SECONDS)
        return i

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="bench:limited", concurrency_limit=LIMIT)
        client.upsert_global_concurrency_limit_by_name("bench-global", LIMIT)

    def submit(mode: str, i: int):
        if mode == "tag, no limit":
            return work.with_options(tags=["bench:free"]).submit(i)
        if mode == "tag limit":
            return work.with_options(tags=["bench:limited"]).submit(i)
        if mode == "global limit":
            return work_global.submit(i)
        return work.submit(i)

    for mode in MODES:

        @flow(task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
        def bench_flow(mode: str = mode) -> None:
            for future in [submit(mode, i) for i in range(TASKS)]:
                future.result()

        start = time.perf_counter()
        bench_flow()
        print(f"{mode}\t{time.perf_counter() - start:.2f}", flush=True)


def _measure(api_url: str) -> dict[str, float]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-m", "bench.source_limits", "--child"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        line.split("\t")[0]: float(line.split("\t")[1]) for line in out.splitlines() if "\t" in line
    }


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tests.servers import postgres_available, start_postgres, start_prefect_server

    print(f"{TASKS} tasks x {SECONDS * 1000:.0f} ms, {WORKERS} workers, limits of {LIMIT}")
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        results = {}
        server = start_prefect_server(root / "sqlite")
        try:
            results["SQLite"] = _measure(server.api_url)
        finally:
            server.stop()
        if postgres_available():
            postgres = start_postgres(root / "pg")
            try:
                url = postgres.create_database("prefect", driver="asyncpg")
                server = start_prefect_server(root / "postgres", url)
                try:
                    results["PostgreSQL"] = _measure(server.api_url)
                finally:
                    server.stop()
            finally:
                postgres.stop()
    for backend, times in results.items():
        base = times["untagged"]
        print(f"\n{backend} server:")
        for mode in MODES:
            print(f"  {mode:14s} {times[mode]:6.2f} s   {times[mode] / base:5.1f}x untagged")


if __name__ == "__main__":
    if "--child" in sys.argv:
        _run_modes()
    else:
        main()
