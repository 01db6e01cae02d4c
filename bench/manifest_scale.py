"""How long a 100,000-row manifest takes to validate and ingest, and at what peak memory.

Run with ``python -m bench.manifest_scale [--rows N] [--rerun-rows M] [--rounds R]``.
It writes a PIXL-shaped CSV manifest of N rows (default 100,000; MRNs and accession
numbers with leading zeros, every other row with a study UID) and, on a SQLite ledger in
a temporary file and on a PostgreSQL ledger (a throw-away cluster from ``tests.servers``, skipped
when PostgreSQL is not installed), measures each in a fresh child process:

* pacsflow: ``read_manifest`` (read and validate) and ``ingest_manifest`` into an empty
  ledger, timed apart, and the child's peak RSS;
* the floor, same file, same ledger schema: ``pd.read_csv`` with the same options, and a
  plain DBAPI ``executemany`` of the same rows in one transaction;
* a rerun: the first M rows (default 10,000) read, validated and ingested again into a
  ledger that has them all exported, then the studies still to do listed (none); its
  floor is ``pd.read_csv`` of that file plus one SELECT of the project's keys.

Every figure is printed beside its goal (issue 6: read+ingest <= 10 s and peak RSS <=
500 MB; a rerun of a 10,000-study project <= 15 s, of which this is the manifest part)
and its ratio to the floor measured in the same run; with ``--rounds R`` each time is
the best of R fresh runs. The children check what they did: every row in the ledger
after an ingest, nothing added and nothing to do after a rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from pacsflow.manifest import KNOWN_COLUMNS

PROJECT = "manifest-scale"
READ_OPTIONS = {"dtype": object, "keep_default_na": False, "skipinitialspace": True}
GOAL_SECONDS, GOAL_RSS_MB, GOAL_RERUN_SECONDS = 10.0, 500.0, 15.0
#: PIXL's export shape: every known column but the optional series_uid.
COLUMNS = tuple(c for c in KNOWN_COLUMNS if c != "series_uid")


# -- the manifest ----------------------------------------------------------------------


def write_manifest(path: Path, rows: int) -> None:
    """``rows`` distinct studies, two per patient, over ten years of study dates."""
    rng = random.Random(6)
    first_day = dt.date(2015, 1, 1)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for n in range(rows):
            writer.writerow(
                (
                    str(100_000 + n),
                    f"{n // 2:08d}",  # MRN: leading zeros that must survive
                    f"{n:010d}",
                    "Manifest Scale",
                    "2024-05-01 10:00:00",
                    (first_day + dt.timedelta(days=rng.randrange(3650))).isoformat(),
                    f"1.2.826.0.1.3680043.8.498.{n + 1}" if n % 2 else "",
                    f"P{n:07d}",
                )
            )


# -- what each child process measures --------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _warmup(manifest: Path) -> Path:
    """A small manifest read first, so neither side's timing holds first-call imports."""
    return manifest.with_name("warmup.csv")


def _fresh_engine(url: str):
    from pacsflow.ledger import make_engine, migrate

    engine = make_engine(url)
    migrate(engine)
    return engine


def _count(engine) -> int:
    from sqlalchemy import func, select

    from pacsflow.ledger import Study

    with engine.connect() as connection:
        return connection.scalar(
            select(func.count()).select_from(Study).where(Study.project == PROJECT)
        )


def child_pacsflow(manifest: Path, url: str) -> dict[str, float]:
    """read_manifest, then ingest_manifest into an empty ledger."""
    from pacsflow.ledger import repository, session_factory
    from pacsflow.manifest import read_manifest

    engine = _fresh_engine(url)
    read_manifest(_warmup(manifest), PROJECT)
    start = time.perf_counter()
    rows = read_manifest(manifest, PROJECT)
    read = time.perf_counter() - start
    if not rows[0].mrn.startswith("0"):
        raise SystemExit("leading zeros of the MRN were lost")
    start = time.perf_counter()
    with session_factory(engine)() as session:
        result = repository.ingest_manifest(session, PROJECT, rows)
    ingest = time.perf_counter() - start
    if result.added != len(rows) or _count(engine) != len(rows):
        raise SystemExit(f"ingested {result.added} of {len(rows)} rows")
    return {"read": read, "ingest": ingest, "rows": len(rows), "rss": _peak_rss_mb()}


