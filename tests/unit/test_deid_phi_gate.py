"""The PHI gate, checked the way an auditor would: plant each identifier where real files
hide them and require the exact attribute path, never the value, in the verdict.

Originals come from the sandbox's synthetic studies (PHI in the patient module, free text,
private tags, sequences and UIDs); the de-identified side is a hand-built dataset in
which every identifier has been replaced by a pseudonym, so each test plants one leak
and expects exactly one path.
"""

from __future__ import annotations

import datetime
import io
import string
from collections.abc import Callable
from copy import deepcopy

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from pacsflow.deid.phi_gate import (
    MIN_NUMERIC_ID_LENGTH,
    GateResult,
    IdentifierBuilder,
    OriginalIdentifiers,
    find_leaks,
    gate,
    identifiers_from,
    merge,
)
from pacsflow.sandbox.synthetic import PRIVATE_CREATOR, make_study

MRN = "MRN0012345"
ACCESSION = "ACC20240001"
NAME = "DOE^JANE"
BIRTH = datetime.date(1961, 3, 12)
SANDBOX_BLOCK = f"[private creator '{PRIVATE_CREATOR}']"


def _study(**overrides: object) -> list[Dataset]:
    arguments: dict = dict(
        mrn=MRN,
        accession=ACCESSION,
        study_date=datetime.date(2024, 1, 15),
        patient_name=NAME,
        birth_date=BIRTH,
        sex="F",
        n_series=1,
        n_instances=2,
    )
    arguments.update(overrides)
    study = make_study(**arguments)
    # The sandbox names its private block after its patient-ID issuer; the gate looks for
    # issuers, so a kept block of that name would (rightly) be reported. Tell them apart.
    for ds in study:
        ds.IssuerOfPatientID = "SANDBOX MPI"
        for item in ds.get("OtherPatientIDsSequence", []):
            item.IssuerOfPatientID = "SANDBOX MPI"
    return study


@pytest.fixture(scope="module")
def original() -> list[Dataset]:
    return _study()


@pytest.fixture(scope="module")
def ids(original: list[Dataset]) -> OriginalIdentifiers:
    return merge(*(identifiers_from(ds, mrn=MRN, accession=ACCESSION) for ds in original))


def _pseudo_uid(*parts: str) -> str:
    return generate_uid(prefix=None, entropy_srcs=["pseudonym", *parts])


