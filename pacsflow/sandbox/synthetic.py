"""Synthetic studies that look like real hospital data, for tests and the sandbox.

De-identification can only be tested against data that carries identifiers in the
places real modalities put them: patient module, free text (StudyDescription,
ImageComments), physician and operator names, institution, station, private tags and
UIDs that link instances to each other. Every study made here has all of those, with
names that are realistic in shape but taken from a fixed, obviously fake list.

Pixel data and the rest of each image come from the small CT and MR files bundled with
pydicom, so the files are valid DICOM that any viewer or toolkit accepts.
"""

from __future__ import annotations

import datetime
import random
from copy import deepcopy
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

#: Modality -> file bundled with pydicom used as the template for every instance.
_TEMPLATES = {"CT": "CT_small.dcm", "MR": "MR_small.dcm"}

#: Private creator of the block that carries the MRN, as a hospital's own software
#: might add (PS3.5 section 7.8.1: private data elements are reserved by a creator).
PRIVATE_CREATOR = "SANDBOX HOSPITAL"
_PRIVATE_GROUP = 0x0071

INSTITUTION_NAME = "SANDBOX GENERAL HOSPITAL"
INSTITUTION_ADDRESS = "1 Placeholder Way, Exampletown, EX1 2MP"

# Family names that exist or look plausible, but are well-known placeholder names.
_FAMILY_NAMES = (
    "DOE",
    "ROE",
    "BLOGGS",
    "SMITHEE",
    "SAMPLETON",
    "TESTER",
    "MOCKRIDGE",
    "DUMMETT",
    "FAKEHAM",
    "EXAMPLEBY",
    "PLACEHOLDER",
    "MUSTERMANN",
)
# (given name, sex) so that PatientSex agrees with the name, as in real records.
_GIVEN_NAMES = (
    ("JANE", "F"),
    ("JOHN", "M"),
    ("MARIA", "F"),
    ("AHMED", "M"),
    ("PRIYA", "F"),
    ("KWAME", "M"),
    ("OLGA", "F"),
    ("TOMAS", "M"),
    ("NORA", "F"),
    ("LI", "M"),
    ("ERIKA", "F"),
    ("MAX", "M"),
)
_PHYSICIANS = ("HOUSE^GREGORY", "KILDARE^JAMES", "QUINN^MICHAELA", "WHO^THE^DR")
_OPERATORS = ("TECH^TINA", "RADIOG^RAFAEL", "SCANNER^SAM")
_STATIONS = {"CT": ("CTSCAN01", "CTSCAN02"), "MR": ("MRI3T01", "MRI15T02")}
_DESCRIPTIONS = {
    "CT": ("CT CHEST W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST", "CT HEAD"),
    "MR": ("MR BRAIN W/WO CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE"),
}


@dataclass(frozen=True)
class FakePatient:
    """A fake patient: enough identity to fill the patient module of a study."""

    mrn: str
    name: str  # DICOM PN, "FAMILY^GIVEN"
    birth_date: datetime.date
    sex: str  # "F" or "M"

    @property
    def family_name(self) -> str:
        return self.name.split("^", 1)[0]


def make_patients(n: int, seed: int = 0) -> list[FakePatient]:
    """``n`` distinct fake patients, the same ones for the same ``seed``.

    MRNs are "MRN" + 7 digits and unique within the result, because a manifest with
    two patients sharing an MRN would test something else entirely.
    """
    rng = random.Random(seed)
    mrns = rng.sample(range(10**7), n)
    patients = []
    for number in mrns:
        given, sex = rng.choice(_GIVEN_NAMES)
        family = rng.choice(_FAMILY_NAMES)
        birth = datetime.date(1930, 1, 1) + datetime.timedelta(days=rng.randrange(80 * 365))
        patients.append(FakePatient(f"MRN{number:07d}", f"{family}^{given}", birth, sex))
    return patients


@cache
def _template(modality: str) -> Dataset:
    """The bundled file for ``modality``, read once; callers must deep-copy it."""
    try:
        name = _TEMPLATES[modality]
    except KeyError:
        raise ValueError(
            f"unsupported modality {modality!r}; choose one of {sorted(_TEMPLATES)}"
        ) from None
    path = get_testdata_file(name)
    if path is None:  # pragma: no cover - pydicom always ships these two
        raise FileNotFoundError(f"pydicom test file {name} is missing")
    return pydicom.dcmread(path)


def _age(birth: datetime.date, on: datetime.date) -> str:
    """PatientAge as an AS string, e.g. "047Y" (PS3.5 Table 6.2-1, VR AS)."""
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"


