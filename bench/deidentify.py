"""How fast de-identification runs, against the floor of reading and writing the same files.

Run with ``python -m bench.deidentify [--instances N] [--rounds R]``. It writes N copies of
``693_UNCI.dcm`` (pydicom-data, a 512x512 CT of about 512 KB) with distinct UIDs and
realistic PHI to a temporary folder, then times, in the same run and single process:

* the floor: ``pydicom.dcmread`` and ``save_as`` of each file, unchanged, file to file;
* pacsflow: ``read_instance``, the Basic Profile's ``deidentify`` and ``write_instance``;
* pacsflow with the PHI gate, as the pipeline runs it: :func:`deidentify_study` per
  study of 10 instances (study-level identifiers from every header, de-identification
  with cleaning, the gate, the write).

It prints instances per second (one process, so per core) for both and their ratio; the
goal is at least 300 instances/s per core and at least 0.6 of the floor. Each side's best
round counts, so a cold page cache in the first round does not decide the result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.profile import DeidContext, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.deid.study import deidentify_study

TEMPLATE = "693_UNCI.dcm"
KEY = bytes(range(32))


def make_instances(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the template, 10 instances per study, each with its own PHI."""
    path = get_testdata_file(TEMPLATE)
    if path is None:
        raise SystemExit(f"{TEMPLATE} not found: install pydicom-data (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    paths = []
    for index in range(count):
        patient = index // 10
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if index % 10 == 0:
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
        ds.InstanceNumber = index % 10 + 1
        ds.PatientName = f"BENCHMARK^PATIENT{patient:04d}"
        ds.PatientID = f"MRN{patient:07d}"
        ds.PatientBirthDate = f"19{50 + patient % 40:02d}0101"
        ds.AccessionNumber = f"ACC{patient:08d}"
        ds.StudyDate = ds.ContentDate = "20240102"
        ds.InstitutionName = "BENCHMARK GENERAL HOSPITAL"
        ds.ReferringPhysicianName = "HOUSE^GREGORY"
        ds.StudyDescription = f"CT HEAD - BENCHMARK {ds.PatientID}"
        block = ds.private_block(0x0071, "BENCH HOSPITAL", create=True)
        block.add_new(0x01, "LO", ds.PatientID)
        target = folder / f"{index:05d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
    return paths


def _fresh(out: Path) -> Path:
    # Each round writes into a new empty folder, as the pipeline does, so that no round
    # pays for replacing the files of the round before. The disk is synced first, as in
    # bench.destinations: the writeback of the side before (~0.5 GB) otherwise falls into
    # the next side's time, and the sides always run in the same order.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    os.sync()
    return out


def floor(paths: list[Path], out: Path) -> float:
    """Seconds to read and write every file unchanged."""
    out = _fresh(out)
    start = time.perf_counter()
    for path in paths:
        pydicom.dcmread(path).save_as(out / path.name, enforce_file_format=True)
    return time.perf_counter() - start


def deidentify(paths: list[Path], out: Path) -> float:
    """Seconds to read, de-identify with the Basic Profile and write every file."""
    out = _fresh(out)
    profile = build_profile("basic")
    pseudonymizer = Pseudonymizer(KEY)
    start = time.perf_counter()
    for path in paths:
        ds = read_instance(path)
        context = DeidContext(pseudonymizer, pseudonymizer.patient_id(str(ds.PatientID)))
        profile.deidentify(ds, context)
        write_instance(ds, out / path.name)
    return time.perf_counter() - start


def gated(paths: list[Path], out: Path) -> float:
    """Seconds for :func:`deidentify_study` over every study (10 instances each), as the
    pipeline runs it; any quarantine fails the benchmark (the data is clean)."""
    out = _fresh(out)
    profile = build_profile("basic")
    pseudonymizer = Pseudonymizer(KEY)
    studies = [paths[i : i + 10] for i in range(0, len(paths), 10)]
    start = time.perf_counter()
    for number, files in enumerate(studies):
        mrn = f"MRN{number:07d}"
        context = DeidContext(pseudonymizer, pseudonymizer.patient_id(mrn))
        result = deidentify_study(files, profile, context, out / str(number), mrn=mrn)
        if not result.exportable:
            raise AssertionError(f"study {number} quarantined: {result.summary()}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        source, out = root / "in", root / "out"
        source.mkdir()
        paths = make_instances(source, args.instances)
        size_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"{len(paths)} instances of {size_kb:.0f} KB ({TEMPLATE}), single process")
        floor_s = deid_s = gated_s = float("inf")
        for _ in range(args.rounds):  # interleaved, so all see the same machine state
            floor_s = min(floor_s, floor(paths, out))
            deid_s = min(deid_s, deidentify(paths, out))
            gated_s = min(gated_s, gated(paths, out))
    floor_rate, deid_rate = len(paths) / floor_s, len(paths) / deid_s
    gated_rate = len(paths) / gated_s
    print(f"floor (dcmread + save_as):      {floor_rate:8.0f} instances/s per core")
    print(f"pacsflow basic profile:         {deid_rate:8.0f} instances/s per core")
    print(f"ratio to floor:                 {deid_rate / floor_rate:8.2f}")
    print(f"... plus PHI gate (pipeline):   {gated_rate:8.0f} instances/s per core")
    print(f"ratio to floor:                 {gated_rate / floor_rate:8.2f}")
    goals = gated_rate >= 300 and gated_rate / floor_rate >= 0.6
    print("goal, with the gate (>= 300/s and >= 0.6 of floor):", "met" if goals else "NOT met")


if __name__ == "__main__":
    main()
