"""The profile engine: layering, every operation, options, allow-list mode, references.

Profiles are written as YAML files and loaded through the real loader, and applied to
real files (pydicom's CT/MR samples, pydicom-data's 693_UNCI.dcm) and to synthetic
studies that carry PHI where hospital files do.
"""

from __future__ import annotations

import datetime
import re
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian

from pacsflow.config import ProfileOption
from pacsflow.deid.clean import IdentifierPattern
from pacsflow.deid.dates import shift_da, shift_dt
from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.profile import DeidContext, Profile, build_profile
from pacsflow.deid.profile_file import ProfileMode, load_profile_file, parse_tag
from pacsflow.deid.pseudonyms import MAX_DATE_SHIFT_DAYS, Pseudonymizer
from pacsflow.deid.rules import Operation
from pacsflow.errors import ConfigError
from pacsflow.sandbox.synthetic import PRIVATE_CREATOR, make_patients, make_study

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PSEUDO = Pseudonymizer(KEY)
PROFILES = Path(__file__).resolve().parents[2] / "profiles"
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
SAFE_CREATOR = "ACME SAFE"


def _profile(
    tmp_path: Path, text: str = "", options: list[ProfileOption] | None = None, name: str = "p"
) -> Profile:
    files = []
    if text:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        files.append(path)
    return build_profile("basic", options or [], files)


def _context(mrn: str = "MRN0000001", key: bytes = KEY) -> DeidContext:
    pseudonymizer = Pseudonymizer(key)
    return DeidContext.for_patient(pseudonymizer, mrn, pseudonymizer.patient_id(mrn))


def _study(
    mrn: str = "MRN0000001",
    accession: str = "ACC0000001",
    day: datetime.date = datetime.date(2024, 1, 2),
    n_series: int = 1,
    n_instances: int = 2,
    modality: str = "CT",
) -> list[Dataset]:
    return make_study(
        mrn=mrn,
        accession=accession,
        study_date=day,
        patient_name="SAMPLETON^PRIYA",
        birth_date=datetime.date(1967, 11, 23),
        sex="F",
        modality=modality,
        n_series=n_series,
        n_instances=n_instances,
    )


def _text(ds: Dataset) -> str:
    values = []
    for elem in ds.iterall():
        if elem.VR != "SQ" and elem.value is not None:
            value = elem.value
            values.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return "\n".join(values)


# --- every operation ----------------------------------------------------------------

OPERATIONS = """
tags:
  - {keyword: StudyDescription, op: keep}
  - {keyword: Modality, op: remove}
  - {keyword: ReferringPhysicianName, op: blank}
  - {keyword: StationName, op: dummy}
  - {keyword: InstitutionName, op: replace, value: "RESEARCH SITE"}
  - {keyword: AccessionNumber, op: hash}
  - {keyword: OtherPatientIDs, op: hash}
  - {keyword: InstanceCreatorUID, op: uid}
  - {keyword: StudyDate, op: shift_date}
  - {keyword: StudyTime, op: shift_date}
  - {keyword: ImageComments, op: clean}
  - {tag: "(0008,0022)", op: keep}
"""


