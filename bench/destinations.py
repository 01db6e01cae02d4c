"""How fast each destination type exports a study, against a floor from the same run.

Run with ``python -m bench.destinations [--instances N]``. It writes two studies of N
copies of ``693_UNCI.dcm`` (pydicom-data, a 512x512 CT of about 512 KB), each with its
own fresh UIDs, starts a real Orthanc (``TCP_NODELAY=1``, DICOMweb plugin) and a
pyftpdlib FTPS server on 127.0.0.1, and times, per type:

* ``dicom``: the floor is dcmtk's ``/usr/bin/storescu`` sending study A to Orthanc;
  pacsflow's C-STORE destination then sends study B (its C-FIND verification included);
* ``dicomweb``: the floor is Orthanc's REST upload (``POST /instances``, one file per
  request, one keep-alive session) of study A to a second Orthanc; pacsflow sends study B
  by STOW-RS in batches, then counts it with QIDO-RS;
* ``ftps``: the floor is a plain ``storbinary`` of study B's files zipped beforehand;
  pacsflow builds the zip, uploads, renames and counts its entries on the server;
* ``filesystem``: the floors are ``shutil.copytree``, and the same with an fsync of each
  file (as durable as the destination); pacsflow copies, fsyncs and renames.

Each floor and its pacsflow run take turns :data:`REPEATS` times, the destination
emptied after each, and the best run of each side is kept (see :func:`best_pair`). It
prints instances/s for both sides and their ratio; the goal is at least 0.7 of each
floor. Absolute figures on a shared machine are noisy; the ratios are the result.
"""

from __future__ import annotations

import argparse
import ftplib
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsflow.config import (
    DicomDestinationConfig,
    DicomwebDestinationConfig,
    FilesystemDestinationConfig,
)
from pacsflow.export import make_destination
from pacsflow.export.archive import write_study_zip
from tests.ftps_server import PASSWORD, USER, start_ftps_server
from tests.servers import free_port, start_orthanc, stop_all

TEMPLATE = "693_UNCI.dcm"
STORESCU = "/usr/bin/storescu"
SETTLE = 3.0  # seconds before each timed run: Orthanc's StableAge (2 s) and then some