def child_floor(manifest: Path, url: str) -> dict[str, float]:
    """pd.read_csv, then one plain executemany of the same rows in one transaction."""
    import pandas as pd

    engine = _fresh_engine(url)
    pd.read_csv(_warmup(manifest), **READ_OPTIONS)
    start = time.perf_counter()
    frame = pd.read_csv(manifest, **READ_OPTIONS)
    read = time.perf_counter() - start
    now = dt.datetime.now(dt.UTC)
    params = [
        (
            PROJECT,
            uuid.uuid4().hex,
            mrn,
            accession,
            dt.date.fromisoformat(study_date),
            uid or None,
            participant,
            procedure,
            "pending",
            0,
            now,
            now,
        )
        for procedure, mrn, accession, study_date, uid, participant in zip(
            frame["procedure_id"],
            frame["mrn"],
            frame["accession_number"],
            frame["study_date"],
            frame["study_uid"],
            frame["participant_id"],
            strict=True,
        )
    ]
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    sql = (
        "INSERT INTO studies (project, ref, mrn, accession_number, study_date, study_uid, "
        "participant_id, procedure_id, status, attempts, created_at, updated_at) "
        f"VALUES ({', '.join([mark] * 12)})"
    )
    connection = engine.raw_connection()
    try:
        start = time.perf_counter()
        cursor = connection.cursor()
        cursor.executemany(sql, params)
        connection.commit()
        ingest = time.perf_counter() - start
    finally:
        connection.close()
    if _count(engine) != len(params):
        raise SystemExit("the floor's executemany lost rows")
    return {"read": read, "ingest": ingest, "rows": len(params), "rss": _peak_rss_mb()}


def _exported_ledger(manifest: Path, url: str):
    """A ledger holding every study of ``manifest``, all exported (not timed)."""
    from sqlalchemy import update

    from pacsflow.ledger import Study, StudyStatus, repository, session_factory
    from pacsflow.manifest import read_manifest

    engine = _fresh_engine(url)
    with session_factory(engine)() as session:
        repository.ingest_manifest(session, PROJECT, read_manifest(manifest, PROJECT))
        session.execute(
            update(Study).where(Study.project == PROJECT).values(status=StudyStatus.EXPORTED)
        )
        session.commit()
    return engine


def child_rerun(manifest: Path, url: str) -> dict[str, float]:
    """The manifest part of a rerun: read, validate, ingest nothing, find nothing to do."""
    from pacsflow.ledger import repository, session_factory
    from pacsflow.manifest import read_manifest

    engine = _exported_ledger(manifest, url)
    read_manifest(_warmup(manifest), PROJECT)
    start = time.perf_counter()
    rows = read_manifest(manifest, PROJECT)
    with session_factory(engine)() as session:
        result = repository.ingest_manifest(session, PROJECT, rows)
        todo = repository.studies_to_process(session, PROJECT)
    seconds = time.perf_counter() - start
    if (result.added, result.already_known, len(todo)) != (0, len(rows), 0):
        raise SystemExit(f"rerun added {result.added} and found {len(todo)} to do")
    return {"rerun": seconds, "rows": len(rows), "rss": _peak_rss_mb()}


def child_rerun_floor(manifest: Path, url: str) -> dict[str, float]:
    """pd.read_csv of the rerun's file and one SELECT of the project's keys."""
    import pandas as pd
    from sqlalchemy import text

    engine = _exported_ledger(manifest, url)
    pd.read_csv(_warmup(manifest), **READ_OPTIONS)
    start = time.perf_counter()
    frame = pd.read_csv(manifest, **READ_OPTIONS)
    with engine.connect() as connection:
        keys = connection.execute(
            text("SELECT study_uid, mrn, accession_number FROM studies WHERE project = :p"),
            {"p": PROJECT},
        ).all()
    seconds = time.perf_counter() - start
    if len(keys) != len(frame):
        raise SystemExit("the rerun floor found other rows than the manifest's")
    return {"rerun": seconds, "rows": len(frame), "rss": _peak_rss_mb()}


