"""A seeded sandbox PACS in its own process, served until SIGTERM: a busy archive for benchmarks.

Run as ``python -m bench.sandbox_server --storage DIR --port P --studies N ...``. It seeds N
synthetic studies of M instances (:func:`bench.studies.synthetic_studies`), writes their
manifest, starts a :class:`~pacsflow.sandbox.SandboxPacs` with ``--retrieve-delay`` and
``--activity-log``, and then writes ``--ready`` (JSON: port, studies, instances), which is
what :func:`bench.harness.start_sandbox` waits for.

Its own process, so that the pipeline being measured and the PACS do not share one
Python's GIL, as they would not on a real site.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

from bench.studies import synthetic_studies, write_files, write_manifest
from pacsflow.sandbox import SandboxPacs


def _destination(text: str) -> tuple[str, str, int]:
    """``AE=HOST:PORT`` -> (ae, host, port)."""
    try:
        ae_title, address = text.split("=", 1)
        host, port = address.rsplit(":", 1)
        return ae_title, host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"destination {text!r} must look like AE=HOST:PORT, e.g. PACSFLOW=127.0.0.1:11112"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="Folder for the files.")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port.")
    parser.add_argument("--ae-title", default="SLOWPACS")
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--instances", type=int, default=1, help="Instances per study.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrieve-delay", type=float, default=0.0)
    parser.add_argument("--activity-log", type=Path)
    parser.add_argument(
        "--destination",
        type=_destination,
        action="append",
        default=[],
        help="A C-MOVE destination AE=HOST:PORT (repeatable).",
    )
    parser.add_argument("--manifest", type=Path, required=True, help="Manifest CSV to write.")
    parser.add_argument("--ready", type=Path, required=True, help="Written once serving.")
    args = parser.parse_args(argv)

    rows = write_files(synthetic_studies(args.studies, args.instances, args.seed), args.storage)
    write_manifest(rows, args.manifest)
    pacs = SandboxPacs(
        args.ae_title,
        args.port,
        args.storage,
        {ae: (host, port) for ae, host, port in args.destination},
        retrieve_delay=args.retrieve_delay,
        activity_log=args.activity_log,
    )
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with pacs:
        ready = {"port": pacs.address[1], "studies": len(rows), "instances": pacs.instance_count}
        tmp = args.ready.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.rename(args.ready)  # whole or absent: the harness never reads half a file
        # Also stop when the benchmark that started us died (we were re-parented).
        while not stop.wait(0.5) and os.getppid() == parent:
            pass


if __name__ == "__main__":
    main()
