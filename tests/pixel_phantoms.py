"""Synthetic images with text rendered into the pixels (Pillow), for the pixel PHI tests.

Every phantom starts from a synthetic study instance (:func:`pacsflow.sandbox.make_study`,
with a patient's name, IDs and dates in the header) and replaces its pixels and class:
an ultrasound frame with a speckled fan, a secondary capture of a grey "screen", or a
CT slice. Text is drawn with Pillow's bundled scalable font, so the tests need no font
package.
"""

from __future__ import annotations

import copy
import datetime as dt
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from pacsflow.sandbox import FakePatient, study_of

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
US_REGION = (120, 60, 520, 460)
"""x0, y0, x1, y1 of the fan's data region on the 640x480 ultrasound frame."""
SC_RECIPE = """FORMAT dicom

%filter graylist

LABEL Phantom workstation screen capture
  contains Modality OT
  + contains ConversionType WSD
  coordinates 0,0,512,48
"""
"""A project's own deid recipe: where the phantom screen captures carry their text."""


def base_study(
    patient: FakePatient, accession: str, n: int, study_date: dt.date = dt.date(2024, 3, 5)
) -> list[Dataset]:
    """``n`` CT instances of one series, with ``patient``'s identifiers in the header."""
    return study_of(
        patient,
        accession=accession,
        study_date=study_date,
        n_series=1,
        n_instances=n,
    )


def draw_text(picture: np.ndarray, text: str, xy: tuple[int, int], size: int = 16) -> np.ndarray:
    """``picture`` (uint8, 2-D) with ``text`` drawn in white at ``xy``."""
    image = Image.fromarray(picture)
    ImageDraw.Draw(image).text(xy, text, fill=255, font=ImageFont.load_default(size=size))
    return np.asarray(image).copy()


def fan(seed: int = 0) -> np.ndarray:
    """A 480x640 ultrasound-like frame: dark background, speckle inside a sector."""
    rng = np.random.default_rng(seed)
    picture = (rng.random((480, 640)) * 40).astype(np.uint8)
    yy, xx = np.mgrid[:480, :640]
    x0, y0, x1, y1 = US_REGION
    inside = (abs(xx - 320) < (yy - y0 + 40) * 0.45) & (yy >= y0) & (yy < y1)
    inside &= (xx >= x0) & (xx < x1)
    picture[inside] = (60 + rng.random(int(inside.sum())) * 150).astype(np.uint8)
    return picture


def screen(seed: int = 0) -> np.ndarray:
    """A 512x512 grey secondary capture: a smooth disc on black."""
    yy, xx = np.mgrid[:512, :512]
    disc = np.clip(200 - np.hypot(xx - 256, yy - 280) * 1.2, 0, 200)
    return disc.astype(np.uint8)


def _set_pixels(ds: Dataset, picture: np.ndarray) -> None:
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.set_pixel_data(picture, "MONOCHROME2", 8, generate_instance_uid=False)


def _as(ds: Dataset, sop_class: str, modality: str) -> Dataset:
    ds = copy.deepcopy(ds)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    return ds


def ultrasound(
    ds: Dataset,
    text: str | None = None,
    *,
    burned_in: str | None = None,
    regions: bool = True,
    seed: int = 0,
) -> Dataset:
    """An ultrasound copy of ``ds``; ``text`` is drawn in the top band, outside the fan."""
    ds = _as(ds, US_IMAGE, "US")
    picture = fan(seed)
    if text:
        picture = draw_text(picture, text, (12, 10))
    _set_pixels(ds, picture)
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    if regions:
        region = Dataset()
        x0, y0, x1, y1 = US_REGION
        region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
        region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
        ds.SequenceOfUltrasoundRegions = Sequence([region])
    return ds


def secondary_capture(ds: Dataset, text: str | None = None, *, burned_in: str | None = None):
    """A secondary capture copy of ``ds``; ``text`` is drawn in the top 40 rows."""
    ds = _as(ds, SECONDARY_CAPTURE, "OT")
    picture = screen()
    if text:
        picture = draw_text(picture, text, (10, 10), size=18)
    _set_pixels(ds, picture)
    ds.ConversionType = "WSD"
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    return ds


def ct_slice(ds: Dataset, text: str | None = None) -> Dataset:
    """A CT copy of ``ds`` with a smooth 512x512 picture, and ``text`` if given."""
    ds = _as(ds, CT_IMAGE, "CT")
    picture = screen()
    if text:
        picture = draw_text(picture, text, (10, 10), size=18)
    _set_pixels(ds, picture)
    return ds


def jpeg_with_segments(picture: np.ndarray, comment: bytes, exif: bytes) -> bytes:
    """Baseline JPEG of ``picture`` with a JFIF APP0, then an APP1 and a COM carrying text."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    jfif_end = 2 + 2 + int.from_bytes(data[4:6], "big")  # SOI, then APP0 JFIF
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    com = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return data[:jfif_end] + app1 + com + data[jfif_end:]


def as_jpeg(ds: Dataset, comment: bytes, exif: bytes = b"Exif\x00\x00PHANTOM") -> Dataset:
    """``ds`` (8-bit MONOCHROME2) stored as baseline JPEG with text segments in its frame."""
    ds = copy.deepcopy(ds)
    frame = jpeg_with_segments(ds.pixel_array, comment, exif)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    return ds
