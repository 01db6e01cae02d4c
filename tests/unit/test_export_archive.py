"""Study zips: the same files give the same bytes, and a zip's end tells its entry count."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from pacsflow.config import FilesystemDestinationConfig
from pacsflow.export import FilesystemDestination, make_destination
from pacsflow.export.archive import (
    TAIL_BYTES,
    SkippingWriter,
    StudyChanged,
    count_entries,
    ends_whole,
    entries_from_tail,
    study_digest,
    write_study_zip,
)


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "deid" / "ref"
    folder.mkdir(parents=True)
    for n in range(4):
        (folder / f"{n:05d}.dcm").write_bytes(os.urandom(2000))
    return folder


def streamed(files: list[Path], skip: int = 0) -> bytes:
    """The zip as an upload sends it: into a stream that cannot seek, from byte ``skip``."""
    sent = bytearray()
    writer = SkippingWriter(sent.extend, skip=skip, block=1000)
    write_study_zip(files, writer)
    assert writer.sent == len(sent)
    return bytes(sent)


def test_building_twice_gives_the_same_bytes(study_dir: Path, tmp_path: Path) -> None:
    files = sorted(study_dir.glob("*.dcm"))
    write_study_zip(files, tmp_path / "a.zip")
    os.utime(files[0], (0, 0))  # a file's mtime is not in the zip
    write_study_zip(list(reversed(files)), tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert streamed(files) == streamed(list(reversed(files)))


def test_the_digest_names_one_build(study_dir: Path) -> None:
    files = sorted(study_dir.glob("*.dcm"))
    first = study_digest(files)
    assert study_digest(list(reversed(files))) == first
    files[0].write_bytes(b"other content")  # another size and mtime
    assert study_digest(files) != first
    changed = study_digest(files)
    os.utime(files[1], ns=(0, 1))  # the same size, written again
    assert study_digest(files) != changed


@pytest.mark.parametrize("how", ["file", "stream"])
def test_the_zip_holds_each_file_by_name(study_dir: Path, tmp_path: Path, how: str) -> None:
    files = sorted(study_dir.glob("*.dcm"))
    if how == "file":
        assert write_study_zip(files, tmp_path / "s.zip") == 4
        data = (tmp_path / "s.zip").read_bytes()
    else:
        data = streamed(files)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == [p.name for p in files]
        assert zf.read("00002.dcm") == files[2].read_bytes()
        assert zf.testzip() is None
    assert entries_from_tail(data[-TAIL_BYTES:]) == 4


def test_resuming_sends_exactly_the_rest_of_the_zip(study_dir: Path) -> None:
    # A retry writes the zip again and sends what the server does not hold yet: the two
    # parts, joined, must be the whole zip, wherever the first upload was cut.
    files = sorted(study_dir.glob("*.dcm"))
    whole = streamed(files)
    for offset in (1, 29, 30, 2040, 4100, len(whole) - TAIL_BYTES, len(whole) - 1):
        assert whole[:offset] + streamed(files, skip=offset) == whole
    assert streamed(files, skip=len(whole)) == b""


def test_entry_count_from_the_last_bytes(study_dir: Path, tmp_path: Path) -> None:
    write_study_zip(sorted(study_dir.glob("*.dcm")), tmp_path / "s.zip")
    data = (tmp_path / "s.zip").read_bytes()
    assert entries_from_tail(data[-TAIL_BYTES:]) == 4
    assert entries_from_tail(data[-22:]) == 4
    assert entries_from_tail(data[:-1][-TAIL_BYTES:]) is None  # a cut-off upload
    assert entries_from_tail(b"not a zip" * 20) is None


def test_a_whole_zip_is_told_from_a_cut_one(study_dir: Path, tmp_path: Path) -> None:
    write_study_zip(sorted(study_dir.glob("*.dcm")), tmp_path / "s.zip")
    data = (tmp_path / "s.zip").read_bytes()
    assert ends_whole(data[-TAIL_BYTES:], len(data))
    for cut in (1, 22, 23, len(data) // 2):
        assert not ends_whole(data[:-cut][-TAIL_BYTES:], len(data) - cut)
    # Bytes that look like an end record (here: an earlier copy of it) but are not where
    # it says the zip ends, as inside a stored file, are not taken for the end.
    looks_like_one = data + data[-22:]
    assert not ends_whole(looks_like_one[-TAIL_BYTES:], len(looks_like_one))


def test_entry_count_of_a_zip64_end() -> None:
    # From 65,536 entries on, the classic end record says 0xFFFF and the count is in the
    # Zip64 end record before it.
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        for n in range(0x10000):
            zf.writestr(f"{n:05d}.dcm", b"")
    assert entries_from_tail(data.getvalue()[-TAIL_BYTES:]) == 0x10000
    assert ends_whole(data.getvalue()[-TAIL_BYTES:], len(data.getvalue()))
    assert not ends_whole(data.getvalue()[:-1][-TAIL_BYTES:], len(data.getvalue()) - 1)


def test_a_file_of_4_gb_gets_zip64_headers(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile needs a file's size before it streams it to choose Zip64 headers; lower the
    # 4 GiB limit so that the 2000-byte files count as large.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    files = sorted(study_dir.glob("*.dcm"))
    with zipfile.ZipFile(io.BytesIO(streamed(files))) as zf:
        assert zf.testzip() is None
        assert [zf.read(p.name) for p in files] == [p.read_bytes() for p in files]


def test_a_file_that_grows_while_it_is_zipped_fails_the_transfer(study_dir: Path) -> None:
    files = sorted(study_dir.glob("*.dcm"))

    grown = []

    def send(block: bytes) -> None:  # the first file is read by now; it grows before EOF
        if not grown:
            grown.append(files[0].stat().st_size)
            with files[0].open("ab") as late:
                late.write(b"late")

    with pytest.raises(StudyChanged, match="00000.dcm"):
        write_study_zip(files, SkippingWriter(send, block=1))


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