def make_study(folder: Path, count: int) -> str:
    """``count`` instances of one study with fresh UIDs; returns its Study Instance UID."""
    path = get_testdata_file(TEMPLATE)
    if path is None:
        raise SystemExit(f"{TEMPLATE} not found: install pydicom-data (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    folder.mkdir(parents=True)
    for index in range(count):
        ds.SOPInstanceUID = generate_uid(prefix="2.25.")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.save_as(folder / f"{index:05d}.dcm", enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes, started on a settled machine.

    Each run writes ~0.5 GB that the kernel flushes to disk after it; without the sync
    that flush would fall into whichever run comes next (always pacsflow's, which runs
    after its floor), and the servers finish their own work on what they just received.
    """
    os.sync()
    time.sleep(SETTLE)
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


REPEATS = 3  # each floor and its pacsflow run, interleaved; the best of each is kept


def best_pair(
    floor: Callable[[], object], ours: Callable[[], object], reset: Callable[[], object]
) -> tuple[float, float]:
    """Best seconds of ``floor`` and of ``ours``, run in turn :data:`REPEATS` times.

    This machine is a VM whose memory the host hands back and forth (``kdamond``): a run
    that needs fresh pages can take 3-5 times as long as the one before it, whichever side
    it is. One pair of runs then says more about the host than about pacsflow (0.35 in one
    run, 0.8-1.0 in the next); the best of several, taken the same way for both sides, is
    what each can do. ``reset`` removes what a run left at the destination.
    """
    floors, ours_s = [], []
    for _ in range(REPEATS):
        floors.append(timed(floor))
        reset()
        ours_s.append(timed(ours))
        reset()
    return min(floors), min(ours_s)


def row(kind: str, count: int, floor_s: float, ours_s: float, floor_name: str) -> str:
    floor, ours = count / floor_s, count / ours_s
    return (
        f"{kind:<10} floor ({floor_name}) {floor:7.1f} inst/s   pacsflow {ours:7.1f} inst/s"
        f"   ratio {ours / floor:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-dest-") as tmp:
        work = Path(tmp)
        study_a, study_b = work / "study-a", work / "study-b"
        make_study(study_a, n)
        uid_b = make_study(study_b, n)
        size_mb = sum(p.stat().st_size for p in study_b.glob("*.dcm")) / 1e6
        print(f"{n} instances, {size_mb:.0f} MB per study, best of {REPEATS} runs per side")
        modalities = {"pacsflow": ("PACSFLOW", "127.0.0.1", free_port())}
        node = start_orthanc(work / "orthanc-dicom", "RESEARCH", modalities)
        archive = start_orthanc(work / "orthanc-web", "ARCHIVE", modalities)
        ftps = start_ftps_server(work / "ftps")
        results = []
        try:
            # dicom
            def storescu() -> None:
                subprocess.run(
                    [STORESCU, "-aet", "PACSFLOW", "-aec", "RESEARCH", "+sd", "-nh"]
                    + ["127.0.0.1", str(node.dicom_port), str(study_a)],
                    check=True,
                    env={"TCP_NODELAY": "1"},
                )
                assert node.instance_count() == n

            dicom = make_destination(
                DicomDestinationConfig(
                    type="dicom", ae_title="RESEARCH", host="127.0.0.1", port=node.dicom_port
                )
            )

            def dicom_export() -> None:
                receipt = dicom.export(study_b, "bench", "PAT", uid_b)
                assert receipt.sent == n and node.instance_count() == n

            floor, ours = best_pair(storescu, dicom_export, node.delete_all_studies)
            results.append(row("dicom", n, floor, ours, "storescu"))

            # dicomweb
            def rest_upload() -> None:
                archive.upload(sorted(study_a.glob("*.dcm")))

            web = make_destination(
                DicomwebDestinationConfig(type="dicomweb", url=f"{archive.base_url}/dicom-web")
            )

            def web_export() -> None:
                receipt = web.export(study_b, "bench", "PAT", uid_b)
                assert receipt.sent == n and archive.instance_count() == n

            floor, ours = best_pair(rest_upload, web_export, archive.delete_all_studies)
            results.append(row("dicomweb", n, floor, ours, "POST /instances"))

            # ftps
            prebuilt = work / "prebuilt.zip"
            write_study_zip(sorted(study_b.glob("*.dcm")), prebuilt)
            context = ssl.create_default_context(cafile=str(ftps.certificate.ca_file))

            def plain_upload() -> None:
                with ftplib.FTP_TLS(context=context) as ftp:
                    ftp.connect("127.0.0.1", ftps.port)
                    ftp.login(USER, PASSWORD)
                    ftp.prot_p()
                    with prebuilt.open("rb") as handle:
                        ftp.storbinary("STOR plain.zip", handle, blocksize=1 << 20)

            drop = make_destination(ftps.destination())

            def ftps_export() -> None:
                receipt = drop.export(study_b, "bench", "PAT", uid_b)
                assert receipt.sent == n and not receipt.already_present

            floor, ours = best_pair(plain_upload, ftps_export, ftps.delete_all_files)
            results.append(row("ftps", n, floor, ours, "plain STOR"))

            # filesystem
            copies = [work / "plain-copy", work / "durable-copy", work / "export"]

            def clear_copies() -> None:
                for folder in copies:
                    shutil.rmtree(folder, ignore_errors=True)

            folder = make_destination(FilesystemDestinationConfig(path=work / "export"))

            def folder_export() -> None:
                receipt = folder.export(study_b, "bench", "PAT", uid_b)
                assert not receipt.already_present

            floor, ours = best_pair(
                lambda: shutil.copytree(study_b, work / "plain-copy"), folder_export, clear_copies
            )
            results.append(row("filesystem", n, floor, ours, "copytree"))

            # The same floor made durable, as the destination is (fsync before the rename).
            def durable_copy() -> None:
                shutil.copytree(study_b, work / "durable-copy")
                for path in (work / "durable-copy").iterdir():
                    with path.open("rb") as handle:
                        os.fsync(handle.fileno())

            floor, ours = best_pair(durable_copy, folder_export, clear_copies)
            results.append(row("filesystem", n, floor, ours, "copytree+fsync"))
        finally:
            ftps.stop()
            stop_all([node, archive])
        print("\n".join(results))


if __name__ == "__main__":
    main()
