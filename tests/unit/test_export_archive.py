"""Study zips: the same files give the same bytes, and a zip's end tells its entry count."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import pytest

from pacsflow.config import FilesystemDestinationConfig
from pacsflow.export import FilesystemDestination, archive, make_destination
from pacsflow.export.archive import (
    TAIL_BYTES,
    StudyChanged,
    StudyZip,
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
    # Studies of more than 65,535 instances get a Zip64 end record; make one for 4 entries.
    monkeypatch.setattr(archive, "_COUNT_LIMIT", 2)
    write_study_zip(sorted(study_dir.glob("*.dcm")), tmp_path / "s.zip")
    data = (tmp_path / "s.zip").read_bytes()
    assert data[-12:-10] == struct.pack("<H", 0xFFFF)  # the classic count says "see Zip64"
    assert entries_from_tail(data[-TAIL_BYTES:]) == 4
    assert count_entries(tmp_path / "s.zip") == 4


def test_a_zip_past_4_gb_gets_zip64_sizes_and_offsets(
    study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offsets and sizes from 4 GiB on move to Zip64 extra fields; lower that limit so
    # every entry after the first has a "large" offset, and the 2000-byte files are large.
    monkeypatch.setattr(archive, "_ZIP64_LIMIT", 1000)
    files = sorted(study_dir.glob("*.dcm"))
    write_study_zip(files, tmp_path / "s.zip")
    with zipfile.ZipFile(tmp_path / "s.zip") as zf:
        assert zf.testzip() is None
        assert [zf.read(p.name) for p in files] == [p.read_bytes() for p in files]


def test_the_zip_read_from_any_offset_is_the_built_one(study_dir: Path, tmp_path: Path) -> None:
    # Resuming an upload sends the zip from where the server's copy stops; a zip written
    # to disk (folder destination, zip: true) has the same bytes.
    study_zip = StudyZip(sorted(study_dir.glob("*.dcm")))
    write_study_zip(sorted(study_dir.glob("*.dcm")), tmp_path / "s.zip")
    whole = (tmp_path / "s.zip").read_bytes()
    assert study_zip.size == len(whole)
    assert study_zip.digest == zip_digest(tmp_path / "s.zip")
    for offset in (0, 1, 29, 30, 2040, 4100, len(whole) - TAIL_BYTES, len(whole) - 1):
        with study_zip.open() as reader:
            reader.seek(offset)
            assert reader.read() == whole[offset:]


@pytest.mark.parametrize("new_content", [b"x" * 2000, b"shorter", b"y" * 3000])
def test_a_file_changed_after_the_build_fails_the_transfer(
    study_dir: Path, tmp_path: Path, new_content: bytes
) -> None:
    files = sorted(study_dir.glob("*.dcm"))
    study_zip = StudyZip(files)
    files[1].write_bytes(new_content)
    with pytest.raises(StudyChanged, match="00001.dcm"), study_zip.open() as reader:
        reader.read()


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
