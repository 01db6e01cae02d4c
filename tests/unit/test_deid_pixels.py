"""Pixel PHI: risk rules, OCR, JPEG segment stripping, bulk data, masking with deid.

Images are synthetic (``tests/pixel_phantoms.py``) with text drawn into the pixels by
Pillow; OCR is the real Tesseract. Each test asserts what a user would check: whether
the instance may leave, and that the text, the comment or the overlay is gone from it.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import MPEG2MPML, JPEG2000Lossless

from pacsflow.config import PixelPolicyConfig, ProjectConfig
from pacsflow.deid.pixels import PixelOutcome, PixelPolicy, inspect_instance
from pacsflow.deid.pixels.images import sample_indices
from pacsflow.deid.pixels.ocr import find_text
from pacsflow.deid.pixels.risk import RiskLevel, assess
from pacsflow.deid.pixels.segments import strip_j2k, strip_jpeg
from pacsflow.errors import ConfigError
from pacsflow.sandbox import make_patients
from tests.pixel_phantoms import (
    SC_RECIPE,
    US_REGION,
    as_jpeg,
    base_study,
    ct_slice,
    draw_text,
    fan,
    secondary_capture,
    ultrasound,
)

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr not installed (scripts/system-deps.sh)"
)
PATIENT = make_patients(1, seed=7)[0]
[BASE] = base_study(PATIENT, "ACC7001", 1)
NAME_TEXT = f"{PATIENT.family_name.upper()} {PATIENT.mrn}"
QUARANTINE = PixelPolicy()
CLEAN = PixelPolicy(PixelPolicyConfig(policy="clean"))


def text_words_in(ds: Dataset) -> int:
    """How many words OCR reads in the (first frame of the) pixels, as a user would look."""
    picture = ds.pixel_array if int(ds.get("NumberOfFrames", 1)) == 1 else ds.pixel_array[0]
    return find_text(picture.astype(np.uint8), 50).words


# -- risk rules (header only) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "level"),
    [
        ({"Modality": "CT"}, RiskLevel.NONE),
        ({"Modality": "CT", "BurnedInAnnotation": "YES"}, RiskLevel.STATED),
        ({"Modality": "US"}, RiskLevel.LIKELY),
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, RiskLevel.CLAIMED_NONE),
        ({"Modality": "DX", "BurnedInAnnotation": "UNSURE"}, RiskLevel.LIKELY),
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, RiskLevel.LIKELY),
        (
            {
                "Modality": "CT",
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4",
                "BurnedInAnnotation": "NO",
            },
            RiskLevel.LIKELY,
        ),
        (
            {"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]},
            RiskLevel.LIKELY,
        ),
        ({"Modality": "CT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.1.1"}, RiskLevel.LIKELY),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, RiskLevel.UNINSPECTABLE),
    ],
)
def test_risk_rules(changes: dict, level: RiskLevel) -> None:
    ds = copy.deepcopy(BASE)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    assert assess(ds).level is level


def test_a_secondary_capture_saying_no_is_not_believed() -> None:
    risk = assess(secondary_capture(BASE, burned_in="NO"))
    assert risk.reason == "secondary capture SOP class: BurnedInAnnotation NO is not credible"


# -- the quarantine policy (default) ------------------------------------------------------


def test_default_policy_is_quarantine() -> None:
    project = ProjectConfig(name="p", sources=["a"], destination="d")
    assert project.pixels.policy == "quarantine"
    assert PixelPolicy.for_project(project).mode == "quarantine"


def test_off_is_not_a_policy() -> None:
    with pytest.raises(ValueError, match=r"pixels\.policy"):
        ProjectConfig.model_validate(
            {"name": "p", "sources": ["a"], "destination": "d", "pixels": {"policy": "off"}}
        )


def test_ultrasound_without_the_attribute_is_quarantined_without_ocr() -> None:
    verdict = inspect_instance(ultrasound(BASE, NAME_TEXT), QUARANTINE)
    assert verdict.outcome is PixelOutcome.QUARANTINE
    assert verdict.reasons == (
        "Modality US is prone to burned-in text and BurnedInAnnotation is absent",
    )
    assert verdict.ocr_images == 0  # the header decides; OCR would not change it


def test_burned_in_annotation_yes_is_quarantined() -> None:
    ds = ct_slice(BASE)
    ds.BurnedInAnnotation = "YES"
    verdict = inspect_instance(ds, QUARANTINE)
    assert verdict.outcome is PixelOutcome.QUARANTINE
    assert verdict.reasons == ("BurnedInAnnotation is YES",)


@needs_tesseract
def test_ultrasound_claiming_no_is_checked_by_ocr() -> None:
    with_text = inspect_instance(ultrasound(BASE, NAME_TEXT, burned_in="NO"), QUARANTINE)
    assert with_text.outcome is PixelOutcome.QUARANTINE
    assert with_text.reasons == ("OCR found text in PixelData",)
    assert with_text.ocr_images == 1 and with_text.ocr_seconds > 0
    # The verdict never carries what OCR read.
    assert PATIENT.family_name.upper() not in repr(with_text).upper()
    assert PATIENT.mrn not in repr(with_text)

    without = inspect_instance(ultrasound(BASE, None, burned_in="NO"), QUARANTINE)
    assert without.outcome is PixelOutcome.PASSED
    assert without.ocr_images == 1


@needs_tesseract
def test_ct_is_not_ocrd_unless_the_project_asks() -> None:
    ds = ct_slice(BASE, NAME_TEXT)
    assert inspect_instance(copy.deepcopy(ds), QUARANTINE).outcome is PixelOutcome.PASSED
    every = PixelPolicy(PixelPolicyConfig(ocr_every_image=True))
    verdict = inspect_instance(ds, every)
    assert verdict.outcome is PixelOutcome.QUARANTINE
    assert verdict.reasons == ("OCR found text in PixelData",)


@needs_tesseract
def test_small_text_on_a_small_frame_is_found() -> None:
    ds = ultrasound(BASE, None, burned_in="NO")
    ds.PixelData = draw_text(fan(), f"ID {PATIENT.mrn}", (500, 440), size=11).tobytes()
    assert inspect_instance(ds, QUARANTINE).outcome is PixelOutcome.QUARANTINE


def test_without_tesseract_an_image_needing_ocr_is_held_saying_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    verdict = inspect_instance(ultrasound(BASE, None, burned_in="NO"), QUARANTINE)
    assert verdict.outcome is PixelOutcome.QUARANTINE
    assert verdict.reasons == (
        "the pixel policy needs OCR but the tesseract program is not installed: install "
        "the Debian package tesseract-ocr (scripts/system-deps.sh does)",
    )


def test_sampled_frames_include_first_and_last() -> None:
    assert sample_indices(1, 3) == [0]
    assert sample_indices(2, 3) == [0, 1]
    assert sample_indices(100, 3) == [0, 50, 99]
    assert sample_indices(100, 1) == [0]


@needs_tesseract
def test_text_in_one_frame_of_a_cine_is_found() -> None:
    ds = ultrasound(BASE, None, burned_in="NO")
    frames = np.stack([fan(seed) for seed in range(5)])
    frames[4] = draw_text(frames[4], NAME_TEXT, (12, 10))
    ds.NumberOfFrames = 5
    ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = frames.tobytes()
    verdict = inspect_instance(ds, QUARANTINE)
    assert verdict.reasons == ("OCR found text in PixelData frame 5",)


def test_an_encapsulated_pdf_is_never_exported_unseen() -> None:
    ds = copy.deepcopy(BASE)
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.EncapsulatedDocument = b"%PDF-1.4 ..."
    verdict = inspect_instance(ds, CLEAN)
    assert verdict.outcome is PixelOutcome.QUARANTINE
    assert verdict.reasons == ("EncapsulatedDocument is not inspected",)


# -- COM / APPn segments in encapsulated frames ------------------------------------------


def test_jpeg_comment_and_exif_are_stripped_without_reencoding() -> None:
    secret = f"PATIENT {PATIENT.family_name} {PATIENT.mrn}".encode()
    ds = as_jpeg(ct_slice(BASE), comment=secret, exif=b"Exif\x00\x00" + secret)
    before = ds.pixel_array.copy()
    assert secret in ds.PixelData  # the check can fail

    verdict = inspect_instance(ds, QUARANTINE)

    assert verdict.outcome is PixelOutcome.CLEANED
    assert verdict.actions == ("stripped 2 COM/APPn segment(s) from PixelData",)
    assert secret not in ds.PixelData
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    assert frame[2:6] == b"\xff\xe0\x00\x10" and frame[6:11] == b"JFIF\x00"  # JFIF kept
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    ds.pixel_array_options()  # drop pydicom's cached array
    assert np.array_equal(pydicom.dcmread(_roundtrip(ds)).pixel_array, before)


def _roundtrip(ds: Dataset):
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def test_a_marker_inside_the_scan_data_is_not_mistaken_for_a_segment() -> None:
    # Entropy-coded data stuffs 0xFF as FF 00; RSTn (FF D0-D7) are not segments either.
    frame = (
        b"\xff\xd8"
        + b"\xff\xfe\x00\x08SECRET"
        + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        + b"\x12\xff\x00\x34\xff\xd0\x56"
        + b"\xff\xfe\x00\x06MORE"
        + b"\xff\xd9"
    )
    stripped, removed = strip_jpeg(frame)
    assert removed == 2
    assert stripped == (
        b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00\x12\xff\x00\x34\xff\xd0\x56\xff\xd9"
    )


def test_jpeg_2000_comments_go_and_tile_lengths_follow() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(fan()).save(buffer, "JPEG2000", no_jp2=True, irreversible=False)
    plain = buffer.getvalue()
    assert plain.startswith(b"\xff\x4f\xff\x51")
    # Add a COM to the main header (before the first SOT) and to the first tile-part header.
    sot = plain.index(b"\xff\x90")
    com = b"\xff\x64\x00\x0c\x00\x01SECRET\x00\x00"
    psot = int.from_bytes(plain[sot + 6 : sot + 10], "big")
    tile = plain[sot : sot + 6] + (psot + len(com)).to_bytes(4, "big") + plain[sot + 10 : sot + 12]
    tile += com + plain[sot + 12 :]
    frame = plain[:sot] + com + tile

    stripped, removed = strip_j2k(frame)

    assert b"SECRET" not in stripped
    own, own_removed = strip_j2k(plain)  # OpenJPEG writes a COM of its own
    assert removed == own_removed + 2
    assert stripped == own
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stripped))), fan())  # lossless
    ds = ct_slice(BASE)
    ds.PixelData = encapsulate([frame])
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    assert inspect_instance(ds, QUARANTINE).outcome is PixelOutcome.CLEANED


def test_a_video_stream_is_not_inspectable() -> None:
    ds = ct_slice(BASE)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    verdict = inspect_instance(ds, QUARANTINE)
    assert verdict.outcome is PixelOutcome.QUARANTINE
    assert verdict.reasons == (
        ("PixelData in MPEG2 Main Profile / Main Level cannot be inspected for metadata"),
    )


# -- overlays, curves, waveforms, icons ---------------------------------------------------


def _with_overlay(ds: Dataset, bitmap: np.ndarray) -> Dataset:
    rows, cols = bitmap.shape
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", cols)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    bits = np.packbits((bitmap > 0).astype(np.uint8).ravel(), bitorder="little")
    ds.add_new(0x60003000, "OW", bits.tobytes())
    return ds


@needs_tesseract
def test_overlays_go_by_default_and_are_ocrd_when_kept() -> None:
    bitmap = draw_text(np.zeros((512, 512), np.uint8), NAME_TEXT, (10, 10), size=18)
    ds = _with_overlay(ct_slice(BASE), bitmap)

    removed = inspect_instance(copy.deepcopy(ds), QUARANTINE)
    assert removed.outcome is PixelOutcome.CLEANED
    assert removed.actions == ("removed overlay group 6000",)

    keep = PixelPolicy(PixelPolicyConfig(keep_overlays=True))
    kept = copy.deepcopy(ds)
    verdict = inspect_instance(kept, keep)
    assert (0x6000, 0x3000) in kept
    assert verdict.reasons == ("OCR found text in kept overlay 1",)
    blank = _with_overlay(ct_slice(BASE), np.zeros((512, 512), np.uint8))
    assert inspect_instance(blank, keep).outcome is PixelOutcome.PASSED


def _with_waveform(ds: Dataset, data: bytes) -> Dataset:
    item = Dataset()
    item.NumberOfWaveformChannels = 1
    item.NumberOfWaveformSamples = len(data) // 2
    item.WaveformBitsAllocated = 16
    item.WaveformSampleInterpretation = "SS"
    item.WaveformData = data
    ds.WaveformSequence = Sequence([item])
    return ds


def test_waveforms_go_by_default_and_text_in_kept_ones_quarantines() -> None:
    sine = (np.sin(np.linspace(0, 40, 4000)) * 800).astype("<i2").tobytes()
    planted = sine[:2000] + f"  {PATIENT.family_name} {PATIENT.mrn}  ".encode() + sine[2000:]

    removed = inspect_instance(_with_waveform(ct_slice(BASE), planted), QUARANTINE)
    assert removed.actions == ("removed WaveformSequence",)

    keep = PixelPolicy(PixelPolicyConfig(keep_waveforms=True))
    verdict = inspect_instance(_with_waveform(ct_slice(BASE), planted), keep)
    assert verdict.reasons == ("WaveformSequence[0].WaveformData holds text",)
    clean = inspect_instance(_with_waveform(ct_slice(BASE), sine), keep)
    assert clean.outcome is PixelOutcome.PASSED


def test_curves_and_icons_are_removed() -> None:
    ds = ct_slice(BASE)
    ds.add_new(0x50000005, "US", 2)
    ds.add_new(0x50003000, "OW", b"SMITH JOHN CURVE")
    icon = Dataset()
    icon.Rows = icon.Columns = 8
    ds.IconImageSequence = Sequence([icon])
    verdict = inspect_instance(ds, QUARANTINE)
    assert verdict.actions == ("removed IconImageSequence", "removed curve group 5000")
    assert not any(tag.group == 0x5000 for tag in ds.keys())  # noqa: SIM118
    assert "IconImageSequence" not in ds


# -- the clean policy ---------------------------------------------------------------------


@needs_tesseract
def test_clean_masks_outside_the_ultrasound_regions_and_exports() -> None:
    ds = ultrasound(BASE, NAME_TEXT)
    assert text_words_in(ds) > 0  # the check can fail
    verdict = inspect_instance(ds, CLEAN)
    assert verdict.outcome is PixelOutcome.CLEANED
    assert verdict.actions == ("masked 2 region(s) of PixelData with deid recipe dicom.ultrasound",)
    assert text_words_in(ds) == 0
    x0, y0, x1, y1 = US_REGION
    pixels = ds.pixel_array
    assert pixels[:y0].max() == 0 and pixels[y0:y1, x0:x1].max() > 0  # fan kept


@needs_tesseract
def test_each_ultrasound_is_masked_by_its_own_regions() -> None:
    # deid writes the first instance's regions into the recipe it is given.
    first, second = ultrasound(BASE, NAME_TEXT), ultrasound(BASE, NAME_TEXT)
    region = second.SequenceOfUltrasoundRegions[0]
    region.RegionLocationMinY0 = 100
    inspect_instance(first, CLEAN)
    inspect_instance(second, CLEAN)
    assert second.pixel_array[60:100].max() == 0
    assert first.pixel_array[60:100].max() > 0


@needs_tesseract
def test_clean_uses_deids_device_list_for_a_known_scanner() -> None:
    ds = ultrasound(BASE, NAME_TEXT, regions=False)
    ds.Manufacturer, ds.ManufacturerModelName = "GE Healthcare", "LOGIQ9"
    verdict = inspect_instance(ds, CLEAN)
    assert verdict.outcome is PixelOutcome.CLEANED
    assert verdict.actions == ("masked 1 region(s) of PixelData with deid recipe dicom",)
    assert ds.pixel_array[:30].max() == 0


@needs_tesseract
def test_clean_quarantines_text_no_recipe_knows() -> None:
    verdict = inspect_instance(secondary_capture(BASE, NAME_TEXT), CLEAN)
    assert verdict.outcome is PixelOutcome.QUARANTINE
    assert verdict.reasons == ("OCR found text in PixelData",)


def test_clean_does_not_trust_ocr_when_the_header_says_yes_and_nothing_was_masked() -> None:
    ds = secondary_capture(BASE, None, burned_in="YES")
    verdict = inspect_instance(ds, CLEAN)
    assert verdict.reasons == ("BurnedInAnnotation is YES and no deid recipe knows where to mask",)


def cleaning_project(folder: Path, recipe: str) -> ProjectConfig:
    """A project under ``clean`` with one recipe file, relative to ``folder``."""
    return ProjectConfig(
        name="p",
        sources=["a"],
        destination="d",
        base_dir=folder,
        pixels={"policy": "clean", "recipe_files": [recipe]},
    )


@needs_tesseract
def test_a_project_recipe_masks_its_own_devices(tmp_path: Path) -> None:
    (tmp_path / "site.dicom").write_text(SC_RECIPE)
    ds = secondary_capture(BASE, NAME_TEXT, burned_in="YES")
    verdict = inspect_instance(
        ds, PixelPolicy.for_project(cleaning_project(tmp_path, "site.dicom"))
    )
    assert verdict.outcome is PixelOutcome.CLEANED
    assert verdict.actions == ("masked 1 region(s) of PixelData with deid recipe site.dicom",)
    assert text_words_in(ds) == 0


def test_a_bad_recipe_file_fails_early_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pixels\.recipe_files: .*missing\.dicom: no such file"):
        PixelPolicy.for_project(cleaning_project(tmp_path, "missing.dicom"))
    (tmp_path / "bad.dicom").write_text(SC_RECIPE.replace("0,0,512,48", "0,0,512"))
    with pytest.raises(
        ConfigError,
        match=r"bad\.dicom, LABEL Phantom workstation screen capture: coordinates '0,0,512' ",
    ):
        PixelPolicy.for_project(cleaning_project(tmp_path, "bad.dicom"))
