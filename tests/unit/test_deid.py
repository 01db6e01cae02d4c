"""De-identification checked the way a data-protection officer would check it.

The assertions look at the written bytes as well as the decoded values: an identifier
that survives in a preamble, a private tag or a nested sequence is a breach even if the
top-level attribute looks clean.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsflow.deid.basic_profile import (
    BASIC_PROFILE,
    BASIC_PROFILE_CODES,
    KEEP_UID_TAGS,
    Action,
    action_for,
)
from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.profile import PROFILE_NAMES, DeidContext, build_profile, check_profile
from pacsflow.deid.pseudonyms import Pseudonymizer, new_key
from pacsflow.errors import ConfigError

BASIC = build_profile("basic")


def deidentify_dataset(ds, pseudonymizer: Pseudonymizer, pseudonym: str):
    """The Basic Profile with no options or files, as the pipeline applies it."""
    return BASIC.deidentify(ds, DeidContext(pseudonymizer, pseudonym))


def deidentify_file(src: Path, dst: Path, pseudonymizer: Pseudonymizer, pseudonym: str) -> None:
    ds = read_instance(src)
    deidentify_dataset(ds, pseudonymizer, pseudonym)
    write_instance(ds, dst)


KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PSEUDONYM = Pseudonymizer(KEY).patient_id("MRN48213977")

# PS3.5 9.1: components without leading zeros, at most 64 characters.
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

MRN = "MRN48213977"
ACCESSION = "ACC77441122"
OTHER_ID = "OPID5550123"
BIRTH_DATE = "19671123"
PATIENT_NAME = "Zbyszewska^Henrietta"
REFERRER = "Quartermaine^Evelynne"
NESTED_PERSON = "Fitzwilliam^Oriana"
OPERATOR = "Brightwater^Cassius"
INSTITUTION = "St Wilgefortis Hospital"
STUDY_UID = "1.2.826.0.1.3680043.2.1143.555.1"
SERIES_UID = "1.2.826.0.1.3680043.2.1143.555.1.2"
FRAME_UID = "1.2.826.0.1.3680043.2.1143.555.1.3"
INSTANCE_A = "1.2.826.0.1.3680043.2.1143.555.1.2.100"
INSTANCE_B = "1.2.826.0.1.3680043.2.1143.555.1.2.101"

SECRETS = [
    MRN,
    ACCESSION,
    OTHER_ID,
    BIRTH_DATE,
    *PATIENT_NAME.split("^"),
    *REFERRER.split("^"),
    *NESTED_PERSON.split("^"),
    *OPERATOR.split("^"),
    INSTITUTION,
    STUDY_UID,
    SERIES_UID,
    FRAME_UID,
    INSTANCE_A,
    INSTANCE_B,
]


def _instance(sop_uid: str, referenced_uid: str | None = None) -> Dataset:
    """A small CT instance that hides identifiers in every place we know of."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FRAME_UID
    ds.Modality = "CT"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = MRN
    ds.PatientBirthDate = BIRTH_DATE
    ds.OtherPatientIDs = OTHER_ID
    ds.AccessionNumber = ACCESSION
    ds.ReferringPhysicianName = REFERRER
    ds.InstitutionName = INSTITUTION
    ds.DeviceSerialNumber = "SN-" + MRN
    ds.StudyDate = "20240102"
    ds.ContentDate = "20240102"
    ds.RetrieveURL = f"https://pacs.example.org/wado/studies/{STUDY_UID}"
    ds.add_new(0x00200000, "UL", 1234)  # retired group length, would be stale
    # A private block naming the MRN, at top level and inside a sequence item.
    ds.private_block(0x0009, "ACME HOSPITAL", create=True).add_new(0x01, "LO", MRN)
    # Curve data and an overlay with comments (PS3.15 Table E.1-1: X).
    ds.add_new(0x50000010, "US", 4)
    ds.add_new(0x50003000, "OW", MRN.encode() + b"\x00")
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60003000, "OW", b"\x00" * 8)
    ds.add_new(0x60004000, "LT", f"drawn by {OPERATOR}")

    content = Dataset()
    content.ValueType = "PNAME"
    content.PersonName = NESTED_PERSON  # nested sequence holding a PN (Table E.1-1: D)
    operator_item = Dataset()
    operator_item.OperatorsName = OPERATOR
    instance_ref = Dataset()
    instance_ref.ReferencedSOPClassUID = CTImageStorage
    instance_ref.ReferencedSOPInstanceUID = referenced_uid or INSTANCE_B
    instance_ref.private_block(0x0011, "ACME HOSPITAL", create=True).add_new(0x02, "LO", MRN)
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = SERIES_UID
    series_ref.ReferencedInstanceSequence = Sequence([instance_ref])
    series_ref.ContentSequence = Sequence([content, operator_item])
    ds.ReferencedSeriesSequence = Sequence([series_ref])
    if referenced_uid is not None:
        source = Dataset()
        source.ReferencedSOPClassUID = CTImageStorage
        source.ReferencedSOPInstanceUID = referenced_uid
        ds.SourceImageSequence = Sequence([source])

    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "WILGEFORTIS_PACS"
    ds.preamble = (b"preamble of " + MRN.encode()).ljust(128, b"\x00")
    return ds


