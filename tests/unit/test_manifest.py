"""Manifests as a research coordinator writes them, and every mistake they make.

Each error test pins the part of the message a user acts on: the line and column as a
spreadsheet shows them (line 1 is the header), and what is wrong with the cell.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from pacsflow.errors import ManifestError
from pacsflow.manifest import ManifestRow, project_slug, read_manifest

UID_A = "1.2.826.0.1.3680043.8.498.1001"
UID_B = "1.2.826.0.1.3680043.8.498.1002"
PIXL_HEADER = (
    "procedure_id,mrn,accession_number,project_name,extract_generated_timestamp,"
    "study_date,study_uid,participant_id"
)


def write(tmp_path: Path, text: str, name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, project: str = "my-study") -> list[str]:
    with pytest.raises(ManifestError) as info:
        read_manifest(path, project)
    return info.value.problems


# -- accepted shapes -------------------------------------------------------------------


def test_minimal_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mrn,accession_number,study_date\nMRN001,ACC001,2024-03-01\nMRN002,ACC002,20240415\n",
    )
    rows = read_manifest(path, "my-study")
    assert rows == [
        ManifestRow(row=1, study_date=dt.date(2024, 3, 1), mrn="MRN001", accession_number="ACC001"),
        ManifestRow(
            row=2, study_date=dt.date(2024, 4, 15), mrn="MRN002", accession_number="ACC002"
        ),
    ]
    assert rows[0].study_key == ("acc", "MRN001", "ACC001")


def test_pixl_export_spec_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PIXL_HEADER
        + "\n"
        + f"101,MRN001,ACC001,My Study,2024-05-01 10:00:00,2024-03-01,{UID_A},P0001\n"
        + f"102,MRN002,ACC002,My Study,2024-05-01 10:00:00,2024-03-02,{UID_B},P0002\n",
    )
    rows = read_manifest(path, "my-study")
    assert [(r.row, r.study_uid, r.participant_id, r.procedure_id) for r in rows] == [
        (1, UID_A, "P0001", "101"),
        (2, UID_B, "P0002", "102"),
    ]
    assert rows[0].mrn == "MRN001"
    assert rows[0].accession_number == "ACC001"
    assert rows[1].study_date == dt.date(2024, 3, 2)
    # The UID, when given, is what identifies the study.
    assert rows[0].study_key == ("uid", UID_A)


def test_pixl_series_rows_of_one_study_become_one_row(tmp_path: Path) -> None:
    line = f"101,MRN001,ACC001,My Study,2024-05-01,2024-03-01,{UID_A},P0001"
    path = write(tmp_path, PIXL_HEADER + ",series_uid\n" + f"{line},1.2.3.1\n{line},1.2.3.2\n")
    rows = read_manifest(path, "my-study")
    assert len(rows) == 1
    assert rows[0].study_uid == UID_A


def test_parquet_with_real_date_columns(tmp_path: Path) -> None:
    path = tmp_path / "manifest.parquet"
    pd.DataFrame(
        {
            "procedure_id": ["101", "102"],
            "mrn": ["0012345", "0067890"],
            "accession_number": ["000ACC1", "000ACC2"],
            "project_name": ["My Study", "my-study"],
            "extract_generated_timestamp": pd.to_datetime(["2024-05-01 10:00", "2024-05-01 11:30"]),
            # A datetime64 column, as pandas writes dates; a time of day is ignored.
            "study_date": pd.to_datetime(["2024-03-01 00:00", "2024-03-02 14:30"]),
            "study_uid": [UID_A, None],
            "participant_id": ["P0001", "P0002"],
        }
    ).to_parquet(path, index=False)
    rows = read_manifest(path, "my-study")
    assert [(r.mrn, r.accession_number, r.study_date, r.study_uid) for r in rows] == [
        ("0012345", "000ACC1", dt.date(2024, 3, 1), UID_A),
        ("0067890", "000ACC2", dt.date(2024, 3, 2), None),
    ]


def test_parquet_with_date32_column(tmp_path: Path) -> None:
    path = tmp_path / "manifest.pq"
    frame = pd.DataFrame(
        {
            "mrn": ["0012345"],
            "accession_number": ["ACC1"],
            "study_date": [dt.date(2023, 12, 31)],
        }
    )
    frame.to_parquet(path, index=False)
    [row] = read_manifest(path, "my-study")
    assert row.study_date == dt.date(2023, 12, 31)
    assert row.mrn == "0012345"


def test_whitespace_is_stripped_from_cells_and_headers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        " MRN , Accession_Number ,study_date \n  MRN001  ,\tACC001 \t, 2024-03-01 \n",
    )
    [row] = read_manifest(path, "my-study")
    assert (row.mrn, row.accession_number, row.study_date) == (
        "MRN001",
        "ACC001",
        dt.date(2024, 3, 1),
    )


def test_leading_zeros_in_mrn_and_accession_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "mrn,accession_number,study_date\n0001234,00987,2024-03-01\n")
    [row] = read_manifest(path, "my-study")
    assert row.mrn == "0001234"
    assert row.accession_number == "00987"


def test_exact_duplicates_are_dropped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mrn,accession_number,study_date\n"
        "MRN001,ACC001,2024-03-01\n"
        "MRN002,ACC002,2024-03-02\n"
        "MRN001,ACC001,2024-03-01\n",
    )
    rows = read_manifest(path, "my-study")
    assert [(r.row, r.mrn) for r in rows] == [(1, "MRN001"), (2, "MRN002")]


def test_project_name_compared_as_slug() -> None:
    assert project_slug("  My Study ") == "my-study"
    assert project_slug("MY_STUDY (2024)") == "my-study-2024"


# -- refused manifests -----------------------------------------------------------------


def test_same_study_with_different_values_names_both_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mrn,accession_number,study_date\n"
        "MRN001,ACC001,2024-03-01\n"
        "MRN002,ACC002,2024-03-02\n"
        "MRN001,ACC001,2024-03-09\n",
    )
    with pytest.raises(
        ManifestError, match=r"line 4, column C \(study_date\): the same study as line 2 with"
    ):
        read_manifest(path, "my-study")


def test_same_uid_with_different_participant_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"study_uid,study_date,participant_id\n{UID_A},2024-03-01,P1\n{UID_A},2024-03-01,P2\n",
    )
    assert problems_of(path) == [
        "line 3, column C (participant_id): the same study as line 2 with another "
        "participant_id; keep one of the two rows"
    ]


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "mrn,accession_number\nMRN001,ACC001\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\): study_date\."):
        read_manifest(path, "my-study")


def test_missing_identifier_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "mrn,study_date\nMRN001,2024-03-01\n")
    with pytest.raises(
        ManifestError, match=r"missing column\(s\): mrn and accession_number, or study_uid"
    ):
        read_manifest(path, "my-study")


def test_row_without_any_identifier_names_row_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mrn,accession_number,study_uid,study_date\n"
        f",,{UID_A},2024-03-01\n"
        "MRN002,,,2024-03-02\n"
        ",,,2024-03-03\n",
    )
    assert problems_of(path) == [
        "line 3, column B (accession_number): empty; each row needs a study_uid or both mrn "
        "and accession_number",
        "line 4, column A (mrn): empty; each row needs a study_uid or both mrn and "
        "accession_number",
    ]


@pytest.mark.parametrize("bad", ["2024-13-01", "01/02/2024", "2024-02-30", "yesterday"])
def test_bad_date_names_row_and_column(tmp_path: Path, bad: str) -> None:
    path = write(
        tmp_path,
        f"mrn,accession_number,study_date\nMRN001,ACC001,2024-03-01\nMRN002,ACC002,{bad}\n",
    )
    with pytest.raises(ManifestError, match=r"line 3, column C \(study_date\): not a date") as info:
        read_manifest(path, "my-study")
    assert info.value.problems == [
        "line 3, column C (study_date): not a date; write YYYY-MM-DD (e.g. 2024-03-01)"
    ]
    assert bad not in str(info.value)  # cell values never appear: they may be identifiers


def test_empty_date_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "mrn,accession_number,study_date\nMRN001,ACC001,\n")
    assert problems_of(path) == ["line 2, column C (study_date): empty; write the date YYYY-MM-DD"]


@pytest.mark.parametrize("bad", ["1.2.03.4", "1.2.abc", "1..2", "1.2.3.", "1." + "2" * 64])
def test_invalid_study_uid(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, f"study_uid,study_date\n{UID_A},2024-03-01\n{bad},2024-03-01\n")
    assert problems_of(path) == [
        "line 3, column A (study_uid): not a valid DICOM UID (digits and dots, no leading "
        "zeros, at most 64 characters)"
    ]


def test_another_projects_row_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PIXL_HEADER
        + "\n"
        + f"101,MRN001,ACC001,My Study,2024-05-01,2024-03-01,{UID_A},P1\n"
        + f"102,MRN002,ACC002,Other Study,2024-05-01,2024-03-01,{UID_B},P2\n",
    )
    with pytest.raises(
        ManifestError,
        match=r"line 3, column D \(project_name\): belongs to project 'Other Study', "
        r"not 'my-study'",
    ):
        read_manifest(path, "my-study")


def test_control_character_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "mrn,accession_number,study_date\nMRN\x01001,ACC001,2024-03-01\n")
    assert problems_of(path) == [
        "line 2, column A (mrn): contains a control character; remove it (often a pasted "
        "line break or tab)"
    ]


def test_header_only_manifest_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "mrn,accession_number,study_date\n")
    with pytest.raises(ManifestError, match="the manifest has no rows; nothing to extract"):
        read_manifest(path, "my-study")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ManifestError, match="line 1: the file is empty"):
        read_manifest(path, "my-study")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mrn,accession_number,study_uid,study_date\n"
        "MRN001,ACC001,,2024-13-01\n"  # bad date
        "MRN002,ACC002,1.2.03,2024-03-01\n"  # bad UID
        ",,,2024-03-01\n"  # no identifier
        "MRN004,ACC004,,2024-03-01\n"  # fine
        "MRN005,ACC005,,01/02/2024\n",  # bad date
    )
    with pytest.raises(ManifestError, match=r"4 problem\(s\); nothing was ingested") as info:
        read_manifest(path, "my-study")
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "line 2, column D (study_date)",
        "line 3, column C (study_uid)",
        "line 4, column A (mrn)",
        "line 6, column D (study_date)",
    ]
    # The message itself lists them, so a CLI that prints str(error) shows them all.
    for problem in problems:
        assert problem in str(info.value)


def test_unknown_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "mrn,accession_number,study_date\n", name="manifest.xlsx")
    with pytest.raises(
        ManifestError, match=r"unknown manifest type '\.xlsx'; use \.csv or \.parquet"
    ):
        read_manifest(path, "my-study")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "nope.csv", "my-study")


def test_two_study_uids_under_one_accession_are_refused_not_dropped(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "mrn,accession_number,study_date,study_uid\n"
        "123,A1,2024-01-02,1.2.3\n"
        "123,A1,2024-01-02,1.2.4\n"
    )
    with pytest.raises(
        ManifestError, match=r"line 3, column D \(study_uid\): line 2 has the same mrn"
    ):
        read_manifest(path, "p1")


def test_problems_of_one_row_are_listed_in_the_order_of_the_checks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PIXL_HEADER
        + "\n"
        + "101,MRN\x01001,ACC001,Other Study,2024-05-01,,1.02,P1\x07\n"
        + f"102,MRN002,ACC002,My Study,2024-05-01,2024-03-01,{UID_A},P2\n"
        + f"103,MRN003,ACC003,My Study,2024-05-01,2024-03-02,{UID_A},P3\n",
    )
    assert problems_of(path) == [
        "line 2, column B (mrn): contains a control character; remove it (often a pasted "
        "line break or tab)",
        "line 2, column H (participant_id): contains a control character; remove it (often "
        "a pasted line break or tab)",
        "line 2, column D (project_name): belongs to project 'Other Study', not 'my-study'; "
        "split the manifest per project",
        "line 2, column G (study_uid): not a valid DICOM UID (digits and dots, no leading "
        "zeros, at most 64 characters)",
        "line 2, column F (study_date): empty; write the date YYYY-MM-DD",
        "line 4, column F (study_date): the same study as line 3 with another study_date; "
        "keep one of the two rows",
    ]