def test_every_operation(tmp_path: Path) -> None:
    ds = _study()[0]
    original = deepcopy(ds)
    context = _context()
    _profile(tmp_path, OPERATIONS).deidentify(ds, context)

    assert ds.StudyDescription == original.StudyDescription  # keep
    assert "Modality" not in ds  # remove
    assert ds.ReferringPhysicianName == ""  # blank
    assert ds.StationName == "ANONYMOUS"  # dummy
    assert ds.InstitutionName == "RESEARCH SITE"  # replace
    assert ds.AccessionNumber == PSEUDO.hash_text(original.AccessionNumber, "AccessionNumber")
    assert list(ds.OtherPatientIDs) == [
        PSEUDO.hash_text(v, "OtherPatientIDs") for v in original.OtherPatientIDs
    ]
    assert ds.InstanceCreatorUID == PSEUDO.uid(original.InstanceCreatorUID)
    shifted = datetime.date(2024, 1, 2) + datetime.timedelta(days=context.date_shift_days)
    assert ds.StudyDate == shifted.strftime("%Y%m%d")  # shift_date on DA
    assert ds.StudyTime == original.StudyTime  # shift_date keeps TM: whole days only
    assert ds.ImageComments == "Patient *^* (*), acc *"  # clean
    assert ds.AcquisitionDate == original.AcquisitionDate  # keep, addressed by tag
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_unlisted_attributes_follow_the_basic_profile(tmp_path: Path) -> None:
    ds = _study()[0]
    original = deepcopy(ds)
    _profile(tmp_path, OPERATIONS).deidentify(ds, _context())
    assert "OperatorsName" not in ds  # Table E.1-1: X/Z/D -> X
    assert ds.PatientBirthDate == ""  # Z
    assert ds.SOPInstanceUID == PSEUDO.uid(original.SOPInstanceUID)  # U
    assert ds.SliceThickness == original.SliceThickness  # not in the table: kept
    assert ds.SOPClassUID == original.SOPClassUID  # class UIDs are never remapped
    assert not [e for e in ds.iterall() if e.tag.is_private]


def test_patient_pseudonym_and_deidentification_record(tmp_path: Path) -> None:
    ds = _study()[0]
    context = DeidContext(PSEUDO, "PARTICIPANT-007")  # the manifest's participant_id
    profile = _profile(tmp_path)
    profile.deidentify(ds, context)
    assert ds.PatientName == ds.PatientID == "PARTICIPANT-007"
    assert ds.PatientIdentityRemoved == "YES"
    assert profile.fingerprint in ds.DeidentificationMethod
    assert len(ds.DeidentificationMethod) <= 64
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert "LongitudinalTemporalInformationModified" not in ds


# --- layering -----------------------------------------------------------------------


def test_file_overrides_option_overrides_base(tmp_path: Path) -> None:
    def serial(profile: Profile) -> str:
        ds = _study()[0]
        profile.deidentify(ds, _context())
        return ds.get("DeviceSerialNumber")

    original = _study()[0].DeviceSerialNumber
    device = [ProfileOption.RETAIN_DEVICE_IDENTITY]
    override = "tags: [{keyword: DeviceSerialNumber, op: replace, value: SCANNER-A}]"
    assert serial(_profile(tmp_path)) == "ANONYMOUS"  # base: X/Z/D -> D
    assert serial(_profile(tmp_path, options=device)) == original  # option: K
    assert serial(_profile(tmp_path, override, options=device)) == "SCANNER-A"  # file


def test_later_file_overrides_earlier(tmp_path: Path) -> None:
    first = tmp_path / "first.yaml"
    first.write_text("tags: [{keyword: StudyDescription, op: keep}]")
    second = tmp_path / "second.yaml"
    second.write_text("tags: [{keyword: StudyDescription, op: replace, value: CT}]")
    ds = _study()[0]
    build_profile("basic", [], [first, second]).deidentify(ds, _context())
    assert ds.StudyDescription == "CT"
    ds = _study()[0]
    original = ds.StudyDescription
    build_profile("basic", [], [second, first]).deidentify(ds, _context())
    assert ds.StudyDescription == original


MANUFACTURER = """
tags:
  - {keyword: StudyDescription, op: keep}
manufacturers:
  - match: "(?i)^acme"
    tags:
      - {keyword: StudyDescription, op: replace, value: "ACME STUDY"}
      - {keyword: Manufacturer, op: replace, value: "ACME"}
"""


@pytest.mark.parametrize(
    ("manufacturer", "expected"),
    [("ACME Medical", "ACME STUDY"), ("acme", "ACME STUDY"), ("Not ACME", None)],
)
def test_manufacturer_override_applies_only_on_match(
    tmp_path: Path, manufacturer: str, expected: str | None
) -> None:
    ds = _study()[0]
    ds.Manufacturer = manufacturer
    original = ds.StudyDescription
    profile = _profile(tmp_path, MANUFACTURER)
    profile.deidentify(ds, _context())
    assert ds.StudyDescription == (expected or original)
    assert profile.allows(0x00081030, manufacturer=manufacturer)


# --- allow-list mode ----------------------------------------------------------------

