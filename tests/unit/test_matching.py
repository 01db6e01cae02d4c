"""The ambiguity policy on its own: which C-FIND matches a manifest row gets."""

from __future__ import annotations

import datetime as dt

import pytest

from pacsflow.config import ProjectConfig, load_project_config
from pacsflow.dicom.matching import choose
from pacsflow.dicom.query import StudyMatch
from pacsflow.errors import ConfigError

ROW_DATE = dt.date(2024, 3, 5)
ON_DATE = StudyMatch("1.2.3.1", 4, ("CT",), ROW_DATE)
DAY_AFTER = StudyMatch("1.2.3.2", 2, ("CT",), dt.date(2024, 3, 6))
UNDATED = StudyMatch("1.2.3.3", 1, ("MR",), None)


@pytest.mark.parametrize("policy", ["none", "date_match", "all"])
def test_no_match_is_not_found_under_every_policy(policy) -> None:
    choice = choose([], ROW_DATE, policy)
    assert choice.not_found and not choice.ambiguous and choice.studies == ()


@pytest.mark.parametrize("policy", ["none", "date_match", "all"])
def test_one_match_on_the_manifest_date_is_taken(policy) -> None:
    choice = choose([ON_DATE], ROW_DATE, policy)
    assert choice.studies == (ON_DATE,)
    assert not choice.ambiguous and not choice.not_found


def test_none_refuses_several_matches_and_says_how_many_and_when() -> None:
    choice = choose([DAY_AFTER, ON_DATE], ROW_DATE, "none")
    assert choice.ambiguous and choice.studies == () and not choice.not_found
    assert choice.reason.startswith(
        "2 studies match (dated 2024-03-05, 2024-03-06; the manifest says 2024-03-05)"
    )
    assert "add the study_uid column" in choice.reason


def test_none_refuses_one_match_on_another_date() -> None:
    choice = choose([DAY_AFTER], ROW_DATE, "none")
    assert choice.ambiguous
    assert "1 study matches (dated 2024-03-06; the manifest says 2024-03-05)" in choice.reason
    assert "its date is not the manifest's" in choice.reason


def test_none_takes_one_match_the_source_gives_no_date_for() -> None:
    assert choose([UNDATED], ROW_DATE, "none").studies == (UNDATED,)


def test_a_study_listed_twice_is_one_match() -> None:
    assert choose([ON_DATE, ON_DATE], ROW_DATE, "none").studies == (ON_DATE,)


def test_date_match_takes_the_one_on_the_manifest_date() -> None:
    assert choose([DAY_AFTER, ON_DATE, UNDATED], ROW_DATE, "date_match").studies == (ON_DATE,)


def test_date_match_refuses_when_none_is_on_the_date() -> None:
    choice = choose([DAY_AFTER, UNDATED], ROW_DATE, "date_match")
    assert choice.ambiguous
    assert "(dated 2024-03-06, no date; the manifest says 2024-03-05)" in choice.reason
    assert "none is on the manifest's date" in choice.reason


def test_date_match_refuses_two_on_the_date() -> None:
    twin = StudyMatch("1.2.3.9", 1, ("CT",), ROW_DATE)
    choice = choose([ON_DATE, twin], ROW_DATE, "date_match")
    assert choice.ambiguous and "2 are on the manifest's date" in choice.reason


def test_all_takes_every_match_whatever_its_date() -> None:
    choice = choose([DAY_AFTER, ON_DATE, UNDATED], ROW_DATE, "all")
    assert set(choice.studies) == {DAY_AFTER, ON_DATE, UNDATED}
    assert choose([DAY_AFTER], ROW_DATE, "all").studies == (DAY_AFTER,)


def test_the_reason_names_no_identifier() -> None:
    reason = choose([DAY_AFTER, ON_DATE], ROW_DATE, "none").reason
    assert "1.2.3" not in reason


def test_the_policy_is_a_project_setting_with_a_safe_default(tmp_path) -> None:
    assert ProjectConfig(name="p", sources=["a"], destination="d").ambiguity == "none"
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsources: [a]\ndestination: d\nambiguity: date_match\n")
    assert load_project_config(path).ambiguity == "date_match"
    path.write_text("name: p\nsources: [a]\ndestination: d\nambiguity: newest\n")
    with pytest.raises(ConfigError, match=r"ambiguity: Input should be 'none', 'date_match'"):
        load_project_config(path)