CHILDREN = {
    "pacsflow": child_pacsflow,
    "floor": child_floor,
    "rerun": child_rerun,
    "rerun-floor": child_rerun_floor,
}


def _measure(mode: str, manifest: Path, url: str) -> dict[str, float]:
    """Run one child in a fresh process, so each peak RSS is its own."""
    root = Path(__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-m", "bench.manifest_scale", "--child", mode, str(manifest), url],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each time's best round (a busy machine only ever makes one slower) and the
    highest peak RSS."""
    return {
        key: max(run[key] for run in runs) if key == "rss" else min(run[key] for run in runs)
        for key in runs[0]
    }


# -- the run ---------------------------------------------------------------------------


@contextlib.contextmanager
def ledgers(root: Path) -> Iterator[dict[str, object]]:
    """Per backend, a function giving the URL of a fresh, empty ledger database."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tests.servers import postgres_available, start_postgres

    counter = iter(range(1_000))
    backends: dict[str, object] = {
        "SQLite": lambda: f"sqlite:///{root / f'ledger-{next(counter)}.db'}",
    }
    if not postgres_available():
        print("PostgreSQL is not installed: measuring SQLite only")
        yield backends
        return
    postgres = start_postgres(root / "pg")
    try:
        backends["PostgreSQL"] = postgres.create_database
        yield backends
    finally:
        postgres.stop()


def _verdict(value: float, goal: float) -> str:
    return "met" if value <= goal else "MISSED"


def report(backend: str, ours: dict, floor: dict, rerun: dict, rerun_floor: dict) -> None:
    total = ours["read"] + ours["ingest"]
    lines = [
        ("read + validate", ours["read"], floor["read"], "s", ""),
        ("ingest", ours["ingest"], floor["ingest"], "s", ""),
        (
            "read + ingest",
            total,
            floor["read"] + floor["ingest"],
            "s",
            f"goal <= {GOAL_SECONDS:.0f} s: {_verdict(total, GOAL_SECONDS)}",
        ),
        (
            "peak RSS",
            ours["rss"],
            floor["rss"],
            "MB",
            f"goal <= {GOAL_RSS_MB:.0f} MB: {_verdict(ours['rss'], GOAL_RSS_MB)}",
        ),
        (
            f"rerun, {rerun['rows']:,} rows",
            rerun["rerun"],
            rerun_floor["rerun"],
            "s",
            f"manifest part of a rerun, whole rerun goal <= {GOAL_RERUN_SECONDS:.0f} s: "
            f"{_verdict(rerun['rerun'], GOAL_RERUN_SECONDS)}",
        ),
    ]
    print(f"\n{backend} ledger, {ours['rows']:,} rows")
    print(f"  {'':22s} {'pacsflow':>10s} {'floor':>10s} {'ratio':>7s}")
    for name, value, base, unit, goal in lines:
        print(
            f"  {name:22s} {value:8.2f} {unit:2s}{base:8.2f} {unit:2s}{value / base:6.1f}x   {goal}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rerun-rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1, help="best of this many runs each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        manifest, rerun_manifest = root / "manifest.csv", root / "rerun.csv"
        write_manifest(manifest, args.rows)
        write_manifest(rerun_manifest, args.rerun_rows)
        write_manifest(_warmup(manifest), 10)
        print(
            f"manifest of {args.rows:,} rows ({manifest.stat().st_size / 1e6:.1f} MB); "
            "floor: pd.read_csv and a plain DBAPI executemany of the same rows"
        )
        with ledgers(root) as backends:
            for backend, fresh_url in backends.items():

                def best(mode: str, path: Path, fresh_url=fresh_url) -> dict[str, float]:
                    return _best([_measure(mode, path, fresh_url()) for _ in range(args.rounds)])

                report(
                    backend,
                    best("pacsflow", manifest),
                    best("floor", manifest),
                    best("rerun", rerun_manifest),
                    best("rerun-floor", rerun_manifest),
                )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _mode, _manifest, _url = sys.argv[2:]
        print(json.dumps(CHILDREN[_mode](Path(_manifest), _url)))
    else:
        main()
