"""Adversarial studies, each run through every profile a user would pick: the basic
profile, the basic profile with options, and the two example projects.

Each case is a small study built here with pydicom, with the strings that must not
leave; it passes when the study is exported without any of them (searched in the bytes
of every exported file, in the spellings a reader would recognise) or is quarantined.
Each clean control has a name that looks like something else (a kernel, a body part, a
French article, two letters, CJK, Hangul, the engine's own words) and must be exported.
Pixel classes (burned-in text, OCR) are the pixel policy's and are tested there.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacsflow.config import ProfileOption, load_project_config
from pacsflow.deid.profile import DeidContext, Profile, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.deid.study import StudyDeidResult, deidentify_study

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "projects"
PSEUDO = Pseudonymizer(bytes(range(32)))
MRN = "HX0047113"
ACCESSION = "RAD24-55871"


def _example(name: str) -> Profile:
    project = load_project_config(EXAMPLES / f"{name}.yaml")
    return build_profile(project.profile, project.profile_options, project.resolved_profile_files)


CARELESS = """
description: keeps free text as it is, so that only the PHI gate stands in the way
tags:
  - {keyword: ImageComments, op: keep}
  - {keyword: DocumentTitle, op: keep}
  - {keyword: TextValue, op: keep}
"""


def _careless() -> Profile:
    from pacsflow.deid.profile_file import parse_profile_file

    loaded = parse_profile_file(yaml.safe_load(CARELESS), Path("careless.yaml"))
    return build_profile("basic", loaded=[(Path("careless.yaml"), loaded)])


PROFILES: dict[str, Callable[[], Profile]] = {
    "basic": lambda: build_profile("basic"),
    "basic+options": lambda: build_profile(
        "basic",
        [
            ProfileOption.CLEAN_DESCRIPTORS,
            ProfileOption.CLEAN_STRUCTURED_CONTENT,
            ProfileOption.CLEAN_GRAPHICS,
            ProfileOption.RETAIN_PATIENT_CHARACTERISTICS,
            ProfileOption.RETAIN_DEVICE_IDENTITY,
            ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        ],
    ),
    "lung-ct-longitudinal": lambda: _example("lung-ct-longitudinal"),
    "imaging-allow-list": lambda: _example("imaging-allow-list"),
    "careless: keeps free text": _careless,
}


def instance(study_uid: str, number: int, **attributes: object) -> Dataset:
    """A small valid CT instance of one study, with the given attributes on top."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "series"])
    ds.Modality = "CT"
    ds.Manufacturer = "SIEMENS"
    ds.InstanceNumber = number
    ds.PatientName = "KOWALSKA^HALINA"
    ds.PatientID = MRN
    ds.AccessionNumber = ACCESSION
    ds.PatientBirthDate = "19480229"
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT THORAX"
    ds.SeriesDescription = "AXIAL 1.0 B60f"
    ds.ConvolutionKernel = "B60f"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00\x01" * 16
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def study(*per_instance: dict[str, object], **common: object) -> list[Dataset]:
    uid = generate_uid()
    return [instance(uid, n + 1, **{**common, **extra}) for n, extra in enumerate(per_instance)]


def run(datasets: list[Dataset], profile: Profile, tmp_path: Path) -> StudyDeidResult:
    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    files = []
    for index, ds in enumerate(datasets):
        path = source / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    context = DeidContext.for_patient(PSEUDO, MRN, PSEUDO.patient_id(MRN))
    return deidentify_study(files, profile, context, tmp_path / "out", mrn=MRN, accession=ACCESSION)


