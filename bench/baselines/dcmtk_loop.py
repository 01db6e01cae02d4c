"""What sites run today: a sequential shell loop of dcmtk's ``findscu`` and ``movescu``.

Per manifest row, one after another: ``findscu`` at study level by PatientID and
AccessionNumber (its responses printed with ``+sr``, the StudyInstanceUID read from them)
and ``movescu`` of that study to a standing ``storescp``. No de-identification.

``storescp`` receives rather than ``movescu +P``: movescu polls for the C-MOVE's incoming
association only between one-second waits on its own, which measured ~0.85 s per study
against a source that answers at once; a shell loop that paid that would flatter pacsflow.
dcmtk is called by absolute path (the venv's pynetdicom installs scripts with the same
names) and with ``TCP_NODELAY=1`` (field notes: Nagle costs ~40 ms per round trip).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FINDSCU = "/usr/bin/findscu"
MOVESCU = "/usr/bin/movescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
_STUDY_UID = re.compile(rb"\(0020,000d\) UI \[([0-9.]+)[ \x00]*\]")  # values may be padded


@dataclass(frozen=True)
class LoopResult:
    seconds: float
    studies: int
    not_found: int


def dcmtk_installed() -> bool:
    return all(os.access(tool, os.X_OK) for tool in (FINDSCU, MOVESCU, STORESCP, ECHOSCU))


def _env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def _run(command: list[str]) -> bytes:
    done = subprocess.run(command, capture_output=True, env=_env(), timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} exited with {done.returncode}: "
            f"{(done.stdout + done.stderr).decode(errors='replace')[-800:]}"
        )
    return done.stdout + done.stderr


def _wait_echo(ae_title: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = [ECHOSCU, "-aec", ae_title, "127.0.0.1", str(port)]
        if subprocess.run(probe, capture_output=True, env=_env(), check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"storescp did not answer C-ECHO on port {port} within {timeout} s")


def run_dcmtk_loop(
    rows: Sequence[dict[str, str]],
    source: tuple[str, str, int],
    *,
    out_dir: Path,
    store_port: int,
    ae_title: str = "LOOP",
) -> LoopResult:
    """Find and move every row in turn; timed from the first findscu to the last movescu.

    ``source`` is (AE title, host, port); it must know ``ae_title`` at ``store_port`` as a
    C-MOVE destination.
    """
    source_ae, host, port = source
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir.parent / "storescp.log", "ab")  # noqa: SIM115 - closed below
    storescp = subprocess.Popen(
        [STORESCP, "-aet", ae_title, "-od", str(out_dir), str(store_port)],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_echo(ae_title, store_port)
        common = ["-S", "-aet", ae_title, "-aec", source_ae]
        studies = not_found = 0
        started = time.monotonic()
        for row in rows:
            found = _run(
                [
                    FINDSCU,
                    *common,
                    "+sr",
                    *("-k", "QueryRetrieveLevel=STUDY"),
                    *("-k", f"PatientID={row['mrn']}"),
                    *("-k", f"AccessionNumber={row['accession_number']}"),
                    *("-k", "StudyInstanceUID"),
                    host,
                    str(port),
                ]
            )
            match = _STUDY_UID.search(found)
            if match is None:
                not_found += 1
                continue
            _run(
                [
                    MOVESCU,
                    *common,
                    *("-aem", ae_title),
                    *("-k", "QueryRetrieveLevel=STUDY"),
                    *("-k", f"StudyInstanceUID={match.group(1).decode()}"),
                    host,
                    str(port),
                ]
            )
            studies += 1
        seconds = time.monotonic() - started
    finally:
        storescp.terminate()
        storescp.wait(timeout=10)
        log.close()
    return LoopResult(seconds, studies, not_found)
