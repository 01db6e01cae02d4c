"""Studies for the benchmarks to pull, and the manifest that asks for them.

Two kinds, both carrying patient data where real files do, so de-identification does
its real work:

* :func:`synthetic_studies`: small instances (pydicom's 39 KB ``CT_small.dcm``) from
  :mod:`pacsflow.sandbox.synthetic`, with names, MRNs, free text and a private block;
  what the per-study cost of the orchestration is measured with.
* :func:`ct_studies`: ``693_UNCI.dcm`` from pydicom-data (a 512x512 CT of ~512 KB) with
  fresh UIDs and the same kinds of PHI; what data throughput is measured with.

Each study comes as encoded DICOM files (bytes), ready to upload to Orthanc or to write
into a sandbox PACS's folder, with its manifest row (minimal form, see README).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd
import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsflow.sandbox.synthetic import make_patients, study_of

CT_TEMPLATE = "693_UNCI.dcm"
_FIRST_DATE = dt.date(2019, 1, 1)


@dataclass(frozen=True)
class BenchStudy:
    """One study to seed: its manifest row and its instances as DICOM file bytes."""

    mrn: str
    accession_number: str
    study_date: dt.date
    files: list[bytes]

    @property
    def row(self) -> dict[str, str]:
        """The manifest row that asks for this study (minimal form)."""
        return {
            "mrn": self.mrn,
            "accession_number": self.accession_number,
            "study_date": self.study_date.isoformat(),
        }


def encode(ds: Dataset) -> bytes:
    """A dataset as the bytes of a DICOM file (PS3.10 preamble and file meta)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _identity(index: int, seed: int) -> tuple[str, dt.date]:
    accession = f"BEN{seed:02d}{index:07d}"
    return accession, _FIRST_DATE + dt.timedelta(days=index % 2000)


def synthetic_studies(n_studies: int, n_instances: int = 1, seed: int = 0) -> Iterator[BenchStudy]:
    """``n_studies`` small CT studies of one series of ``n_instances``, one patient each."""
    for index, patient in enumerate(make_patients(n_studies, seed)):
        accession, study_date = _identity(index, seed)
        datasets = study_of(
            patient,
            accession=accession,
            study_date=study_date,
            modality="CT",
            n_series=1,
            n_instances=n_instances,
            seed=seed,
        )
        yield BenchStudy(patient.mrn, accession, study_date, [encode(ds) for ds in datasets])


@cache
def _ct_template() -> bytes:
    path = get_testdata_file(CT_TEMPLATE)
    if path is None:
        raise SystemExit(
            f"{CT_TEMPLATE} not found: install pydicom-data (pip install pydicom-data)"
        )
    return Path(path).read_bytes()


def ct_studies(n_studies: int, n_instances: int, seed: int = 0) -> Iterator[BenchStudy]:
    """``n_studies`` studies of ``n_instances`` ~512 KB CT slices, one patient each."""
    patients = make_patients(n_studies, seed)
    for index, patient in enumerate(patients):
        accession, study_date = _identity(index, seed)
        ds = pydicom.dcmread(io.BytesIO(_ct_template()))
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.FrameOfReferenceUID = generate_uid()
        ds.PatientName = patient.name
        ds.PatientID = patient.mrn
        ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
        ds.PatientSex = patient.sex
        ds.AccessionNumber = accession
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
        ds.StudyID = accession[-8:]
        ds.Modality = "CT"
        ds.InstitutionName = "BENCHMARK GENERAL HOSPITAL"
        ds.ReferringPhysicianName = "HOUSE^GREGORY"
        ds.StudyDescription = f"CT CHEST - {patient.family_name}"
        ds.ImageComments = f"Patient {patient.name} ({patient.mrn}), acc {accession}"
        block = ds.private_block(0x0071, "BENCH HOSPITAL", create=True)
        block.add_new(0x01, "LO", patient.mrn)
        files = []
        for number in range(1, n_instances + 1):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = number
            files.append(encode(ds))
        yield BenchStudy(patient.mrn, accession, study_date, files)


def write_files(studies: Iterable[BenchStudy], folder: Path) -> list[dict[str, str]]:
    """Write every study's files into ``folder`` (as a sandbox PACS reads them); the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, study in enumerate(studies):
        for index, data in enumerate(study.files):
            (folder / f"study{number:06d}-{index:04d}.dcm").write_bytes(data)
        rows.append(study.row)
    return rows


def write_manifest(rows: Iterable[dict[str, str]], path: Path) -> Path:
    """The manifest CSV for ``rows`` (columns mrn, accession_number, study_date)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows), columns=["mrn", "accession_number", "study_date"]).to_csv(
        path, index=False
    )
    return path


def read_manifest_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a manifest written by :func:`write_manifest`, as strings."""
    return pd.read_csv(path, dtype=str).to_dict("records")