def _clean() -> Dataset:
    """What a correct de-identification of the synthetic study looks like."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = _pseudo_uid("sop")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _pseudo_uid("sop")
    ds.StudyInstanceUID = _pseudo_uid("study")
    ds.SeriesInstanceUID = _pseudo_uid("series")
    ds.StudyDate = "20220301"  # shifted: the study's own date would be a leak
    ds.AcquisitionDateTime = "20220301093000"
    ds.Modality = "CT"
    ds.StudyDescription = "CHEST CT WITH CONTRAST"
    ds.SeriesDescription = "CT SERIES 1"
    ds.ImageComments = "Reviewed; no incidental findings"
    ds.AccessionNumber = "Q7RZ4KXM2B6WJ3NA"
    ds.PatientName = "PSEUDONYM^QX3"
    ds.PatientID = "K4M7ZQ2XW6RT3B5N"
    ds.PatientBirthDate = ""
    ds.PatientAge = "062Y"
    ds.OtherPatientIDs = ["PSEUDOALTONE", "PSEUDOALTTWO"]
    ds.SliceThickness = "5.000000"
    ds.RetrieveURL = f"https://archive.example/wado?studyUID={_pseudo_uid('study')}"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = _pseudo_uid("sibling")
    ds.ReferencedImageSequence = Sequence([ref])
    inner = Dataset()
    inner.PersonName = "ANONYMOUS"
    inner.TextValue = "Lesion stable"
    outer = Dataset()
    outer.ContentSequence = Sequence([Dataset(), inner])
    ds.ContentSequence = Sequence([outer])
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "KEPT VALUE")
    block.add_new(0x02, "OB", b"\x00\x01\x02binary\xff\x00")
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00" * 8
    return ds


def _reread(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """``ds`` written and read back: elements are raw, as in the pipeline."""
    ds = deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.preamble = b"\x00" * 128
    # Not enforce_file_format: it would overwrite a planted MediaStorageSOPInstanceUID.
    ds.save_as(buffer, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


# -- collecting the original identifiers ------------------------------------------------


def test_identifiers_from_a_synthetic_original(original: list[Dataset]) -> None:
    first = original[0]
    ids = identifiers_from(first, mrn=MRN, accession=ACCESSION)
    assert MRN in ids.patient_ids
    assert set(first.OtherPatientIDs) <= ids.patient_ids
    assert first.OtherPatientIDsSequence[0].PatientID in ids.patient_ids
    assert ids.accession_numbers == {ACCESSION}
    assert first.StudyID in ids.other_ids
    # Everybody's names: the patient's, and the staff's (referring physician, operators).
    assert {"DOE", "JANE"} <= ids.name_parts
    referring = str(first.ReferringPhysicianName).replace("^", " ").upper().split()
    assert set(referring) - {"DR"} <= ids.name_parts
    assert ids.birth_dates == {BIRTH}
    assert datetime.date(2024, 1, 15) in ids.dates  # the study date
    assert {
        first.SOPInstanceUID,
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
        first.FrameOfReferenceUID,
        first.InstanceCreatorUID,
        first.ReferencedImageSequence[0].ReferencedSOPInstanceUID,
    } <= ids.uids
    # Class, syntax and implementation UIDs identify nobody and are kept by the profile.
    assert first.SOPClassUID not in ids.uids
    assert first.file_meta.TransferSyntaxUID not in ids.uids
    assert first.file_meta.ImplementationClassUID not in ids.uids


def test_manifest_values_are_added_even_when_the_header_lacks_them() -> None:
    ids = identifiers_from(Dataset(), mrn=" 0099887766 ", accession="A-77")
    assert ids.patient_ids == {"0099887766"}
    assert ids.accession_numbers == {"A-77"}


def test_name_prefixes_and_suffixes_and_initials_are_not_name_parts() -> None:
    ds = Dataset()
    ds.PatientName = "VAN DER BERG-SMIT^ANNA^J^MRS^PHD=ヤマダ^タロウ"
    ds.OtherPatientNames = ["ROE^JO"]
    ids = identifiers_from(ds)
    # Unspaced scripts: each component, and family and given names written together.
    assert ids.name_parts == {
        "VAN", "DER", "BERG", "SMIT", "ANNA", "ヤマダ", "タロウ", "ヤマダタロウ", "ROE", "JO"
    }  # fmt: skip


def test_merge_and_builder_accumulate_a_study(original: list[Dataset]) -> None:
    a, b = (identifiers_from(ds) for ds in original)
    merged = merge(a, b)
    assert {original[0].SOPInstanceUID, original[1].SOPInstanceUID} <= merged.uids
    assert merged.patient_ids == a.patient_ids | b.patient_ids
    builder = IdentifierBuilder()
    for ds in original:
        builder.add_dataset(ds)
    assert builder.build() == merged
    builder.add(OriginalIdentifiers(accession_numbers=frozenset({"EXTRA123"})))
    assert "EXTRA123" in builder.build().accession_numbers
    assert merge() == OriginalIdentifiers()


def test_repr_holds_counts_not_identifiers(ids: OriginalIdentifiers) -> None:
    for text in (repr(ids), str(ids), repr(IdentifierBuilder())):
        assert MRN not in text and "DOE" not in text and "1961" not in text
    assert "patient_ids=" in repr(ids)


# -- leaks in the synthetic original itself ---------------------------------------------


def test_every_planted_identifier_of_a_synthetic_study_is_found(
    original: list[Dataset], ids: OriginalIdentifiers
) -> None:
    paths = find_leaks(original[0], ids)
    assert paths == [
        "file_meta.MediaStorageSOPInstanceUID",
        "file_meta.SourceApplicationEntityTitle",  # the sending system's AE title
        "InstanceCreationDate",  # the study's dates
        "InstanceCreatorUID",
        "SOPInstanceUID",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "AccessionNumber",
        "InstitutionName",
        "InstitutionAddress",
        "ReferringPhysicianName",  # staff names
        "StationName",
        "StudyDescription",  # "<description> - DOE"
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "ReferencedImageSequence[0].ReferencedSOPInstanceUID",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "OtherPatientIDs",
        "OtherPatientIDsSequence[0].PatientID",
        "OtherPatientIDsSequence[0].IssuerOfPatientID",
        "AdditionalPatientHistory",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "StudyID",
        "FrameOfReferenceUID",
        "ImageComments",
        f"(0071,1001) {SANDBOX_BLOCK}",
        f"(0071,1002) {SANDBOX_BLOCK}",
    ]
    result = gate(original, ids)
    assert not result.passed
    assert (result.instances, result.failed_instances) == (2, 2)
    for secret in (MRN, ACCESSION, "DOE", "JANE", "19610312", original[0].SOPInstanceUID):
        assert all(secret not in path for path in result.paths)
        assert secret not in result.summary()


# -- one planted leak at a time -----------------------------------------------------------


def _set(keyword: str, value: object) -> Callable[[Dataset, Dataset], None]:
    return lambda ds, orig: setattr(ds, keyword, value)


def _nested_pn(ds: Dataset, orig: Dataset) -> None:
    ds.ContentSequence[0].ContentSequence[1].PersonName = "Doe^Jane"


def _private_text(ds: Dataset, orig: Dataset) -> None:
    ds.private_block(0x0009, PRIVATE_CREATOR)[0x01].value = f"id {MRN}"


def _private_bytes(ds: Dataset, orig: Dataset) -> None:
    ds.private_block(0x0009, PRIVATE_CREATOR)[0x02].value = b"\x00\x07\xfe" + MRN.encode() + b"\0"


def _private_un_name(ds: Dataset, orig: Dataset) -> None:
    # An implicit-VR private PN reads as UN bytes: it is text, so names are searched.
    ds.add_new(0x00091003, "UN", b"DOE^JANE")


def _other_patient_ids(ds: Dataset, orig: Dataset) -> None:
    ds.OtherPatientIDs = ["PSEUDOALTONE", orig.OtherPatientIDs[0]]


def _retrieve_url(ds: Dataset, orig: Dataset) -> None:
    ds.RetrieveURL = f"https://pacs.hospital.example/wado?studyUID={orig.StudyInstanceUID}&x=1"


def _file_meta_uid(ds: Dataset, orig: Dataset) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = orig.SOPInstanceUID


def _derived_uid(ds: Dataset, orig: Dataset) -> None:
    # A de-identifier that derives new UIDs by appending to the old ones leaks them.
    ds.SeriesInstanceUID = orig.SeriesInstanceUID + ".1"


def _nested_uid(ds: Dataset, orig: Dataset) -> None:
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = orig.SOPInstanceUID


LEAKS: dict[str, tuple[str, Callable[[Dataset, Dataset], None], str]] = {
    # case: (expected path, plant(ds, original), planted secret)
    "nested sequence PN": (
        "ContentSequence[0].ContentSequence[1].PersonName",
        _nested_pn,
        "Doe^Jane",
    ),
    "private text": (f"(0009,1001) {SANDBOX_BLOCK}", _private_text, MRN),
    "private OB bytes": (f"(0009,1002) {SANDBOX_BLOCK}", _private_bytes, MRN),
    "private UN name": (f"(0009,1003) {SANDBOX_BLOCK}", _private_un_name, "DOE^JANE"),
    "OtherPatientIDs": ("OtherPatientIDs", _other_patient_ids, "ALT"),
    "accession in free text": (
        "SeriesDescription",
        _set("SeriesDescription", "follow-up, see acc20240001"),
        "20240001",
    ),
    "MRN with separators": ("ImageComments", _set("ImageComments", "MRN 001-2345"), "2345"),
    "surname in free text": ("StudyDescription", _set("StudyDescription", "CT for Mrs Doe"), "Doe"),
    "birth date as DT": (
        "AcquisitionDateTime",
        _set("AcquisitionDateTime", "19610312083000"),
        "1961",
    ),
    "birth date as DA": ("PatientBirthDate", _set("PatientBirthDate", "19610312"), "1961"),
    "original UID in RetrieveURL": ("RetrieveURL", _retrieve_url, "1.2"),
    "original UID in file meta": ("file_meta.MediaStorageSOPInstanceUID", _file_meta_uid, "1.2"),
    "original UID as prefix": ("SeriesInstanceUID", _derived_uid, "1.2"),
    "original UID nested": (
        "ReferencedImageSequence[0].ReferencedSOPInstanceUID",
        _nested_uid,
        "1.2",
    ),
}


@pytest.mark.parametrize("source", ["in memory", "explicit VR file", "implicit VR file"])
@pytest.mark.parametrize("case", list(LEAKS))
def test_each_planted_leak_is_reported_by_path_only(
    case: str, source: str, original: list[Dataset], ids: OriginalIdentifiers
) -> None:
    path, plant, secret = LEAKS[case]
    ds = _clean()
    plant(ds, original[0])
    if source != "in memory":
        implicit = source.startswith("implicit")
        ds = _reread(ds, ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    assert find_leaks(ds, ids) == [path]
    result = gate([ds], ids)
    assert result.paths == (path,)
    summary = result.summary()
    assert path in summary
    for value in (secret, MRN, ACCESSION, "Doe", "DOE", original[0].StudyInstanceUID):
        if value not in path:
            assert value not in summary


BIRTH_DATE_SPELLINGS = [
    "19610312",
    "1961-03-12",
    "1961/03/12",
    "1961.03.12",
    "12/03/1961",
    "12.03.1961",
    "12-03-1961",
    "03/12/1961",
    "3/12/1961",
    "12 March 1961",
    "12th march 1961",
    "March 12, 1961",
    "12 Mar 1961",
    "12-MAR-1961",
    "Mar. 12 1961",
]


@pytest.mark.parametrize("spelling", BIRTH_DATE_SPELLINGS)
def test_birth_date_in_image_comments_in_any_common_format(
    spelling: str, ids: OriginalIdentifiers
) -> None:
    ds = _clean()
    ds.ImageComments = f"Patient born {spelling}, see history"
    assert find_leaks(ds, ids) == ["ImageComments"]


def test_accented_names_match_their_plain_spelling_and_cjk_matches_as_substring() -> None:
    ids = identifiers_from(_patient("MÜLLER^JOSÉ=山田^太郎"))
    for text in ("Herr Muller", "herr müller", "Jose", "山田太郎様"):
        ds = _clean()
        ds.ImageComments = text
        assert find_leaks(ds, ids) == ["ImageComments"], text


def test_private_creator_holding_an_identifier_is_redacted_in_the_path(
    ids: OriginalIdentifiers,
) -> None:
    ds = _clean()
    block = ds.private_block(0x0011, f"SITE {MRN}", create=True)
    block.add_new(0x01, "LO", "harmless")
    paths = find_leaks(ds, ids)
    assert paths == ["(0011,0010)"]  # the creator element itself holds the MRN
    paths = find_leaks(ds, ids, allows=lambda tag, creator: not tag.is_private)
    assert "(0011,1001) [private creator <redacted>]" in paths
    assert "(0011,0010)" in paths
    assert all(MRN not in p for p in paths)


# -- no false positives -------------------------------------------------------------------


def test_a_clean_dataset_passes(ids: OriginalIdentifiers) -> None:
    assert find_leaks(_clean(), ids) == []
    result = gate([_clean(), _clean()], ids)
    assert result == GateResult(passed=True, paths=(), instances=2, failed_instances=0)
    assert result.summary() == "PHI gate passed: 2 instances"


def _patient(name: str, **identifiers: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    for keyword, value in identifiers.items():
        setattr(ds, keyword, value)
    return ds


def test_short_name_parts_and_titles_do_not_match_ordinary_text() -> None:
    # "O" (1 character) and "MR" (the prefix component) are not searched; "LI", "CHEST"
    # and "WITH" must match whole words only.
    ids = identifiers_from(_patient("O^LI^CHESTER^MR", PatientID="12", StudyID="512"))
    ds = _clean()
    ds.StudyDescription = "CHEST CT WITH CONTRAST"
    ds.SeriesDescription = "MR BRAIN O-ARM CLINICAL"
    ds.ImageComments = "Oblique slices, limited study"
    ds.SliceThickness = "512"
    assert find_leaks(ds, ids) == []
    assert not ids.patient_ids - {"12"} and ids.name_parts == {"LI", "CHESTER"}


def test_numeric_identifiers_are_not_found_inside_longer_numbers() -> None:
    ids = identifiers_from(_patient("ROE^ANN", PatientID="123456", StudyID="1234"))
    ds = _clean()
    ds.SliceThickness = "1.234560"  # '.' is no separator: a decimal is not the MRN
    ds.ImageComments = "counts 91234567 and 1234"  # digits glued on; StudyID too short
    ds.SeriesDescription = "ROEBUCK ANNEX"
    assert find_leaks(ds, ids) == []
    ds.ImageComments = "id:123456."
    assert find_leaks(ds, ids) == ["ImageComments"]


def test_uid_digits_continuing_is_a_different_uid(
    original: list[Dataset], ids: OriginalIdentifiers
) -> None:
    ds = _clean()
    ds.SeriesInstanceUID = original[0].SeriesInstanceUID + "7"
    assert find_leaks(ds, ids) == []


def test_pixel_data_is_never_scanned(ids: OriginalIdentifiers) -> None:
    ds = _clean()
    ds.PixelData = MRN.encode() * 4 + b"DOE^JANE19610312"
    ds.add_new(0x60003000, "OW", MRN.encode() * 2)  # Overlay Data
    assert find_leaks(ds, ids) == []


def test_pixel_data_of_a_file_is_not_even_decoded(ids: OriginalIdentifiers) -> None:
    ds = _clean()
    ds.PixelData = MRN.encode() * 4
    ds = _reread(ds)
    assert find_leaks(ds, ids) == []
    assert isinstance(ds.get_item(0x7FE00010), RawDataElement)


def test_clean_files_pass_in_either_transfer_syntax(ids: OriginalIdentifiers) -> None:
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        assert find_leaks(_reread(_clean(), syntax), ids) == []


@pytest.mark.parametrize(
    ("charset", "name", "text"),
    [
        ("ISO_IR 192", "Müller^José", "Herr Müller"),  # UTF-8
        ("ISO_IR 100", "Müller^José", "José"),  # Latin-1
        # PS3.5 Annex H: code extensions switch inside a value; pydicom decodes those.
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "山田様"),
    ],
)
def test_names_are_found_in_any_character_set(
    charset: str | list[str], name: str, text: str
) -> None:
    ids = identifiers_from(_patient(name))
    ds = _clean()
    ds.SpecificCharacterSet = charset
    ds.ContentSequence[0].ContentSequence[1].PersonName = name
    ds.ImageComments = text
    assert find_leaks(_reread(ds), ids) == [
        "ImageComments",
        "ContentSequence[0].ContentSequence[1].PersonName",
    ]


def test_names_are_not_searched_in_binary_data() -> None:
    ids = identifiers_from(_patient("LI^MAX"))
    ds = _clean()
    ds.private_block(0x0009, PRIVATE_CREATOR)[0x02].value = b"\x00\x01 LI \x02MAX\x00\x00\x7f"
    assert find_leaks(ds, ids) == []


# -- the profile's allows() ---------------------------------------------------------------


def test_allows_flags_surviving_private_tags(ids: OriginalIdentifiers) -> None:
    calls: list[tuple[BaseTag, str | None]] = []

    def allows(tag: BaseTag, creator: str | None) -> bool:
        calls.append((tag, creator))
        return not tag.is_private

    paths = find_leaks(_clean(), ids, allows=allows)
    assert paths == [
        "(0009,0010)",  # the Private Creator element: no value in the path
        f"(0009,1001) {SANDBOX_BLOCK}",
        f"(0009,1002) {SANDBOX_BLOCK}",
    ]
    assert (BaseTag(0x00091001), PRIVATE_CREATOR) in calls
    assert (BaseTag(0x00090010), PRIVATE_CREATOR) in calls  # a creator: its own value
    assert (BaseTag(0x00100010), None) in calls
    assert (BaseTag(0x00020010), None) in calls  # File Meta Information too
    assert (BaseTag(0x0040A123), None) in calls  # and nested elements


def test_a_refused_sequence_is_reported_once(ids: OriginalIdentifiers) -> None:
    refused = {0x0040A730}  # Content Sequence

    paths = find_leaks(_clean(), ids, allows=lambda tag, creator: tag not in refused)
    assert paths == ["ContentSequence"]


def test_a_leak_that_is_also_refused_is_reported_once(ids: OriginalIdentifiers) -> None:
    ds = _clean()
    ds.ImageComments = f"MRN {MRN}"
    paths = find_leaks(ds, ids, allows=lambda tag, creator: tag != 0x00204000)
    assert paths == ["ImageComments"]


# -- the verdict ----------------------------------------------------------------------------


def test_result_passes_exactly_when_it_has_no_paths() -> None:
    with pytest.raises(ValueError):
        GateResult(passed=True, paths=("PatientName",))
    with pytest.raises(ValueError):
        GateResult(passed=False)


def test_summary_is_bounded() -> None:
    paths = tuple(f"ContentSequence[{i}].TextValue" for i in range(500))
    result = GateResult(passed=False, paths=paths, instances=9, failed_instances=3)
    summary = result.summary()
    assert len(summary) <= 1000
    assert summary.startswith("PHI gate failed: 3 of 9 instances; 500 attributes: ")
    assert summary.endswith(" more)")
    assert len(result.summary(max_chars=120)) <= 120


def test_gate_reports_each_path_once_across_instances(
    original: list[Dataset], ids: OriginalIdentifiers
) -> None:
    leaky = _clean()
    leaky.ImageComments = MRN
    result = gate([_clean(), deepcopy(leaky), leaky], ids)
    assert result.paths == ("ImageComments",)
    assert (result.instances, result.failed_instances) == (3, 2)
    assert result.summary() == "PHI gate failed: 2 of 3 instances; 1 attribute: ImageComments"


# -- property: any identifier, anywhere in text ------------------------------------------

_TEXT_KEYWORDS = ["StudyDescription", "ImageComments", "SeriesDescription", "TextValue"]
_identifiers = st.text(string.ascii_letters + string.digits, min_size=4, max_size=20).filter(
    lambda s: not s.isdigit() or len(s) >= MIN_NUMERIC_ID_LENGTH
)
_filler = st.text(string.ascii_letters + string.digits + " ,.:;()", max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    identifier=_identifiers,
    field=st.sampled_from(["patient_ids", "accession_numbers", "other_ids"]),
    keyword=st.sampled_from(_TEXT_KEYWORDS),
    before=_filler,
    after=_filler,
    lower=st.booleans(),
)
def test_a_random_identifier_in_a_random_text_element_is_reported(
    identifier: str, field: str, keyword: str, before: str, after: str, lower: bool
) -> None:
    ids = OriginalIdentifiers(**{field: frozenset({identifier})})
    ds = _clean()
    planted = identifier.lower() if lower else identifier
    text = f"{before} {planted} {after}"
    target = ds.ContentSequence[0].ContentSequence[1] if keyword == "TextValue" else ds
    setattr(target, keyword, text)
    path = "ContentSequence[0].ContentSequence[1].TextValue" if keyword == "TextValue" else keyword
    assert path in find_leaks(ds, ids)


def test_name_parts_are_not_matched_in_coded_values_but_ids_are():
    """A real CQ500 CT is named "CQ500-CT-310": its part "CT" is not a leak in Modality."""
    original = Dataset()
    original.PatientName = "CQ500-CT-310"
    original.PatientID = "CQ500-CT-310"
    ids = identifiers_from(original)
    clean = Dataset()
    clean.Modality = "CT"
    clean.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert find_leaks(clean, ids) == []
    clean.BodyPartExamined = "CQ500_CT_310"  # the ID (separators aside) in a code: a leak
    assert find_leaks(clean, ids) == ["BodyPartExamined"]
    clean.StudyDescription = "head CT"  # free text: name parts still count
    assert "StudyDescription" in find_leaks(clean, ids)
