"""Delivery verification: a study counts as exported only when the destination holds it all.

Instances are keyed by their SOP Instance UID (already pseudonymous: the de-identified
files carry remapped UIDs). :func:`deliver` asks the destination which of the study's
instances it holds, sends the others, counts again, re-sends what is still missing once,
and fails with both counts if that did not help. Because the first question is "what do
you hold?", an export interrupted half-way resumes where it stopped and never sends an
instance twice on purpose; a destination keyed by SOP Instance UID (a DICOM node, a
DICOMweb archive) stores a repeated instance once anyway.

Counting again asks for the study's instance count first (one study-level answer): when
it grew by exactly the number sent, every one of them is there. Listing a study's
instances one by one took a tenth of a 1,000-instance export (Orthanc: 0.9 s by QIDO-RS,
0.5 s by C-FIND), so the list is asked for only when the count does not match, or the
destination cannot tell it, to find which instances to send again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export.protocol import ExportReceipt

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    """One de-identified file of a study, with what a sender needs to know about it."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


_SOP_INSTANCE_UID = 0x00080018


def _past_sop_instance_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > _SOP_INSTANCE_UID


def read_instances(study_dir: Path) -> list[Instance]:
    """The study's ``*.dcm`` files, in name order, read up to the SOP Instance UID only.

    The file meta holds the transfer syntax and (0008,0016), (0008,0018) come first in
    the data set: stopping there halves the reading of a CT's header (0.35 ms a file).
    """
    instances = []
    for path in sorted(study_dir.glob("*.dcm")):
        with path.open("rb") as handle:
            ds = read_partial(handle, stop_when=_past_sop_instance_uid)
        try:
            instances.append(
                Instance(
                    path=path,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                )
            )
        except AttributeError as exc:
            raise PermanentError(
                f"de-identified file {path.name} has no {exc.name}: it cannot be sent; "
                "check the project's profile keeps SOPInstanceUID and SOPClassUID"
            ) from None
    if not instances:
        raise RetriableError("the de-identified study folder is empty; nothing to export")
    return instances


class DeliveryIncomplete(RetriableError):
    """The destination still lacks instances after they were sent again."""


class InstanceStore(Protocol):
    """A destination that stores instances one by one and can list a study's."""

    def describe(self) -> str:
        """Name the destination in messages, e.g. ``dicom node RESEARCH at host:104``."""
        ...

    def held(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of ``study_uid`` that the destination holds now."""
        ...

    def send(self, instances: Sequence[Instance]) -> None:
        """Send ``instances``; raise RetriableError or PermanentError on failure."""
        ...

    def count(self, study_uid: str) -> int | None:
        """How many instances of ``study_uid`` the destination holds, by one study-level
        question; None if it does not say (then :meth:`held` is asked)."""
        ...


def _missing(instances: Iterable[Instance], held: set[str]) -> list[Instance]:
    return [i for i in instances if i.sop_instance_uid not in held]


def deliver(
    store: InstanceStore, instances: Sequence[Instance], study_uid: str, location: str
) -> ExportReceipt:
    """Make ``store`` hold every one of ``instances``; return what it holds of them.

    Raises :class:`DeliveryIncomplete` naming both counts when instances are still
    missing after one re-send (the study fails with that reason and is retried later).
    """
    wanted = {i.sop_instance_uid for i in instances}
    held = store.held(study_uid)
    to_send = _missing(instances, held)
    if not to_send:
        return ExportReceipt(location, len(instances), already_present=True)
    store.send(to_send)
    # None of to_send was held, so the count grows by one for each that was stored.
    if store.count(study_uid) == len(held) + len(to_send):
        return ExportReceipt(location, len(wanted), already_present=False, sent=len(to_send))
    still_missing = _missing(to_send, store.held(study_uid))
    resent = len(still_missing)
    if still_missing:
        LOGGER.warning(
            "%s lacks %d instances just sent; sending them again", store.describe(), resent
        )
        store.send(still_missing)
        still_missing = _missing(instances, store.held(study_uid))
        if still_missing:
            raise DeliveryIncomplete(
                f"{store.describe()} holds {len(wanted) - len(still_missing)} of the "
                f"{len(wanted)} instances sent, after sending the {resent} missing ones "
                "again; check the destination's storage and logs, then run extract again"
            )
    return ExportReceipt(
        location, len(wanted), already_present=False, sent=len(to_send) + resent, resent=resent
    )
