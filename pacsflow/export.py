"""Export a de-identified study to a project's destination, exactly once.

The filesystem destination copies the study into ``<root>/<project>/.partial/`` and
then renames it into ``<root>/<project>/<pseudo patient>/<pseudo study UID>/``. A rename
within one filesystem is atomic, so a reader never sees half a study, and a study
folder that exists is complete. A kill before the rename leaves only a ``.partial``
folder, which the next attempt removes; a kill after the rename but before the ledger
is updated is caught by finding the folder already in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pacsflow.config import FilesystemDestinationConfig


@dataclass(frozen=True)
class ExportReceipt:
    location: str
    instances: int
    already_present: bool


class Destination(Protocol):
    def export(
        self, study_dir: Path, project: str, pseudo_patient: str, pseudo_study: str
    ) -> ExportReceipt: ...


class FilesystemDestination:
    """A folder, local or mounted, that the project's researchers read from."""

    def __init__(self, config: FilesystemDestinationConfig) -> None:
        self.root = Path(config.path)

    def final_dir(self, project: str, pseudo_patient: str, pseudo_study: str) -> Path:
        return self.root / project / pseudo_patient / pseudo_study

    def export(
        self, study_dir: Path, project: str, pseudo_patient: str, pseudo_study: str
    ) -> ExportReceipt:
        final = self.final_dir(project, pseudo_patient, pseudo_study)
        if final.is_dir():
            return ExportReceipt(str(final), _count(final), already_present=True)
        partial_root = self.root / project / ".partial"
        for leftover in partial_root.glob(f"{pseudo_study}.*"):
            shutil.rmtree(leftover, ignore_errors=True)  # from an attempt that was killed
        partial = partial_root / f"{pseudo_study}.{uuid.uuid4().hex[:8]}"
        shutil.copytree(study_dir, partial)
        _fsync_tree(partial)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(partial, final)
        except OSError:
            if final.is_dir():  # another worker exported the same study a moment ago
                shutil.rmtree(partial, ignore_errors=True)
                _remove_if_empty(partial_root)
                return ExportReceipt(str(final), _count(final), already_present=True)
            raise
        _remove_if_empty(partial_root)
        return ExportReceipt(str(final), _count(final), already_present=False)


def _remove_if_empty(folder: Path) -> None:
    """Other studies may be mid-export in ``folder``: rmdir only succeeds when it is empty."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.dcm"))


def _fsync_tree(folder: Path) -> None:
    """Flush file contents before the rename makes them visible (survives power loss)."""
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def make_destination(config: FilesystemDestinationConfig) -> Destination:
    return FilesystemDestination(config)
