"""The filesystem destination: a study folder appears whole, once, or not at all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pacsflow.config import FilesystemDestinationConfig
from pacsflow.export import FilesystemDestination, make_destination

PROJECT = "my-study"
PATIENT = "PSEUDOPATIENT001"
STUDY = "2.25.123456789"


@pytest.fixture
def destination(tmp_path: Path) -> FilesystemDestination:
    return FilesystemDestination(FilesystemDestinationConfig(path=tmp_path / "export"))


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "deid" / "ref"
    folder.mkdir(parents=True)
    for n in range(5):
        (folder / f"{n:05d}.dcm").write_bytes(f"instance {n}".encode() * 100)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_make_destination_gives_a_filesystem_destination(tmp_path: Path) -> None:
    dest = make_destination(FilesystemDestinationConfig(path=tmp_path))
    assert isinstance(dest, FilesystemDestination)


def test_export_creates_project_patient_study_folder(
    destination: FilesystemDestination, study_dir: Path, tmp_path: Path
) -> None:
    receipt = destination.export(study_dir, PROJECT, PATIENT, STUDY)
    final = tmp_path / "export" / PROJECT / PATIENT / STUDY
    assert receipt.location == str(final)
    assert receipt.instances == 5
    assert receipt.already_present is False
    assert sorted(p.name for p in final.iterdir()) == sorted(p.name for p in study_dir.iterdir())
    for path in study_dir.iterdir():
        assert (final / path.name).read_bytes() == path.read_bytes()
    # Nothing half-done remains: the staging area of the project is empty.
    partial = tmp_path / "export" / PROJECT / ".partial"
    assert not partial.exists() or list(partial.iterdir()) == []
    # Researchers listing the project folder see patients only, no working folders.
    assert sorted(p.name for p in (tmp_path / "export" / PROJECT).iterdir()) == [PATIENT]


def test_exporting_again_changes_nothing(
    destination: FilesystemDestination, study_dir: Path, tmp_path: Path
) -> None:
    first = destination.export(study_dir, PROJECT, PATIENT, STUDY)
    final = Path(first.location)
    before = snapshot(tmp_path / "export")
    # A second attempt (e.g. killed after the rename, before the ledger update) with a
    # study folder that has since changed must not touch what is already exported.
    (study_dir / "00000.dcm").write_bytes(b"changed")
    (study_dir / "99999.dcm").write_bytes(b"extra")

    second = destination.export(study_dir, PROJECT, PATIENT, STUDY)

    assert second.already_present is True
    assert second.location == first.location
    assert second.instances == 5
    assert snapshot(tmp_path / "export") == before
    assert len(list(final.iterdir())) == 5


def test_leftover_partial_from_a_killed_attempt_is_removed(
    destination: FilesystemDestination, study_dir: Path, tmp_path: Path
) -> None:
    partial_root = tmp_path / "export" / PROJECT / ".partial"
    leftover = partial_root / f"{STUDY}.dead1234"
    leftover.mkdir(parents=True)
    (leftover / "00000.dcm").write_bytes(b"half")
    other = partial_root / "2.25.999.abcd0000"  # another study's attempt, maybe running
    other.mkdir()

    receipt = destination.export(study_dir, PROJECT, PATIENT, STUDY)

    assert receipt.already_present is False
    assert receipt.instances == 5
    assert not leftover.exists()
    assert other.is_dir()
    assert sorted(p.name for p in partial_root.iterdir()) == [other.name]


def test_a_failed_copy_leaves_no_study_folder_and_a_retry_succeeds(
    destination: FilesystemDestination,
    study_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_copytree = shutil.copytree

    def copy_two_then_fail(src: Path, dst: Path, **kwargs: object) -> Path:
        Path(dst).mkdir(parents=True)
        for path in sorted(Path(src).iterdir())[:2]:
            shutil.copy2(path, Path(dst) / path.name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pacsflow.export.filesystem.shutil.copytree", copy_two_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        destination.export(study_dir, PROJECT, PATIENT, STUDY)

    project_dir = tmp_path / "export" / PROJECT
    # A reader listing the project sees no patient or study folder, only the hidden
    # staging folder with the half copy.
    assert [p.name for p in project_dir.iterdir()] == [".partial"]
    assert not destination.final_dir(PROJECT, PATIENT, STUDY).exists()
    [half] = list((project_dir / ".partial").iterdir())
    assert len(list(half.iterdir())) == 2

    monkeypatch.setattr("pacsflow.export.filesystem.shutil.copytree", real_copytree)
    receipt = destination.export(study_dir, PROJECT, PATIENT, STUDY)
    assert receipt.already_present is False
    assert receipt.instances == 5
    assert not half.exists()
    assert not (project_dir / ".partial").exists()


def test_the_study_folder_appears_only_when_complete(
    destination: FilesystemDestination,
    study_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the moment the final folder first exists, every file is already in it."""
    final = destination.final_dir(PROJECT, PATIENT, STUDY)
    real_rename = os.rename
    seen: list[tuple[bool, int]] = []

    def watching_rename(src: str | Path, dst: str | Path) -> None:
        seen.append((final.exists(), len(list(Path(src).iterdir()))))
        real_rename(src, dst)
        seen.append((final.exists(), len(list(final.iterdir()))))

    monkeypatch.setattr("pacsflow.export.filesystem.os.rename", watching_rename)
    destination.export(study_dir, PROJECT, PATIENT, STUDY)
    assert seen == [(False, 5), (True, 5)]


def test_another_worker_finishing_first_is_already_present(
    destination: FilesystemDestination,
    study_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = destination.final_dir(PROJECT, PATIENT, STUDY)
    real_rename = os.rename

    def racing_rename(src: str | Path, dst: str | Path) -> None:
        # Another worker renames its complete copy into place a moment before us.
        shutil.copytree(study_dir, final)
        real_rename(src, dst)

    monkeypatch.setattr("pacsflow.export.filesystem.os.rename", racing_rename)
    receipt = destination.export(study_dir, PROJECT, PATIENT, STUDY)
    assert receipt.already_present is True
    assert receipt.instances == 5
    assert not (tmp_path / "export" / PROJECT / ".partial").exists()


def test_exports_running_at_once_never_lose_their_partial_folder(tmp_path: Path) -> None:
    """Several export lanes: one removing the empty .partial/ must not break another's copy."""
    import threading

    from pacsflow.config import FilesystemDestinationConfig
    from pacsflow.export import make_destination

    source = tmp_path / "staged"
    source.mkdir()
    (source / "00000.dcm").write_bytes(b"x" * 100)
    destination = make_destination(FilesystemDestinationConfig(path=tmp_path / "export"))
    errors: list[BaseException] = []

    def export_many(worker: int) -> None:
        for n in range(150):
            try:
                destination.export(source, PROJECT, PATIENT, f"2.25.{worker}{n:04d}")
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=export_many, args=(w,)) for w in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(list((tmp_path / "export" / PROJECT / PATIENT).iterdir())) == 600