ALLOW = """
mode: allow_list
tags:
  - {keyword: SliceThickness, op: keep}
  - {keyword: AccessionNumber, op: hash}
  - {keyword: ReferencedImageSequence, op: keep}
"""


def test_allow_list_removes_unlisted_public_attributes(tmp_path: Path) -> None:
    ds = _study()[0]
    original = deepcopy(ds)
    profile = _profile(tmp_path, ALLOW)
    assert profile.mode is ProfileMode.ALLOW_LIST
    profile.deidentify(ds, _context())
    assert ds.SliceThickness == original.SliceThickness  # listed
    assert "KVP" not in ds  # unlisted, kept by the Basic Profile, removed here
    assert "StudyDescription" not in ds
    assert ds.AccessionNumber == PSEUDO.hash_text(original.AccessionNumber, "AccessionNumber")
    # Required for a valid instance.
    assert ds.SOPClassUID == original.SOPClassUID
    assert ds.SOPInstanceUID == PSEUDO.uid(original.SOPInstanceUID)
    assert ds.PixelData == original.PixelData
    assert ds.StudyDate == ""  # Type 2: present, empty
    ref = ds.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == PSEUDO.uid(
        original.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    )
    assert not profile.allows(0x00180060)  # KVP
    assert profile.allows(0x00180050)  # Slice Thickness


def test_allow_list_cannot_be_switched_off_by_a_later_file(tmp_path: Path) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("mode: allow_list")
    loose = tmp_path / "loose.yaml"
    loose.write_text("mode: profile")
    with pytest.raises(ConfigError, match=r"disagree on mode .*strict.yaml: allow_list"):
        build_profile("basic", [], [strict, loose])


# --- private attributes by creator -------------------------------------------------

SAFE = f"""
safe_private:
  - {{private_creator: "{SAFE_CREATOR}", group: 0x0029, element: 0x10}}
"""


def _with_private(block_number: int = 0x10) -> Dataset:
    ds = _study()[0]
    # Another creator reserved block 0x10 first, so ACME SAFE lands in another block.
    if block_number != 0x10:
        ds.add_new(0x00290010, "LO", "SOMEONE ELSE")
        ds.add_new(0x00291010, "LO", "MRN0000001")
    ds.add_new((0x0029 << 16) | block_number, "LO", SAFE_CREATOR)
    ds.add_new((0x0029 << 16) | block_number << 8 | 0x10, "DS", "1.5")
    ds.add_new((0x0029 << 16) | block_number << 8 | 0x11, "LO", "MRN0000001")
    return ds


@pytest.mark.parametrize("block", [0x10, 0x11])
def test_safe_private_kept_only_with_the_option(tmp_path: Path, block: int) -> None:
    safe = [ProfileOption.RETAIN_SAFE_PRIVATE]
    ds = _with_private(block)
    profile = _profile(tmp_path, SAFE, options=safe)
    profile.deidentify(ds, _context())
    kept = ds.private_block(0x0029, SAFE_CREATOR)
    assert kept[0x10].value == "1.5"
    assert 0x11 not in kept  # same creator, element not listed
    assert "MRN0000001" not in _text(ds)
    assert PRIVATE_CREATOR not in _text(ds)  # the synthetic study's own block
    assert "SOMEONE ELSE" not in _text(ds)  # a creator whose block became empty
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113111"]
    assert profile.allows(0x00291010 if block == 0x10 else 0x00291110, SAFE_CREATOR)
    assert profile.allows(0x00290010, SAFE_CREATOR)  # its Private Creator
    assert not profile.allows(0x00291011, SAFE_CREATOR)
    assert not profile.allows(0x00291010, "SOMEONE ELSE")
    assert not profile.allows(0x00291010)  # a private tag without its creator

    ds = _with_private(block)
    _profile(tmp_path, SAFE).deidentify(ds, _context())  # listed, option not enabled
    assert not [e for e in ds.iterall() if e.tag.is_private]


def test_safe_private_option_needs_a_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retain_safe_private is set but no profile file"):
        _profile(tmp_path, options=[ProfileOption.RETAIN_SAFE_PRIVATE])


