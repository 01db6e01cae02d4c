"""Reading with pixel data left in the file writes the same bytes as reading it whole.

Why: :func:`~pacsflow.deid.files.read_instance` defers values over
:data:`~pacsflow.deid.files.DEFER_SIZE` so that a study's headers can be kept between the
identifier pass and de-identification (:mod:`pacsflow.deid.study`); pydicom reads them
back when the instance is written. The output must not depend on that, over all of
pydicom's test files (transfer syntaxes, implicit and explicit VR, big endian,
encapsulated and odd-length pixel data, sequences, private data, character sets), as
read and after the Basic Profile.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.dataelem import RawDataElement

from pacsflow.deid.files import SourceChanged, read_instance, write_instance
from pacsflow.deid.profile import DeidContext, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer

BASIC = build_profile("basic")
CONTEXT = DeidContext(Pseudonymizer(bytes(range(32))), "PSEUDO01")
# Not get_testdata_files: it tries to download the files no package holds (slow, online).
FILES = sorted(
    [str(p) for p in (Path(DATA_ROOT) / "test_files").glob("*.dcm")]
    + [p for source in external_data_sources().values() for p in source.get_paths("*.dcm", 0)]
    + get_charset_files("*.dcm")
)
PIXEL_DATA = 0x7FE00010


def _outcome(read, path: str, out: Path, deidentify: bool) -> bytes | str:
    try:
        ds = read(path)
        if deidentify:
            BASIC.deidentify(ds, CONTEXT)
        return write_instance(ds, out).read_bytes()
    except Exception as exc:  # noqa: BLE001 - the error's type is the outcome compared
        return type(exc).__name__


@pytest.mark.parametrize("path", FILES, ids=[Path(f).name for f in FILES])
def test_deferred_reading_writes_the_same_bytes(path, tmp_path):
    for deidentify in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            whole = _outcome(pydicom.dcmread, path, tmp_path / "whole.dcm", deidentify)
            deferred = _outcome(read_instance, path, tmp_path / "deferred.dcm", deidentify)
        assert deferred == whole, (Path(path).name, deidentify)


def _large_ct(tmp_path: Path) -> Path:
    copy = tmp_path / "in.dcm"
    shutil.copyfile(get_testdata_file("CT_small.dcm"), copy)
    return copy


def test_pixel_data_stays_in_the_file_until_written(tmp_path, monkeypatch):
    monkeypatch.setattr("pacsflow.deid.files.DEFER_SIZE", 16)
    source = _large_ct(tmp_path)
    ds = read_instance(source)
    BASIC.deidentify(ds, CONTEXT)
    pixels = ds.get_item(PIXEL_DATA, keep_deferred=True)
    assert isinstance(pixels, RawDataElement) and pixels.value is None  # never loaded
    written = pydicom.dcmread(write_instance(ds, tmp_path / "out" / "0.dcm"))
    assert written.PixelData == pydicom.dcmread(source).PixelData
    assert written.PatientName == "PSEUDO01"


def test_a_source_changed_since_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("pacsflow.deid.files.DEFER_SIZE", 16)
    source = _large_ct(tmp_path)
    ds = read_instance(source)
    stat = source.stat()
    shutil.copyfile(get_testdata_file("MR_small.dcm"), source)  # another image, same name
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(SourceChanged):
        write_instance(ds, tmp_path / "out" / "0.dcm")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_source_changed_after_everything_was_loaded_does_not_matter(tmp_path):
    source = _large_ct(tmp_path)
    ds = read_instance(source)  # CT_small's pixel data is under DEFER_SIZE: nothing deferred
    os.utime(source, (1_000_000, 1_000_000))
    assert pydicom.dcmread(write_instance(ds, tmp_path / "out" / "0.dcm")).PixelData


def test_a_value_longer_than_one_copied_chunk_is_written_whole(tmp_path, monkeypatch):
    # pydicom copies a streamed value chunk by chunk; with STREAM_CHUNK (1 MiB) most
    # pixel data fits one chunk, so make CT_small's 32 KB take hundreds of odd-sized ones.
    from pydicom import config

    monkeypatch.setattr("pacsflow.deid.files.DEFER_SIZE", 16)
    monkeypatch.setattr("pacsflow.deid.files.STREAM_CHUNK", 100)
    monkeypatch.setattr(config.settings, "_buffered_read_size", 10)
    source = _large_ct(tmp_path)
    ds = read_instance(source)
    BASIC.deidentify(ds, CONTEXT)
    written = write_instance(ds, tmp_path / "out" / "0.dcm")
    assert config.settings.buffered_read_size == 100
    whole = pydicom.dcmread(source)
    BASIC.deidentify(whole, CONTEXT)
    assert written.read_bytes() == write_instance(whole, tmp_path / "whole.dcm").read_bytes()