def _readable(text: str) -> str:
    """What a reader would recognise: accents dropped, full-width folded, upper case."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def exported_text(result: StudyDeidResult) -> str:
    texts = []
    for path in result.written:
        data = path.read_bytes()
        texts.append(data.decode("latin-1"))
        texts.append(data.decode("utf-8", errors="ignore"))
    return _readable("\n".join(texts))


def assert_safe(result: StudyDeidResult, secrets: list[str]) -> None:
    """Exported without any of ``secrets``, or quarantined (and then nothing written
    that an export could pick up)."""
    if not result.exportable:
        assert result.summary()
        return
    text = exported_text(result)
    for secret in secrets:
        assert _readable(secret) not in text, f"{secret!r} left in an exported instance"


# What a profile keeps on purpose is the project's choice, not a leak.
KEPT_ON_PURPOSE = {"basic+options": {"CTLYON07"}}  # Retain Device Identity: Station Name


def _sr_item(value_type: str, **values: object) -> Dataset:
    item = Dataset()
    item.ValueType = value_type
    item.RelationshipType = "CONTAINS"
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


# case: (instances, strings that must not leave)
CASES: dict[str, tuple[Callable[[], list[Dataset]], list[str]]] = {
    # The gate looked per instance: instance 2 has no name of its own.
    "name only another instance carries": (
        lambda: study(
            {},
            {"PatientName": "", "ImageComments": "Kowalska, follow-up", "DocumentTitle": "x"},
        ),
        ["KOWALSKA"],
    ),
    "staff name in free text": (
        lambda: study(
            {"PerformingPhysicianName": "GRÜNEWALD^OTTO"},
            {"ImageComments": "reviewed by Dr Gruenewald", "DocumentTitle": "Grünewald note"},
            SpecificCharacterSet="ISO_IR 192",
        ),
        ["GRUNEWALD", "GRUENEWALD"],
    ),
    "unlisted person name attribute": (
        lambda: study({"SecondaryReviewerName": "OKONKWO^CHIDI"}),
        ["OKONKWO", "CHIDI"],
    ),
    "unlisted free text: document title": (
        lambda: study({"DocumentTitle": f"Report for HALINA KOWALSKA {MRN}"}),
        ["KOWALSKA", "HALINA", MRN],
    ),
    "SR text value inside content sequence": (
        lambda: study(
            {
                "ContentSequence": Sequence(
                    [
                        _sr_item("TEXT", TextValue="Mrs Kowalska, MRN HX 0047-113, seen 15.01.24"),
                        _sr_item("PNAME", PersonName="NAKAMURA^KENJI"),
                        _sr_item("TEXT", TextValue="Discussed with Dr Nakamura"),
                    ]
                )
            }
        ),
        ["KOWALSKA", "NAKAMURA", "0047-113", "15.01.24"],
    ),
    "institution address and station in free text": (
        lambda: study(
            {
                "SpecificCharacterSet": "ISO_IR 192",
                "InstitutionName": "Hôpital Sainte-Félicité",
                "InstitutionAddress": "12 Rue des Lilas, 69003 Lyon",
                "StationName": "CTLYON07",
                "ImageComments": "Hopital Sainte-Felicite, 12 rue des Lilas; scanner CTLYON07",
            }
        ),
        ["SAINTE-FELICITE", "12 RUE DES LILAS", "CTLYON07"],
    ),
    "issuer namespace": (
        lambda: study({"IssuerOfPatientID": "LYONMPI", "ImageComments": "id issued by LYONMPI"}),
        ["LYONMPI"],
    ),
    "study date written out in French and German": (
        lambda: study(
            {"ImageComments": "examen du 15 janvier 2024", "DocumentTitle": "15. Januar 2024"}
        ),
        ["15 JANVIER 2024", "15. JANUAR 2024"],
    ),
    "two-digit year and US order": (
        lambda: study({"ImageComments": "scan 01/15/24, born 2/29/48"}),
        ["01/15/24", "2/29/48"],
    ),
    "decomposed accents and full-width letters": (
        lambda: study(
            {"PatientName": "MÜLLER^JÜRGEN"},
            {"ImageComments": "Mu\u0308ller J", "DocumentTitle": "ＭＵＥＬＬＥＲ"},
            SpecificCharacterSet="ISO_IR 192",
        ),
        ["MULLER", "MUELLER"],
    ),
    "ID with separators changed": (
        lambda: study({"ImageComments": "rad 24/55871 and HX-0047 113"}),
        ["24/55871", "HX-0047 113"],
    ),
    "surname inside a coded value": (
        lambda: study({"ImageType": ["ORIGINAL", "PRIMARY", "KOWALSKA"]}),
        ["KOWALSKA"],
    ),
    "one-character CJK surname": (
        lambda: study(
            {"PatientName": "Wang^Xiaoming=王^小明", "SpecificCharacterSet": "ISO_IR 192"},
            {"ImageComments": "王先生 follow-up", "SpecificCharacterSet": "ISO_IR 192"},
        ),
        ["王"],
    ),
    "Hangul name with a particle": (
        lambda: study(
            {"PatientName": "Hong^Gildong=홍^길동", "SpecificCharacterSet": "ISO_IR 192"},
            {"ImageComments": "홍길동은 재검사", "SpecificCharacterSet": "ISO_IR 192"},
        ),
        ["홍길동"],
    ),
}


@pytest.mark.parametrize("profile_name", list(PROFILES))
@pytest.mark.parametrize("case", list(CASES))
def test_adversarial_study_is_exported_clean_or_quarantined(
    case: str, profile_name: str, tmp_path: Path
) -> None:
    build, secrets = CASES[case]
    secrets = [s for s in secrets if s not in KEPT_ON_PURPOSE.get(profile_name, ())]
    datasets = build()
    result = run(datasets, PROFILES[profile_name](), tmp_path)
    assert_safe(result, [*secrets, MRN, ACCESSION, "KOWALSKA", "19480229"])


CONTROLS: dict[str, Callable[[], list[Dataset]]] = {
    "surname equal to a kernel name": lambda: study(
        {"PatientName": "BONE^MARY", "ConvolutionKernel": "BONE", "SeriesDescription": "BONE"}
    ),
    "surname equal to a body part": lambda: study(
        {"PatientName": "HEAD^JOHN", "BodyPartExamined": "HEAD", "StudyDescription": "CT HEAD"}
    ),
    "French article as a name part": lambda: study(
        {"PatientName": "LE^ANH", "StudyDescription": "Scanner de la tete, coupes fines"}
    ),
    "two-letter names": lambda: study(
        {"PatientName": "NG^LI", "SeriesDescription": "LI NG AXIAL", "ConvolutionKernel": "LI"}
    ),
    "CJK name": lambda: study(
        {"PatientName": "Wang^Xiaoming=王^小明", "SpecificCharacterSet": "ISO_IR 192"}
    ),
    "Hangul name": lambda: study(
        {"PatientName": "Hong^Gildong=홍^길동", "SpecificCharacterSet": "ISO_IR 192"}
    ),
    "names equal to the engine's own words": lambda: study(
        {"PatientName": "PROFILE^BASIC", "ReferringPhysicianName": "SITE^RESEARCH"}
    ),
    "staff surname equal to a kernel name, patient elsewhere": lambda: study(
        {"OperatorsName": "STANDARD^ANN", "ConvolutionKernel": "STANDARD"}
    ),
}


@pytest.mark.parametrize("profile_name", list(PROFILES))
@pytest.mark.parametrize("control", list(CONTROLS))
def test_clean_control_is_exported(control: str, profile_name: str, tmp_path: Path) -> None:
    result = run(CONTROLS[control](), PROFILES[profile_name](), tmp_path)
    assert result.exportable, result.summary()
    assert len(result.written) == len(CONTROLS[control]())
    assert "KOWALSKA" not in exported_text(result)


def test_an_explicitly_kept_leak_is_quarantined_with_its_path(tmp_path: Path) -> None:
    profile_file = tmp_path / "keep.yaml"
    profile_file.write_text("tags:\n  - {keyword: ImageComments, op: keep}\n")
    profile = build_profile("basic", files=[profile_file])
    datasets = study({}, {"PatientName": "", "ImageComments": "Kowalska, follow-up"})
    result = run(datasets, profile, tmp_path)
    assert not result.exportable
    assert result.gate.paths == ("ImageComments",)
    assert result.gate.failed_instances == 1
    assert "KOWALSKA" not in result.summary().upper()


def test_cleaning_keeps_the_words_that_are_not_identifiers(tmp_path: Path) -> None:
    profile = build_profile("basic", [ProfileOption.CLEAN_DESCRIPTORS])
    datasets = study({"ImageComments": "Kowalska: nodule 4 mm, stable since 15/01/2024"})
    result = run(datasets, profile, tmp_path)
    assert result.exportable, result.summary()
    out = pydicom.dcmread(result.written[0])
    assert out.ImageComments == "*: nodule 4 mm, stable since *"


@pytest.mark.parametrize(("age", "kept"), [("089Y", "089Y"), ("093Y", "090Y"), ("120Y", "090Y")])
def test_an_age_over_89_is_not_kept(age: str, kept: str, tmp_path: Path) -> None:
    profile = build_profile("basic", [ProfileOption.RETAIN_PATIENT_CHARACTERISTICS])
    result = run(study({"PatientAge": age}), profile, tmp_path)
    assert result.exportable, result.summary()
    assert pydicom.dcmread(result.written[0]).PatientAge == kept


def test_a_pixel_verdict_that_is_not_exportable_holds_the_study(tmp_path: Path) -> None:
    class Held:
        exportable = False

        def summary(self) -> str:
            return "pixels quarantine: BurnedInAnnotation YES"

    files = []
    (tmp_path / "in").mkdir()
    for index, ds in enumerate(study({}, {})):
        files.append(tmp_path / "in" / f"{index}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    context = DeidContext.for_patient(PSEUDO, MRN, PSEUDO.patient_id(MRN))
    result = deidentify_study(
        files, build_profile("basic"), context, tmp_path / "out", inspect=lambda ds: Held()
    )
    assert not result.exportable
    assert result.written == ()
    assert result.summary() == "pixels quarantine: BurnedInAnnotation YES"