def make_study(
    *,
    mrn: str,
    accession: str,
    study_date: datetime.date,
    patient_name: str,
    birth_date: datetime.date,
    sex: str,
    modality: str = "CT",
    n_series: int = 2,
    n_instances: int = 3,
    seed: int = 0,
) -> list[Dataset]:
    """One study of ``n_series`` x ``n_instances`` instances, with PHI where real files have it.

    UIDs are derived from ``seed`` and the identifying arguments, so the same call gives
    the same study (tests can hard-code expectations) while different patients or
    accessions never collide. Datasets carry complete file meta and can be written
    with :func:`write_study` or sent over the network as they are.
    """
    if n_series < 1 or n_instances < 1:
        raise ValueError("n_series and n_instances must be at least 1")
    template = _template(modality)
    rng = random.Random(f"{seed}|{mrn}|{accession}")
    family = patient_name.split("^", 1)[0]
    given = patient_name.split("^")[1] if "^" in patient_name else ""

    def uid(*parts: object) -> str:
        # Deterministic 2.25 UID (PS3.5 Annex B.2) from the study identity and parts.
        return generate_uid(prefix=None, entropy_srcs=[str(seed), mrn, accession, *map(str, parts)])

    study_uid = uid("study")
    frame_uid = uid("frame")
    da = study_date.strftime("%Y%m%d")
    study_time = f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    referring = rng.choice(_PHYSICIANS)
    operator = rng.choice(_OPERATORS)
    station = rng.choice(_STATIONS[modality])
    description = f"{rng.choice(_DESCRIPTIONS[modality])} - {family}"
    alt_id = f"ALT{rng.randrange(10**6):06d}"

    datasets: list[Dataset] = []
    for series_index in range(n_series):
        series_uid = uid("series", series_index)
        sop_uids = [uid("instance", series_index, i) for i in range(n_instances)]
        for index, sop_uid in enumerate(sop_uids):
            ds = deepcopy(template)
            # Identity and timing of the study, series and instance.
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.InstanceCreatorUID = uid("creator")
            ds.StudyID = accession[-8:] or "1"
            ds.SeriesNumber = series_index + 1
            ds.InstanceNumber = index + 1
            ds.AcquisitionNumber = 1
            for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
                setattr(ds, keyword, da)
            ds.InstanceCreationDate = da
            for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
                setattr(ds, keyword, study_time)
            ds.InstanceCreationTime = study_time
            ds.Modality = modality
            ds.SeriesDescription = f"{modality} SERIES {series_index + 1}"
            ds.StudyDescription = description
            # Slices stacked 5 mm apart so the series is a plausible volume.
            position = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [position[0], position[1], float(index * 5)]
            ds.SliceLocation = float(index * 5)

            # Patient module and the other PHI a hospital file carries.
            ds.PatientName = patient_name
            ds.PatientID = mrn
            ds.IssuerOfPatientID = PRIVATE_CREATOR
            ds.PatientBirthDate = birth_date.strftime("%Y%m%d")
            ds.PatientSex = sex
            ds.PatientAge = _age(birth_date, study_date)
            ds.OtherPatientIDs = [alt_id, f"NHS{rng.randrange(10**9):09d}"]
            other = Dataset()
            other.PatientID = alt_id
            other.IssuerOfPatientID = "SANDBOX CLINIC"
            other.TypeOfPatientID = "TEXT"
            ds.OtherPatientIDsSequence = Sequence([other])
            ds.AccessionNumber = accession
            ds.ReferringPhysicianName = referring
            ds.NameOfPhysiciansReadingStudy = rng.choice(_PHYSICIANS)
            ds.OperatorsName = operator
            ds.InstitutionName = INSTITUTION_NAME
            ds.InstitutionAddress = INSTITUTION_ADDRESS
            ds.StationName = station
            ds.DeviceSerialNumber = f"SN{rng.randrange(10**6):06d}"
            ds.AdditionalPatientHistory = f"{given.title()} {family.title()} referred, {mrn}"
            ds.ImageComments = f"Patient {patient_name} ({mrn}), acc {accession}"

            # A private block with the MRN, as local software often adds (PS3.5 7.8).
            block = ds.private_block(_PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
            block.add_new(0x01, "LO", mrn)
            block.add_new(0x02, "PN", patient_name)

            # A reference to a sibling instance: a UID that de-identification must
            # remap consistently with the referenced instance's own SOPInstanceUID.
            if n_instances > 1:
                ref = Dataset()
                ref.ReferencedSOPClassUID = ds.SOPClassUID
                ref.ReferencedSOPInstanceUID = sop_uids[(index + 1) % n_instances]
                ds.ReferencedImageSequence = Sequence([ref])

            # File meta (PS3.10 section 7.1): MediaStorage UIDs must match the dataset.
            meta = ds.file_meta
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = "PACSFLOW_SANDBOX"
            datasets.append(ds)
    return datasets


def study_of(
    patient: FakePatient, *, accession: str, study_date: datetime.date, **settings
) -> list[Dataset]:
    """:func:`make_study` for one of :func:`make_patients`' patients; ``settings`` are
    its other arguments (``modality``, ``n_series``, ``n_instances``, ``seed``)."""
    return make_study(
        mrn=patient.mrn,
        accession=accession,
        study_date=study_date,
        patient_name=patient.name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        **settings,
    )


def write_study(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as ``<SOPInstanceUID>.dcm`` in ``folder``; return the paths.

    Named by SOPInstanceUID so writing the same study twice replaces, not duplicates.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
