"""Data-dictionary lookups shared by the profile engine, its file loader and the PHI gate."""

from __future__ import annotations

from functools import lru_cache

from pydicom.datadict import dictionary_VR


@lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str:
    """The VR the data dictionary gives ``tag``, or "UN" for a tag it does not know
    (private tags, and public ones newer than pydicom's dictionary)."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"
