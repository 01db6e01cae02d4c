"""One staged study's de-identification: pixel check, profile, PHI gate, write.

Everything it needs travels in a :class:`StudyJob` of plain values, so that the same call
runs in the flow run's process or in a de-identification process of its own
(:mod:`pacsflow.deid.processes`); the ledger and the destination stay with the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from pacsflow.deid.pixels import PixelPolicy, PixelVerdict, inspect_instance
from pacsflow.deid.profile import DeidContext, Profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.deid.study import StudyDeidResult, deidentify_study
from pacsflow.dicom import integrity


@dataclass(frozen=True)
class StudyJob:
    """What de-identifying one staged study takes, besides its profile.

    It holds identifiers (``mrn``, ``accession``, ``patient_key``) and the project's key:
    it goes to our own processes over a pipe, never to Prefect.
    """

    files: tuple[Path, ...]
    out_dir: Path
    pseudonymizer: Pseudonymizer
    patient_key: str
    patient: str
    pixels: PixelPolicy
    source: str | None
    mrn: str | None
    accession: str | None


@dataclass(frozen=True)
class StudyOutcome:
    """The written instances and the gate's verdict, and each inspected instance's pixel verdict."""

    result: StudyDeidResult
    verdicts: tuple[PixelVerdict, ...]


def deidentify_staged(job: StudyJob, profile: Profile) -> StudyOutcome:
    """Inspect every original instance's pixels, then de-identify, gate and write the study.

    An instance that is not whole raises :class:`integrity.CorruptInstance` before any
    work on it: the study cannot be exported, and retrieving it again gets the same.
    """
    verdicts: list[PixelVerdict] = []

    def inspect(ds: pydicom.Dataset) -> PixelVerdict:
        damage = integrity.pixel_data_problem(ds)
        if damage is not None:
            raise integrity.CorruptInstance(
                f"instance {len(verdicts) + 1} of {len(job.files)} from {job.source} "
                f"is not whole: {damage}; the source serves it so (ask its administrators "
                "to repair or resend it), the next pull tries again"
            )
        verdicts.append(inspect_instance(ds, job.pixels))
        return verdicts[-1]

    context = DeidContext.for_patient(job.pseudonymizer, job.patient_key, job.patient)
    result = deidentify_study(
        job.files,
        profile,
        context,
        job.out_dir,
        mrn=job.mrn,
        accession=job.accession,
        inspect=inspect,
    )
    return StudyOutcome(result, tuple(verdicts))
