"""Is an instance as received from a source whole? A check on its pixel data.

A source can serve an instance whose file it holds cut short: the DIMSE transfer is
then complete, the dataset parses, and only its *Pixel Data* is shorter than its own
image attributes say (PS3.5 Section 8.1.1: rows x columns x samples x frames x bits
allocated, in whole bytes). De-identified and exported, it would reach the researchers as
an image that cannot be displayed, and the study would count as exported. So the study
fails instead, with the instance and the two lengths as its reason.

Native (uncompressed) pixel data only: encapsulated pixel data that is cut short does
not parse at all, and pydicom then raises when the file is read.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length

from pacsflow.errors import PermanentError

_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class CorruptInstance(PermanentError):
    """An instance from a source is not whole; repeating the retrieval gets the same."""


def pixel_data_problem(ds: Dataset) -> str | None:
    """Why ``ds``'s native pixel data cannot be whole, or None when it can (or is absent).

    The reason holds lengths only, never a value of the dataset.
    """
    if not any(keyword in ds for keyword in _PIXEL_DATA):
        if "Rows" in ds:  # an image whose file ends before its pixel data
            return "no pixel data, though its image attributes (Rows, Columns) say it is an image"
        return None
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    try:
        expected = get_expected_length(ds, unit="bytes")
    except (AttributeError, KeyError, TypeError, ValueError):
        return "pixel data without the image attributes that give its length (Rows, ...)"
    actual = len(ds.PixelData)
    if actual < expected:
        return f"pixel data of {actual:,} bytes where its image attributes need {expected:,} bytes"
    return None
