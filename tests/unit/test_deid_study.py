"""The study loop parses each file once and keeps it as read between its two passes.

Why it matters: the gathering pass keeps the datasets it read for de-identification. If
looking for identifiers changed them (decoding a raw element stores it decoded, and it is
then written re-encoded), the output would depend on whether a study fitted in
:data:`~pacsflow.deid.study.KEPT_HEADERS`; it must not.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement

import pacsflow.deid.study as study
from pacsflow.deid.files import read_instance
from pacsflow.deid.profile import DeidContext, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.sandbox.synthetic import make_study, write_study

BASIC = build_profile("basic")
PSEUDO = Pseudonymizer(bytes(range(32)))
MRN = "MRN0000042"


def _files(tmp_path: Path) -> list[Path]:
    patient = {"mrn": MRN, "patient_name": "NGUYEN^AN", "birth_date": dt.date(1961, 3, 12)}
    study = {"accession": "ACC42", "study_date": dt.date(2022, 5, 6), "sex": "F"}
    datasets = make_study(**patient, **study, n_series=2, n_instances=2)
    return write_study(datasets, tmp_path / "in")


def _bytes(ds) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)  # as write_instance writes it
    return out.getvalue()


def _raw(ds, prefix: str = "") -> set[str]:  # type: ignore[no-untyped-def]
    """Paths of the elements still raw (undecoded), sequence items included."""
    paths = set()
    for tag in ds.keys():  # noqa: SIM118 - tags: iterating decodes
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement):
            paths.add(f"{prefix}{tag:08X}")
        elif elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                paths |= _raw(item, f"{prefix}{tag:08X}[{index}].")
    return paths


def test_gathering_leaves_the_kept_datasets_as_read(tmp_path):
    files = _files(tmp_path) + [
        Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")
    ]
    kept: list = []
    ids = study.gather_identifiers(files, BASIC, mrn=MRN, kept=kept)
    assert ids.name_parts and ids.uids  # it did look
    assert len(kept) == len(files)
    for path, ds in zip(files, kept, strict=True):
        fresh = read_instance(path)
        assert _raw(ds) == _raw(fresh), path.name  # nothing decoded and stored
        assert _bytes(ds) == _bytes(fresh), path.name


def _run(files: list[Path], out: Path) -> dict[str, bytes]:
    context = DeidContext(PSEUDO, PSEUDO.patient_id(MRN))
    result = study.deidentify_study(files, BASIC, context, out, mrn=MRN)
    assert result.exportable, result.summary()
    return {p.name: p.read_bytes() for p in result.written}


def test_a_study_larger_than_the_kept_headers_gives_the_same_files(tmp_path, monkeypatch):
    files = _files(tmp_path)
    everything_kept = _run(files, tmp_path / "kept")
    monkeypatch.setattr(study, "KEPT_HEADERS", 2)
    assert _run(files, tmp_path / "read-again") == everything_kept
    assert len(everything_kept) == len(files)


@pytest.mark.parametrize("kept_headers", [0, 1000])
def test_each_file_is_read_once_when_kept(tmp_path, monkeypatch, kept_headers):
    files = _files(tmp_path)
    reads: list[Path] = []

    def counting(path):  # type: ignore[no-untyped-def]
        reads.append(Path(path))
        return read_instance(path)

    monkeypatch.setattr(study, "read_instance", counting)
    monkeypatch.setattr(study, "KEPT_HEADERS", kept_headers)
    _run(files, tmp_path / "out")
    assert len(reads) == (len(files) if kept_headers else 2 * len(files))
