"""The option columns against the edition of Table E.1-1 the base is pinned to."""

from __future__ import annotations

import pytest
from pydicom.datadict import keyword_for_tag

from pacsflow.config import ProfileOption
from pacsflow.deid.basic_profile import BASIC_PROFILE_CODES, TABLE_VERSION
from pacsflow.deid.options import OPTION_CODES, option_rows, option_rules
from pacsflow.deid.profile import build_profile
from pacsflow.deid.rules import Operation


@pytest.mark.parametrize("option", list(ProfileOption))
def test_every_row_of_an_option_column_is_a_row_of_the_pinned_table(
    option: ProfileOption,
) -> None:
    missing = [
        keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        for tag in option_rows(option)
        if tag not in BASIC_PROFILE_CODES
    ]
    assert missing == [], f"not rows of Table E.1-1 {TABLE_VERSION}: {missing}"


@pytest.mark.parametrize("option", list(ProfileOption))
def test_every_option_records_its_cid_7050_code(option: ProfileOption) -> None:
    value, scheme, meaning = OPTION_CODES[option]
    assert scheme == "DCM" and value.startswith("1131") and meaning.endswith("Option")
    profile = (
        build_profile("basic", [option], loaded=[])
        if option.value != "retain_safe_private"
        else None
    )
    if profile is not None:
        assert OPTION_CODES[option] in profile.method_codes


def test_retain_uids_keeps_every_u_row_and_institution_identity_its_column() -> None:
    uids = option_rules(ProfileOption.RETAIN_UIDS)
    assert {t for t, code in BASIC_PROFILE_CODES.items() if "U" in code} == set(uids)
    assert all(rule.op is Operation.KEEP for rule in uids.values())
    institution = {
        keyword_for_tag(t) for t in option_rows(ProfileOption.RETAIN_INSTITUTION_IDENTITY)
    }
    assert {"InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName"} <= institution


def test_clean_pixel_data_is_a_flag_without_attribute_rules() -> None:
    assert option_rules(ProfileOption.CLEAN_PIXEL_DATA) == {}
    profile = build_profile("basic", [ProfileOption.CLEAN_PIXEL_DATA])
    assert ProfileOption.CLEAN_PIXEL_DATA in profile.options
