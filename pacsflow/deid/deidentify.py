"""The Basic Profile applied to a dataset or a file: the first API, kept for callers.

New code builds a project's :class:`~pacsflow.deid.profile.Profile` with
:func:`~pacsflow.deid.profile.build_profile` and calls ``profile.deidentify(ds, context)``
between :func:`~pacsflow.deid.files.read_instance` and
:func:`~pacsflow.deid.files.write_instance`. These functions do the same with the Basic
Profile and no options, so existing callers keep working.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydicom.dataset import Dataset

from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.profile import PROFILE_NAMES, DeidContext, Profile, build_profile, check_profile
from pacsflow.deid.pseudonyms import Pseudonymizer

__all__ = [
    "PROFILE_NAMES",
    "basic_profile",
    "check_profile",
    "deidentify_dataset",
    "deidentify_file",
]


@cache
def basic_profile() -> Profile:
    """The Basic Application Level Confidentiality Profile with no options and no files."""
    return build_profile("basic")


def deidentify_dataset(
    ds: Dataset, pseudonymizer: Pseudonymizer, patient_pseudonym: str
) -> Dataset:
    """De-identify ``ds`` in place with the Basic Profile and return it."""
    return basic_profile().deidentify(ds, DeidContext(pseudonymizer, patient_pseudonym))


def deidentify_file(
    src: Path, dst: Path, pseudonymizer: Pseudonymizer, patient_pseudonym: str
) -> None:
    """Read ``src``, de-identify it with the Basic Profile, write ``dst`` atomically."""
    ds = read_instance(src)
    deidentify_dataset(ds, pseudonymizer, patient_pseudonym)
    write_instance(ds, dst)