def test_private_rule_in_tags_applies_without_the_option(tmp_path: Path) -> None:
    text = f"""
tags:
  - {{private_creator: "{SAFE_CREATOR}", group: 0x0029, element: 0x1011, op: hash}}
"""
    ds = _with_private()
    _profile(tmp_path, text).deidentify(ds, _context())
    block = ds.private_block(0x0029, SAFE_CREATOR)
    assert block[0x11].value == PSEUDO.hash_text("MRN0000001", f"(0029,xx11) of {SAFE_CREATOR!r}")
    assert 0x10 not in block


# --- sequences and references ------------------------------------------------------


def test_sequences_nested_three_deep(tmp_path: Path) -> None:
    ds = _study()[0]
    level3 = Dataset()
    level3.PersonName = "FITZWILLIAM^ORIANA"  # Table E.1-1: D
    level3.OperatorsName = "TECH^TINA"  # X
    level3.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    level3.StudyDescription = "CT FOR SAMPLETON"
    level3.add_new(0x00091010, "LO", "private at depth 3")
    level2 = Dataset()
    level2.ContentSequence = Sequence([level3])
    level1 = Dataset()
    level1.ContentSequence = Sequence([level2])
    ds.ContentSequence = Sequence([level1])

    profile = _profile(tmp_path, "tags: [{keyword: StudyDescription, op: clean}]")
    profile.deidentify(ds, _context())
    deep = ds.ContentSequence[0].ContentSequence[0].ContentSequence[0]
    assert deep.PersonName == "ANONYMOUS"
    assert "OperatorsName" not in deep
    assert deep.ReferencedSOPInstanceUID == PSEUDO.uid("1.2.3.4.5.6.7")
    assert deep.StudyDescription == "CT FOR *"
    assert 0x00091010 not in deep


def test_references_equal_the_referenced_instance_uid(tmp_path: Path) -> None:
    a, b = _study(n_instances=2)
    original_b = b.SOPInstanceUID
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = a.SeriesInstanceUID
    instance_ref = Dataset()
    instance_ref.ReferencedSOPClassUID = CTImageStorage
    instance_ref.ReferencedSOPInstanceUID = original_b
    series_ref.ReferencedInstanceSequence = Sequence([instance_ref])
    a.ReferencedSeriesSequence = Sequence([series_ref])
    source = Dataset()
    source.ReferencedSOPClassUID = CTImageStorage
    source.ReferencedSOPInstanceUID = original_b
    a.SourceImageSequence = Sequence([source])

    profile = _profile(tmp_path, (PROFILES / "longitudinal-ct.yaml").read_text())
    for ds in (a, b):
        profile.deidentify(ds, _context())
    assert a.SourceImageSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    ref = a.ReferencedSeriesSequence[0]
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert ref.SeriesInstanceUID == a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPClassUID == CTImageStorage


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=6),
    roots=st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=3),
)
def test_uid_remap_keeps_references_within_a_study(n: int, roots: list[int]) -> None:
    profile = build_profile("basic")
    study_uid = "1.2." + ".".join(map(str, roots))
    uids = [f"{study_uid}.{i + 1}" for i in range(n)]
    datasets = []
    for index, uid in enumerate(uids):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = study_uid
        ref = Dataset()
        ref.ReferencedSOPClassUID = CTImageStorage
        ref.ReferencedSOPInstanceUID = uids[(index + 1) % n]
        ds.ReferencedImageSequence = Sequence([ref])
        datasets.append(ds)
    for ds in datasets:
        profile.deidentify(ds, DeidContext(PSEUDO, "P"))
    new = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(new)) == n
    assert not set(new) & set(uids)
    for index, ds in enumerate(datasets):
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new[(index + 1) % n]
        assert ds.StudyInstanceUID == datasets[0].StudyInstanceUID
        assert UID_RE.match(ds.SOPInstanceUID) and len(ds.SOPInstanceUID) <= 64


# --- dates --------------------------------------------------------------------------


