"""What every export destination promises, and the receipt it hands back.

A destination takes a folder of de-identified instances and makes the study exist at
the destination exactly once: calling :meth:`Destination.export` again, after a crash
or a retry, sends only what the destination does not already hold and never makes a
second copy. It returns only after counting the study's instances at the destination
(see :mod:`pacsflow.export.verification`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ExportReceipt:
    """What the destination holds of one study once :meth:`Destination.export` returns.

    ``instances`` is counted at the destination, not taken from what was sent.
    ``already_present`` is true when nothing had to be sent (an earlier attempt got the
    whole study there). ``sent`` counts instances transmitted by this call, ``resent``
    those among them sent a second time because verification found them missing.
    """

    location: str
    instances: int
    already_present: bool
    sent: int = 0
    resent: int = 0


class Destination(Protocol):
    """Where a project's de-identified studies go."""

    def export(
        self, study_dir: Path, project: str, pseudo_patient: str, pseudo_study: str
    ) -> ExportReceipt: ...


@runtime_checkable
class FileDestination(Protocol):
    """A destination that can also receive a plain file, such as the linker table.

    Folders and FTPS servers can; a DICOM node or a DICOMweb archive holds only DICOM.
    """

    def send_file(self, path: Path, project: str) -> str:
        """Place ``path`` in the project's folder at the destination; returns where."""
        ...
