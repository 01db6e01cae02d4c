"""Mask the regions where a device is known to burn in text, with the ``deid`` library.

Why a library: which rectangle of which device's screen holds the patient's name is
knowledge gathered over years by the CTP community (DicomPixelAnonymizer.script) and
kept up by ``deid`` (pydicom/deid) as recipe files with ``%filter`` sections: header
conditions and the coordinates to black out. We use its recipes and its cleaner as they
are and add nothing of our own but the choice of recipe:

* an ultrasound image that declares its data regions (SequenceOfUltrasoundRegions,
  PS3.3 C.8.5.5) gets deid's ``dicom.ultrasound`` recipe: everything outside those
  regions is blacked out, which is where scanners print names, IDs and dates;
* any other image gets deid's default ``dicom`` recipe (the CTP-derived list);
* a project's own recipe files (``pixels.recipe_files``) are applied after either.

An image no recipe knows is not masked; OCR then decides (see the policy).

deid replaces "from:<attribute>" coordinates in the recipe it is given with the values of
the first instance it sees, so every call gets a fresh copy of the parsed recipe.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileDataset

from pacsflow.errors import ConfigError

_COORDINATES = re.compile(r"all|from:\w+|\s*\d+\s*(,\s*\d+\s*){3}", re.IGNORECASE)
_UNMASKED_GROUPS = ("whitelist",)
"""deid reports whitelist matches too; they carry no coordinates and mask nothing."""


@dataclass(frozen=True)
class Masked:
    regions: int
    """Rectangles blacked out (0: no recipe knows this image)."""
    recipes: tuple[str, ...]
    """The recipes whose filters matched ("dicom", "dicom.ultrasound", or a file name)."""


@lru_cache(maxsize=32)
def _recipe(name: str) -> Any:
    """Parse a deid recipe once: a packaged name ("dicom") or a file path."""
    from deid.config import DeidRecipe  # imports matplotlib: only when cleaning

    if (name.endswith((".dicom", ".txt")) or "/" in name) and not Path(name).is_file():
        raise ConfigError(
            f"pixels.recipe_files: {name}: no such file; give the path of a deid "
            "recipe, relative to the project file"
        )
    try:
        recipe = DeidRecipe(name)
    except SystemExit:  # deid exits the interpreter on a bad recipe: make it an error
        raise ConfigError(
            f"pixels.recipe_files: {name} is not a valid deid recipe (FORMAT dicom, then "
            "%filter sections of LABEL, conditions and coordinates x0,y0,x1,y1)"
        ) from None
    filters = recipe.get_filters()
    if not filters:
        raise ConfigError(f"pixels.recipe_files: {name} has no %filter section to mask with")
    for items in filters.values():
        for item in items:
            for _value, where in item.get("coordinates", []):
                if not _COORDINATES.fullmatch(str(where)):
                    raise ConfigError(
                        f"pixels.recipe_files: {name}, {item.get('name', 'a filter')}: "
                        f"coordinates {where!r} must be x0,y0,x1,y1, all, or from:<keyword>"
                    )
    return recipe


def check_recipes(paths: tuple[Path, ...]) -> None:
    """Parse the project's recipe files now, so a mistake fails before any study runs."""
    for path in paths:
        _recipe(str(path))


def _as_file_dataset(ds: Dataset) -> FileDataset:
    """deid only accepts a FileDataset (else it reads a path); wrap without copying."""
    if isinstance(ds, FileDataset):
        return ds
    wrapped = FileDataset("", ds, file_meta=ds.file_meta, preamble=None)
    return wrapped


def _recipes_for(ds: Dataset, extra: tuple[Path, ...]) -> list[str]:
    us_regions = str(ds.get("Modality", "")).upper() == "US" and (
        "SequenceOfUltrasoundRegions" in ds
    )
    return ["dicom.ultrasound" if us_regions else "dicom", *(str(path) for path in extra)]


def _coordinates(ds: FileDataset, recipe_name: str) -> list[dict]:
    """deid's matches of ``recipe_name`` on ``ds`` that carry coordinates to mask."""
    from deid.dicom.pixels.detect import has_burned_pixels

    recipe = copy.deepcopy(_recipe(recipe_name))
    found = has_burned_pixels(ds, deid=recipe)
    results = [r for r in found["results"] if r["group"] not in _UNMASKED_GROUPS]
    return [r for r in results if r.get("coordinates")]


def mask_known_regions(ds: Dataset, extra_recipes: tuple[Path, ...] = ()) -> Masked:
    """Black out the regions the recipes know for this image, in place.

    The masked image is stored uncompressed (Explicit VR Little Endian): masking needs
    decoded pixels, and re-encoding in the original lossy syntax would lose quality again.
    UIDs are not touched here; the profile remaps them afterwards.
    """
    from deid.dicom.pixels.clean import clean_pixel_data

    wrapped = _as_file_dataset(ds)
    results: list[dict] = []
    used: list[str] = []
    for name in _recipes_for(ds, extra_recipes):
        found = _coordinates(wrapped, name)
        if found:
            results += found
            used.append(Path(name).name)
    regions = sum(len(r["coordinates"]) for r in results)
    if not regions:
        return Masked(regions=0, recipes=())
    cleaned = clean_pixel_data(dicom_file=wrapped, results={"results": results})
    photometric = str(ds.PhotometricInterpretation)
    if int(ds.get("SamplesPerPixel", 1)) == 3 and photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom decoded YBR to RGB; store what we now hold
    ds.set_pixel_data(cleaned, photometric, int(ds.BitsStored), generate_instance_uid=False)
    return Masked(regions=regions, recipes=tuple(used))