def test_date_shift_consistent_per_patient_and_different_across_patients(tmp_path: Path) -> None:
    profile = _profile(tmp_path, options=[ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES])
    one, two = make_patients(2, seed=3)
    first = _study(one.mrn, "ACC1", datetime.date(2024, 1, 2))[0]
    follow_up = _study(one.mrn, "ACC2", datetime.date(2024, 3, 1))[0]
    other = _study(two.mrn, "ACC3", datetime.date(2024, 1, 2))[0]
    for ds, patient in ((first, one), (follow_up, one), (other, two)):
        profile.deidentify(ds, _context(patient.mrn))

    def day(value: str) -> datetime.date:
        return datetime.datetime.strptime(value, "%Y%m%d").date()

    assert day(follow_up.StudyDate) - day(first.StudyDate) == datetime.timedelta(days=59)
    assert first.StudyDate != "20240102"
    assert other.StudyDate != first.StudyDate
    expected = datetime.date(2024, 1, 2) + datetime.timedelta(PSEUDO.date_shift_days(one.mrn))
    assert day(first.StudyDate) == expected
    assert first.SeriesDate == first.AcquisitionDate == first.ContentDate == first.StudyDate
    assert first.StudyTime == _study(one.mrn, "ACC1")[0].StudyTime  # TM kept (option)
    assert first.PatientBirthDate == ""  # not shifted: Basic Profile Z
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [c.CodeValue for c in first.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]


def test_dates_shift_even_where_the_table_is_silent(tmp_path: Path) -> None:
    ds = _study()[0]
    ds.DateOfLastCalibration = "20231224"  # kept by the Basic Profile, not in Table E.1-1
    context = _context()
    _profile(tmp_path, options=[ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES]).deidentify(
        ds, context
    )
    assert ds.DateOfLastCalibration == shift_da("20231224", context.date_shift_days)


def test_shifting_profile_needs_a_date_shift(tmp_path: Path) -> None:
    profile = _profile(tmp_path, options=[ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES])
    with pytest.raises(ValueError, match=r"date_shift_days is 0; build the context with"):
        profile.deidentify(_study()[0], DeidContext(PSEUDO, "P"))


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20240102", -2, "20231231"),
        ("2024.01.02", -1, "20240101"),  # ACR-NEMA form
        ("20240101-20240131", -1, "20231231-20240130"),
        ("not a date", -1, ""),
        ("", -1, ""),
    ],
)
def test_shift_da(value: str, days: int, expected: str) -> None:
    assert shift_da(value, days) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240102", "20231231"),  # a DT without time stays date-only
        ("20240102083000", "20231231083000"),
        ("20240102083000.123456+0100", "20231231083000.123456+0100"),
        ("202401", "202401"),  # month precision: shifted from mid-month
        ("2024", "2024"),
        ("2024013", ""),
    ],
)
def test_shift_dt(value: str, expected: str) -> None:
    assert shift_dt(value, -2) == expected


# --- options ------------------------------------------------------------------------


def test_option_codes_and_retained_attributes(tmp_path: Path) -> None:
    options = [
        ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        ProfileOption.RETAIN_PATIENT_CHARACTERISTICS,
        ProfileOption.RETAIN_DEVICE_IDENTITY,
        ProfileOption.CLEAN_DESCRIPTORS,
    ]
    ds = _study()[0]
    original = deepcopy(ds)
    _profile(tmp_path, options=options).deidentify(ds, _context())
    codes = {c.CodeValue: c.CodeMeaning for c in ds.DeidentificationMethodCodeSequence}
    assert set(codes) == {"113100", "113107", "113108", "113109", "113105"}
    assert codes["113108"] == "Retain Patient Characteristics Option"
    assert (ds.PatientSex, ds.PatientAge) == (original.PatientSex, original.PatientAge)
    assert ds.StationName == original.StationName  # device identity
    assert ds.DeviceSerialNumber == original.DeviceSerialNumber
    assert ds.StudyDescription == original.StudyDescription.replace("SAMPLETON", "*")
    assert ds.AdditionalPatientHistory == "* * referred, *"  # name words, any case
    assert "InstitutionName" not in ds  # no option retains it


# --- clean --------------------------------------------------------------------------


