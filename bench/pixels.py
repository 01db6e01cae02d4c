"""What the pixel PHI policy costs: without OCR on CT, and OCR per image where it runs.

Run with ``python -m bench.pixels [--instances N] [--rounds R] [--ocr-images K]``. In the
same run and single process it times, on N copies of ``693_UNCI.dcm`` (512x512 CT,
~512 KB, from :mod:`bench.deidentify`):

* the floor: ``dcmread`` and ``save_as`` unchanged;
* the pipeline's per-instance work without the pixel policy: read, Basic Profile, PHI
  gate, write;
* the same with ``inspect_instance`` under the default ``quarantine`` policy first (CT
  is not OCR'd: this is the policy's header and bulk-data cost);

and then OCR alone, per image, on K synthetic 640x480 ultrasound frames with burned-in
text (as ``tests/pixel_phantoms.py`` draws them) and K CT slices. OCR is reported apart
and as a multiple of one instance's pipeline time, because it is paid only on images the
policy sends to OCR (ultrasound claiming BurnedInAnnotation NO, images masked under
``clean``, or every image with ``ocr_every_image``).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import pydicom

from bench.deidentify import KEY, TEMPLATE, _fresh, floor, make_instances
from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.phi_gate import find_leaks, identifiers_from
from pacsflow.deid.pixels import PixelPolicy, inspect_instance
from pacsflow.deid.pixels.images import frames_for_ocr
from pacsflow.deid.pixels.ocr import find_text
from pacsflow.deid.profile import DeidContext, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from tests.pixel_phantoms import draw_text, fan


def pipeline(paths: list[Path], out: Path, policy: PixelPolicy | None) -> float:
    """Seconds for read, [pixel policy], Basic Profile, PHI gate, write, per file."""
    out = _fresh(out)
    profile = build_profile("basic")
    pseudonymizer = Pseudonymizer(KEY)
    allows = functools.cache(profile.allows)
    start = time.perf_counter()
    for path in paths:
        ds = read_instance(path)
        originals = identifiers_from(ds)
        if policy is not None and not inspect_instance(ds, policy).exportable:
            raise AssertionError(f"the pixel policy held {path.name}, a CT without text")
        context = DeidContext(pseudonymizer, pseudonymizer.patient_id(str(ds.PatientID)))
        profile.deidentify(ds, context)
        if find_leaks(ds, originals, allows=allows):
            raise AssertionError(f"the PHI gate flagged {path.name}")
        write_instance(ds, out / path.name)
    return time.perf_counter() - start


def ocr_seconds(pictures: list) -> tuple[float, int]:
    """Mean seconds per picture, and how many of them OCR found text in."""
    start = time.perf_counter()
    found = sum(bool(find_text(picture, 50).words) for picture in pictures)
    return (time.perf_counter() - start) / len(pictures), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ocr-images", type=int, default=5)
    args = parser.parse_args()
    policy = PixelPolicy()
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-") as tmp:
        root = Path(tmp)
        source, out = root / "in", root / "out"
        source.mkdir()
        paths = make_instances(source, args.instances)
        print(f"{len(paths)} instances ({TEMPLATE}), single process, best of {args.rounds}")
        floor_s = plain_s = pixel_s = float("inf")
        for _ in range(args.rounds):  # interleaved, so all see the same machine state
            floor_s = min(floor_s, floor(paths, out))
            plain_s = min(plain_s, pipeline(paths, out, None))
            pixel_s = min(pixel_s, pipeline(paths, out, policy))
        ct = pydicom.dcmread(paths[0])
        ct_picture = next(frames_for_ocr(ct, 1))[1]
    n = len(paths)
    print(f"floor (dcmread + save_as):            {n / floor_s:8.0f} instances/s per core")
    print(f"pipeline without pixel policy:        {n / plain_s:8.0f} instances/s per core")
    print(f"pipeline with pixel policy (no OCR):  {n / pixel_s:8.0f} instances/s per core")
    print(f"  ratio with/without:                 {plain_s / pixel_s:8.2f}")
    print(f"  ratio with policy to floor:         {floor_s / pixel_s:8.2f}")

    per_instance = pixel_s / n
    us = [draw_text(fan(seed), f"DOE^JANE {seed:08d}", (12, 10)) for seed in range(args.ocr_images)]
    for name, pictures in (("US 640x480 with text", us), ("CT 512x512", [ct_picture] * len(us))):
        seconds, found = ocr_seconds(pictures)
        print(
            f"OCR {name:22s} {seconds * 1000:8.0f} ms/image = {seconds / per_instance:6.0f}x "
            f"one instance's pipeline time (text found in {found}/{len(pictures)})"
        )


if __name__ == "__main__":
    main()
