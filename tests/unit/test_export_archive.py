"""Study zips: the same files give the same bytes, and a zip's end tells its entry count."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import pytest

from pacsflow.config import FilesystemDestinationConfig
from pacsflow.export import FilesystemDestination, make_destination
from pacsflow.export.archive import (
    TAIL_BYTES,
    count_entries,
    entries_from_tail,
    write_study_zip,
    zip_digest,
)


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "deid" / "ref"
    folder.mkdir(parents=True)
    for n in range(4):
        (folder / f"{n:05d}.dcm").write_bytes(os.urandom(2000))
    return folder


def test_building_twice_gives_the_same_bytes_and_digest(study_dir: Path, tmp_path: Path) -> None:
    files = sorted(study_dir.glob("*.dcm"))
    write_study_zip(files, tmp_path / "a.zip")
    os.utime(files[0], (0, 0))  # a changed mtime must not change the zip
    write_study_zip(list(reversed(files)), tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert zip_digest(tmp_path / "a.zip") == zip_digest(tmp_path / "b.zip")

    files[0].write_bytes(b"other content")
    write_study_zip(files, tmp_path / "c.zip")
    assert zip_digest(tmp_path / "c.zip") != zip_digest(tmp_path / "a.zip")


def test_the_zip_holds_each_file_by_name(study_dir: Path, tmp_path: Path) -> None:
    files = sorted(study_dir.glob("*.dcm"))
    assert write_study_zip(files, tmp_path / "s.zip") == 4
    with zipfile.ZipFile(tmp_path / "s.zip") as zf:
        assert zf.namelist() == [p.name for p in files]
        assert zf.read("00002.dcm") == files[2].read_bytes()
        assert zf.testzip() is None


def test_entry_count_from_the_last_bytes(study_dir: Path, tmp_path: Path) -> None:
    write_study_zip(sorted(study_dir.glob("*.dcm")), tmp_path / "s.zip")
    data = (tmp_path / "s.zip").read_bytes()
    assert entries_from_tail(data[-TAIL_BYTES:]) == 4
    assert entries_from_tail(data[-22:]) == 4
    assert entries_from_tail(data[:-1][-TAIL_BYTES:]) is None  # a cut-off upload
    assert entries_from_tail(b"not a zip" * 20) is None


def test_entry_count_of_a_zip64_end(
    study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Studies of more than 65,535 instances get a Zip64 end record; make zipfile write one
    # for 4 entries, and mark the classic count as "see Zip64" as a big zip has it.
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    write_study_zip(sorted(study_dir.glob("*.dcm")), tmp_path / "s.zip")
    data = bytearray((tmp_path / "s.zip").read_bytes())
    data[-12:-10] = struct.pack("<H", 0xFFFF)
    assert entries_from_tail(bytes(data[-TAIL_BYTES:])) == 4


def test_filesystem_zip_appears_whole_once(study_dir: Path, tmp_path: Path) -> None:
    config = FilesystemDestinationConfig(path=tmp_path / "export", zip=True)
    destination = make_destination(config)
    assert isinstance(destination, FilesystemDestination)

    first = destination.export(study_dir, "proj", "PAT1", "2.25.7")
    final = tmp_path / "export" / "proj" / "PAT1" / "2.25.7.zip"
    assert first.location == str(final)
    assert (first.instances, first.already_present, first.sent) == (4, False, 4)
    assert count_entries(final) == 4
    assert sorted(p.name for p in (tmp_path / "export" / "proj").iterdir()) == ["PAT1"]

    before = final.read_bytes()
    (study_dir / "00009.dcm").write_bytes(b"late")
    again = destination.export(study_dir, "proj", "PAT1", "2.25.7")
    assert (again.instances, again.already_present, again.sent) == (4, True, 0)
    assert final.read_bytes() == before


def test_filesystem_zip_leftover_partial_is_replaced(study_dir: Path, tmp_path: Path) -> None:
    partial_root = tmp_path / "export" / "proj" / ".partial"
    partial_root.mkdir(parents=True)
    (partial_root / "2.25.7.dead.zip").write_bytes(b"half a zip")
    destination = FilesystemDestination(
        FilesystemDestinationConfig(path=tmp_path / "export", zip=True)
    )
    receipt = destination.export(study_dir, "proj", "PAT1", "2.25.7")
    assert receipt.instances == 4
    assert not partial_root.exists()


def test_send_file_replaces_an_older_copy(tmp_path: Path) -> None:
    destination = FilesystemDestination(FilesystemDestinationConfig(path=tmp_path / "export"))
    source = tmp_path / "linker.parquet"
    source.write_bytes(b"one")
    where = destination.send_file(source, "proj")
    source.write_bytes(b"two")
    assert destination.send_file(source, "proj") == where
    assert Path(where).read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "export" / "proj").iterdir()] == ["linker.parquet"]