def test_clean_removes_identifiers_and_keeps_the_rest() -> None:
    ds = _study()[0]
    pattern = IdentifierPattern.from_dataset(ds)
    text = (
        f"{ds.PatientName} seen 23/11/1967 and 2024-01-02, MRN {ds.PatientID}, "
        f"acc {ds.AccessionNumber}, NHS 9434765919, CT CHEST 5mm, SERIES 3, "
        "ref Dr House, Sampleton's scan"
    )
    assert pattern.clean(text) == (
        "*^* seen * and *, MRN *, acc *, NHS *, CT CHEST 5mm, SERIES 3, ref Dr *, *'s scan"
    )


# --- profile files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{keyword: StudyDescriptio, op: keep}",
            r"tags\[0\] \(StudyDescriptio\): unknown "
            r"DICOM keyword 'StudyDescriptio'; did you mean StudyDescription",
        ),
        (
            "{keyword: StudyDate, op: hash}",
            r"tags\[0\] \(StudyDate\): op hash does not apply "
            r"to StudyDate \(VR DA\)",
        ),
        ("{keyword: StudyDate, op: clean}", r"op clean does not apply to StudyDate"),
        ("{keyword: Modality, op: shift_date}", r"op shift_date does not apply to Modality"),
        ("{keyword: InstitutionName, op: replace}", r"op replace needs a value"),
        ("{keyword: InstitutionName, op: keep, value: X}", r"value is only used with op replace"),
        ("{keyword: StudyDescription, op: scrub}", r"tags\[0\] \(StudyDescription\)\.op: Input"),
        ("{keyword: PatientID, op: keep}", r"PatientID is set by pacsflow"),
        ("{tag: '(0019,1092)', op: keep}", r"is private; address private attributes with"),
        ("{tag: '0008-1030', op: keep}", r"not of the form"),
        ("{private_creator: X, group: 0x0018, element: 0x92, op: keep}", r"not a private group"),
        ("{private_creator: X, group: 0x0019, op: keep}", r"needs private_creator, group and"),
        ("{keyword: Modality, tag: '(0008,0060)', op: keep}", r"exactly one of keyword, tag"),
    ],
)
def test_invalid_entries_name_file_entry_and_key(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"tags:\n  - {entry}\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r": invalid profile file"):
        load_profile_file(path)
    with pytest.raises(ConfigError, match=message):
        load_profile_file(path)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.yaml: no such profile file"):
        build_profile("basic", [], [tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("tags: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile_file(bad)
    bad.write_text("manufacturers: [{match: '(', tags: [{keyword: Modality, op: keep}]}]")
    with pytest.raises(ConfigError, match=r"manufacturers\[0\] \(\(\)\.match: .*not a valid"):
        load_profile_file(bad)
    bad.write_text("colour: blue")
    with pytest.raises(ConfigError, match=r"colour: Extra inputs are not permitted"):
        load_profile_file(bad)
    with pytest.raises(ConfigError, match=r"unknown de-identification profile 'full'"):
        build_profile("full")
    with pytest.raises(ConfigError, match=r"unknown profile option.*retain_device_identity"):
        build_profile("basic", ["retain_everything"])


def test_tag_forms_and_private_element_forms(tmp_path: Path) -> None:
    assert parse_tag("(0018,1030)") == parse_tag("0018,1030") == parse_tag("00181030")
    path = tmp_path / "p.yaml"
    path.write_text(
        "tags:\n"
        "  - {private_creator: 'A ', group: '0x0019', element: 0x1092, op: keep}\n"
        "  - {private_creator: B, group: 25, element: '92', op: keep}\n"
    )
    targets = [str(entry.target()) for entry in load_profile_file(path).tags]
    assert targets == ["(0019,xx92) of 'A'", "(0019,xx92) of 'B'"]


# --- allows and fingerprint ---------------------------------------------------------


def test_allows_follows_the_rules(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "tags: [{keyword: InstitutionName, op: keep}]")
    assert profile.allows(0x00080080)  # kept by the file
    assert not profile.allows(0x00101000)  # Other Patient IDs: X
    assert profile.allows(0x00100030)  # Patient's Birth Date: Z, survives empty
    assert profile.allows(0x00180050)  # not in the table: kept
    assert not profile.allows(0x60003000)  # overlay data
    assert not profile.allows(0x00200000)  # group length
    assert profile.allows(0x00120063)  # set by pacsflow
    assert profile.allows(0x00020010) and not profile.allows(0x00020016)
    assert profile.rule_for(0x00080080).op is Operation.KEEP


def test_fingerprint_is_stable_and_tracks_what_the_profile_does(tmp_path: Path) -> None:
    a = _profile(tmp_path, "tags: [{keyword: StudyDescription, op: keep}]", name="a")
    b = _profile(tmp_path, "tags: [{keyword: StudyDescription, op: keep}]", name="b")
    c = _profile(tmp_path, "tags: [{keyword: StudyDescription, op: clean}]", name="c")
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint)
    assert a.fingerprint == b.fingerprint  # same rules from another file name
    assert a.fingerprint != c.fingerprint
    assert a.fingerprint != build_profile("basic").fingerprint
    longitudinal = build_profile("basic", [ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES])
    assert longitudinal.fingerprint != build_profile("basic").fingerprint


# --- pseudonyms ---------------------------------------------------------------------


@given(key=st.binary(min_size=16, max_size=64), value=st.text(min_size=1, max_size=80))
def test_date_shift_deterministic_per_key_nonzero_and_in_range(key: bytes, value: str) -> None:
    # Pseudonyms differing across keys is tested in test_deid.py.
    shift = Pseudonymizer(key).date_shift_days(value)
    assert shift == Pseudonymizer(key).date_shift_days(value)
    assert -MAX_DATE_SHIFT_DAYS <= shift <= -1


def test_date_shift_differs_across_patients_and_keys() -> None:
    shifts = {PSEUDO.date_shift_days(f"MRN{i:07d}") for i in range(200)}
    assert len(shifts) > 150  # spread over the range, not a handful of values
    assert PSEUDO.date_shift_days("MRN1") != Pseudonymizer(OTHER_KEY).date_shift_days("MRN1")
    with pytest.raises(ValueError, match="patient_key is empty; pass the MRN"):
        PSEUDO.date_shift_days("")


# --- real files, read/de-identify/write --------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "693_UNCI.dcm"])
@pytest.mark.parametrize("profile_file", ["longitudinal-ct.yaml", "pixl-like-allow-list.yaml"])
def test_real_files_through_example_profiles(tmp_path: Path, name: str, profile_file: str) -> None:
    src = Path(get_testdata_file(name))
    original = pydicom.dcmread(src)
    options = [ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES]
    profile = build_profile("basic", options, [PROFILES / profile_file])
    ds = read_instance(src)
    profile.deidentify(ds, _context(str(original.PatientID)))
    dst = write_instance(ds, tmp_path / "out" / name)
    raw = dst.read_bytes()
    out = pydicom.dcmread(dst)
    for uid in (original.SOPInstanceUID, original.StudyInstanceUID, original.SeriesInstanceUID):
        assert str(uid).encode() not in raw
    for word in str(original.PatientName).split("^"):
        if len(word) > 3:
            assert word.encode() not in raw, word
    assert out.SOPInstanceUID == PSEUDO.uid(original.SOPInstanceUID)
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert out.PixelData == original.PixelData
    for elem in out.iterall():
        assert profile.allows(elem.tag, _creator(out, elem.tag), str(out.get("Manufacturer", "")))
    assert not list((tmp_path / "out").glob(".*.part"))


def _creator(ds: Dataset, tag: pydicom.tag.BaseTag) -> str | None:
    if not tag.is_private:
        return None
    if tag.is_private_creator:
        return str(ds[tag].value)
    creator = ds.get((tag.group << 16) | (tag.element >> 8))
    return str(creator.value) if creator is not None else None


def test_write_keeps_implicit_transfer_syntax(tmp_path: Path) -> None:
    ds = _study()[0]
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True, implicit_vr=True, little_endian=True)
    read = read_instance(src)
    build_profile("basic").deidentify(read, _context())
    out = pydicom.dcmread(write_instance(read, tmp_path / "out.dcm"))
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert out.PatientID == PSEUDO.patient_id("MRN0000001")