def _write(ds: Dataset, path: Path, implicit: bool = False) -> Path:
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return path


def _text_values(ds: Dataset) -> Iterator[str]:
    for elem in [*ds.file_meta, *ds.iterall()]:
        if elem.VR == "SQ" or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
        for value in values:
            yield value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _instance_uids(ds: Dataset) -> set[str]:
    """Original UIDs that must not survive: every UI value except class/syntax UIDs."""
    found = set()
    for elem in [*ds.file_meta, *ds.iterall()]:
        if elem.VR == "UI" and elem.tag not in KEEP_UID_TAGS and elem.value:
            found.add(str(elem.value))
    return found


@pytest.fixture
def synthetic_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two instances of one study; A derives from B (Source Image Sequence)."""
    b = _write(_instance(INSTANCE_B), tmp_path / "in" / "b.dcm")
    a = _write(_instance(INSTANCE_A, referenced_uid=INSTANCE_B), tmp_path / "in" / "a.dcm")
    return a, b


def _deid(src: Path, dst: Path, key: bytes = KEY) -> Dataset:
    deidentify_file(src, dst, Pseudonymizer(key), PSEUDONYM)
    return pydicom.dcmread(dst)


# --- pseudonyms ---------------------------------------------------------------------


def test_uid_is_a_valid_225_uid() -> None:
    uid = Pseudonymizer(KEY).uid(INSTANCE_A)
    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    assert UID_RE.match(uid)
    assert uid == Pseudonymizer(KEY).uid(INSTANCE_A)
    assert uid != Pseudonymizer(OTHER_KEY).uid(INSTANCE_A)


def test_patient_id_is_short_and_valid_in_lo_and_pn() -> None:
    pid = Pseudonymizer(KEY).patient_id(MRN)
    assert re.fullmatch(r"[A-Z2-7]{16}", pid)
    assert pid != Pseudonymizer(KEY).hash_text(MRN, "patient")


def test_hash_text_is_separated_by_purpose() -> None:
    p = Pseudonymizer(KEY)
    assert p.hash_text(ACCESSION, "accession") == p.hash_text(ACCESSION, "accession")
    assert p.hash_text(ACCESSION, "accession") != p.hash_text(ACCESSION, "study-id")
    assert len(p.hash_text(ACCESSION, "accession")) == 16  # fits SH


def test_hash_text_rejects_nul_in_purpose() -> None:
    with pytest.raises(ValueError, match="purpose must not contain NUL"):
        Pseudonymizer(KEY).hash_text("x", "a\x00b")


@given(
    key=st.binary(min_size=16, max_size=64),
    other=st.binary(min_size=16, max_size=64),
    value=st.text(min_size=1, max_size=80),
)
def test_pseudonyms_deterministic_per_key_and_differ_across_keys(
    key: bytes, other: bytes, value: str
) -> None:
    a, a_again, b = Pseudonymizer(key), Pseudonymizer(key), Pseudonymizer(other)
    assert a.uid(value) == a_again.uid(value)
    assert a.patient_id(value) == a_again.patient_id(value)
    assert a.hash_text(value, "accession") == a_again.hash_text(value, "accession")
    uid = a.uid(value)
    assert uid.startswith("2.25.") and len(uid) <= 64 and UID_RE.match(uid)
    if key != other:
        assert a.uid(value) != b.uid(value)
        assert a.patient_id(value) != b.patient_id(value)


def test_short_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"key is 15 bytes; at least 16 bytes are required"):
        Pseudonymizer(b"x" * 15)


def test_non_bytes_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="key must be bytes, got str"):
        Pseudonymizer("0" * 64)  # type: ignore[arg-type]


def test_from_hex_round_trips_new_key_and_rejects_bad_hex() -> None:
    key = new_key()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert Pseudonymizer.from_hex(key).key == bytes.fromhex(key)
    assert new_key() != key
    with pytest.raises(ConfigError, match="not a valid hex string"):
        Pseudonymizer.from_hex("not hex")
    with pytest.raises(ConfigError, match="key is 8 bytes"):
        Pseudonymizer.from_hex("00" * 8)


def test_key_never_appears_in_repr() -> None:
    assert KEY.hex() not in repr(Pseudonymizer(KEY))
    assert repr(KEY) not in repr(Pseudonymizer(KEY))


# --- the table ----------------------------------------------------------------------


def test_table_is_complete_and_resolved() -> None:
    assert len(BASIC_PROFILE_CODES) > 600  # PS3.15 2026c Table E.1-1 has ~650 rows
    codes = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert set(BASIC_PROFILE_CODES.values()) <= codes
    assert set(BASIC_PROFILE.values()) <= set(Action)
    expected = {
        0x00100010: Action.ZERO,  # Patient's Name: Z
        0x00080050: Action.ZERO,  # Accession Number: Z
        0x00101000: Action.REMOVE,  # Other Patient IDs: X
        0x00080080: Action.REMOVE,  # Institution Name: X/Z/D, Type 3
        0x00181000: Action.DUMMY,  # Device Serial Number: X/Z/D, Type 1 in enhanced IODs
        0x00400555: Action.ZERO,  # Acquisition Context Sequence: X/Z, Type 2
        0x00080018: Action.UID,  # SOP Instance UID: U
        0x00081140: Action.UID,  # Referenced Image Sequence: X/Z/U*
        0x00082112: Action.UID,  # Source Image Sequence: X/Z/U*
        0x00080023: Action.DUMMY,  # Content Date: Z/D, Type 1 in enhanced IODs
    }
    for tag, action in expected.items():
        assert BASIC_PROFILE[tag] is action, hex(tag)


@pytest.mark.parametrize(
    ("tag", "action"),
    [
        (0x00091001, Action.REMOVE),  # private
        (0x00290010, Action.REMOVE),  # private creator
        (0x50001000, Action.REMOVE),  # curve data (50xx,xxxx)
        (0x501E3000, Action.REMOVE),
        (0x60003000, Action.REMOVE),  # overlay data
        (0x60024000, Action.REMOVE),  # overlay comments
        (0x60000010, Action.REMOVE),  # rest of the overlay group
        (0x7FE00010, None),  # pixel data: kept
        (0x00080016, None),  # SOP Class UID: not in the table
    ],
)
def test_action_for_attribute_classes(tag: int, action: Action | None) -> None:
    assert action_for(tag) is action


def test_check_profile() -> None:
    assert {"basic"} == PROFILE_NAMES
    check_profile("basic")
    with pytest.raises(ConfigError, match=r"unknown de-identification profile 'full'.*basic"):
        check_profile("full")


# --- whole files --------------------------------------------------------------------


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_no_identifier_survives_anywhere(tmp_path: Path, implicit: bool) -> None:
    instance = _instance(INSTANCE_A, referenced_uid=INSTANCE_B)
    src = _write(instance, tmp_path / "in" / "a.dcm", implicit=implicit)
    original_raw = src.read_bytes()
    for secret in SECRETS:  # the test is only as good as what the input hides
        assert secret.encode() in original_raw, secret
    out = _deid(src, tmp_path / "out" / "a.dcm")
    raw = (tmp_path / "out" / "a.dcm").read_bytes()
    values = "\n".join(_text_values(out))
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
        assert secret not in values, secret
    assert b"WILGEFORTIS" not in raw
    assert out.file_meta.TransferSyntaxUID == (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    )


def test_private_curve_overlay_and_group_length_removed(synthetic_pair) -> None:
    a, _ = synthetic_pair
    out = _deid(a, a.parent.parent / "out" / "a.dcm")
    tags = [elem.tag for elem in out.iterall()]
    assert not [t for t in tags if t.is_private]
    assert not [t for t in tags if t.group >> 8 in (0x50, 0x60)]
    assert not [t for t in tags if t.element == 0]
    assert "RetrieveURL" not in out
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_values_follow_the_table(synthetic_pair) -> None:
    a, _ = synthetic_pair
    out = _deid(a, a.parent.parent / "out" / "a.dcm")
    assert out.PatientName == PSEUDONYM
    assert out.PatientID == PSEUDONYM
    assert out.PatientBirthDate == ""  # Z
    assert out.AccessionNumber == ""  # Z
    assert out.ReferringPhysicianName == ""  # Z
    assert "OtherPatientIDs" not in out  # X
    assert "InstitutionName" not in out  # X/Z/D -> X
    assert out.DeviceSerialNumber == "ANONYMOUS"  # X/Z/D -> D
    assert out.ContentDate == "19000101"  # Z/D -> D
    assert out.Modality == "CT"  # not in the table: kept
    nested = out.ReferencedSeriesSequence[0].ContentSequence
    assert nested[0].PersonName == "ANONYMOUS"  # D inside a nested sequence
    assert "OperatorsName" not in nested[1]  # X inside a nested sequence
    assert out.PatientIdentityRemoved == "YES"
    assert "pacsflow" in out.DeidentificationMethod
    code = out.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "113100",
        "DCM",
        "Basic Application Confidentiality Profile",
    )


def test_references_stay_consistent_across_instances(synthetic_pair) -> None:
    a, b = synthetic_pair
    out_dir = a.parent.parent / "out"
    new_a, new_b = _deid(a, out_dir / "a.dcm"), _deid(b, out_dir / "b.dcm")
    assert new_a.SourceImageSequence[0].ReferencedSOPInstanceUID == new_b.SOPInstanceUID
    ref = new_b.ReferencedSeriesSequence[0]
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == new_b.SOPInstanceUID
    assert ref.SeriesInstanceUID == new_a.SeriesInstanceUID == new_b.SeriesInstanceUID
    assert new_a.StudyInstanceUID == new_b.StudyInstanceUID
    assert new_a.SOPInstanceUID != new_b.SOPInstanceUID
    assert new_a.SOPClassUID == CTImageStorage  # class UIDs are not remapped
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPClassUID == CTImageStorage


def test_uids_deterministic_per_key(synthetic_pair) -> None:
    a, _ = synthetic_pair
    out_dir = a.parent.parent / "out"
    first = _deid(a, out_dir / "1.dcm")
    again = _deid(a, out_dir / "2.dcm")
    other = _deid(a, out_dir / "3.dcm", key=OTHER_KEY)
    uids = _instance_uids(first)
    assert uids and all(u.startswith("2.25.") and UID_RE.match(u) for u in uids)
    assert uids == _instance_uids(again)
    assert not uids & _instance_uids(other)
    assert first.SOPInstanceUID == Pseudonymizer(KEY).uid(INSTANCE_A)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_real_files(tmp_path: Path, name: str) -> None:
    src = Path(get_testdata_file(name))
    original = pydicom.dcmread(src)
    original_uids = _instance_uids(original)
    identifiers = [
        str(original.PatientID),
        *str(original.PatientName).split("^"),
        *original_uids,
    ]
    institution = str(original.get("InstitutionName", ""))
    if institution and institution not in str(original.get("Manufacturer", "")):
        identifiers.append(institution)  # MR_small's "TOSHIBA" is in "TOSHIBA_MEC", kept

    dst = tmp_path / "out" / "nested" / name
    out = _deid(src, dst)
    raw = dst.read_bytes()
    for identifier in identifiers:
        assert identifier.encode() not in raw, identifier
    assert raw[:128] == b"\x00" * 128  # CT_small's preamble holds a TIFF header
    assert out.PixelData == original.PixelData
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPInstanceUID == Pseudonymizer(KEY).uid(original.SOPInstanceUID)
    assert out.SOPClassUID == original.SOPClassUID
    assert out.PatientIdentityRemoved == "YES"
    assert "InstitutionName" not in out
    assert not original_uids & _instance_uids(out)
    assert not list(tmp_path.glob("out/nested/.*.part"))


def test_deidentify_dataset_works_in_memory_and_returns_it() -> None:
    ds = _instance(INSTANCE_A, referenced_uid=INSTANCE_B)
    result = deidentify_dataset(ds, Pseudonymizer(KEY), PSEUDONYM)
    assert result is ds
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == Pseudonymizer(KEY).uid(INSTANCE_B)
