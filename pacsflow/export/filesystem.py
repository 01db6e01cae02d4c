"""The filesystem destination: a folder, local or mounted, that researchers read from.

The study is copied into ``<root>/<project>/.partial/`` and then renamed into
``<root>/<project>/<pseudo patient>/<pseudo study UID>/`` (or, with ``zip: true``, to
``.../<pseudo patient>/<pseudo study UID>.zip``). A rename within one filesystem is
atomic, so a reader never sees half a study, and a study folder or zip that exists is
complete. A kill before the rename leaves only a ``.partial`` entry, which the next
attempt removes; a kill after the rename but before the ledger is updated is caught by
finding the study already in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from pacsflow.config import FilesystemDestinationConfig
from pacsflow.export.archive import count_entries, write_study_zip
from pacsflow.export.factory import register
from pacsflow.export.protocol import ExportReceipt
from pacsflow.export.verification import DeliveryIncomplete


@register(FilesystemDestinationConfig)
class FilesystemDestination:
    """A folder that receives de-identified studies, written atomically."""

    def __init__(self, config: FilesystemDestinationConfig) -> None:
        self.root = Path(config.path)
        self.zip = config.zip

    def final_dir(self, project: str, pseudo_patient: str, pseudo_study: str) -> Path:
        return self.root / project / pseudo_patient / pseudo_study

    def final_path(self, project: str, pseudo_patient: str, pseudo_study: str) -> Path:
        """Where the study ends up: its folder, or its zip with ``zip: true``."""
        folder = self.final_dir(project, pseudo_patient, pseudo_study)
        return folder.with_name(folder.name + ".zip") if self.zip else folder

    def export(
        self, study_dir: Path, project: str, pseudo_patient: str, pseudo_study: str
    ) -> ExportReceipt:
        final = self.final_path(project, pseudo_patient, pseudo_study)
        if final.exists():
            return ExportReceipt(str(final), self._count(final), already_present=True)
        files = sorted(study_dir.glob("*.dcm"))
        partial_root = self.root / project / ".partial"
        for leftover in _entries(partial_root, f"{pseudo_study}.*"):
            _remove(leftover)  # from an attempt that was killed
        partial = partial_root / f"{pseudo_study}.{uuid.uuid4().hex[:8]}"
        if self.zip:
            _hold_place(partial_root, partial)
            write_study_zip(files, partial)
            _fsync(partial)
        else:
            _copy_study(study_dir, partial)
            _fsync_tree(partial)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(partial, final)
        except OSError:
            if final.exists():  # another worker exported the same study a moment ago
                _remove(partial)
                _remove_if_empty(partial_root)
                return ExportReceipt(str(final), self._count(final), already_present=True)
            raise
        _remove_if_empty(partial_root)
        held = self._count(final)
        if held != len(files):
            raise DeliveryIncomplete(
                f"folder {final} holds {held} of the {len(files)} instances written; "
                "check the disk, remove that folder and run extract again"
            )
        return ExportReceipt(str(final), held, already_present=False, sent=len(files))

    def send_file(self, path: Path, project: str) -> str:
        """Copy ``path`` into ``<root>/<project>/``, replacing an older copy atomically."""
        target = self.root / project / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        shutil.copyfile(path, partial)
        _fsync(partial)
        os.replace(partial, target)
        return str(target)

    def _count(self, final: Path) -> int:
        if final.is_file():
            return count_entries(final)
        return sum(1 for _ in final.glob("*.dcm"))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# Export lanes run at once, and each removes ``.partial/`` when it leaves it empty; one may
# do so between another's creating the folder and its own entry in it. Once an entry
# exists the folder is not empty, so it stays: creating the entry is what is retried.
_ATTEMPTS = 20


def _entries(folder: Path, pattern: str) -> list[Path]:
    try:
        return list(folder.glob(pattern))
    except FileNotFoundError:  # removed by another export a moment ago
        return []


def _hold_place(partial_root: Path, partial: Path) -> None:
    """Create this attempt's (empty) file in ``.partial/``."""
    for _ in range(_ATTEMPTS):
        partial_root.mkdir(parents=True, exist_ok=True)
        try:
            partial.touch(exist_ok=False)
            return
        except FileNotFoundError:
            continue
    raise OSError(f"could not create {partial}: its folder keeps disappearing")


def _copy_study(study_dir: Path, partial: Path) -> None:
    """Copy the study to ``partial`` (its parent, ``.partial/``, is created as needed)."""
    for _ in range(_ATTEMPTS):
        try:
            shutil.copytree(study_dir, partial)
            return
        except FileNotFoundError:
            if not study_dir.is_dir():
                raise
            _remove(partial)  # .partial/ went between its creation and ours: again
    raise OSError(f"could not create {partial}: its folder keeps disappearing")


def _remove_if_empty(folder: Path) -> None:
    """Other studies may be mid-export in ``folder``: rmdir only succeeds when it is empty."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    """Flush file contents before the rename makes them visible (survives power loss)."""
    for path in folder.iterdir():
        _fsync(path)
