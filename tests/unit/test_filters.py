"""Series filters: what a project keeps of a retrieved study."""

from __future__ import annotations

import datetime as dt

import pytest

from pacsflow.config import FilterConfig
from pacsflow.filters import read_headers, select_instances
from pacsflow.sandbox.synthetic import make_study, write_study


@pytest.fixture
def study_files(tmp_path):
    """Three series: a localizer (1 instance), an axial CT (3), and an MR-labelled one (3)."""
    datasets = make_study(
        mrn="MRN0000001",
        accession="ACC1",
        study_date=dt.date(2020, 1, 1),
        patient_name="DOE^JANE",
        birth_date=dt.date(1970, 1, 1),
        sex="F",
        modality="CT",
        n_series=3,
        n_instances=3,
    )
    series = sorted({ds.SeriesInstanceUID for ds in datasets})
    for ds in datasets:
        index = series.index(ds.SeriesInstanceUID)
        ds.SeriesDescription = ["Scout localizer", "Axial 1mm", "T1 post"][index]
        ds.Manufacturer = ["SIEMENS", "SIEMENS", "Philips Medical"][index]
        if index == 2:
            ds.Modality = "MR"
    keep = [ds for ds in datasets if ds.SeriesInstanceUID != series[0] or ds.InstanceNumber == 1]
    return write_study(keep, tmp_path / "study")


def test_no_filters_keep_everything(study_files):
    selection = select_instances(read_headers(study_files), [], FilterConfig())
    assert selection.kept == sorted(study_files)
    assert selection.summary() == "kept 3 of 3 series"


def test_each_filter_drops_its_series(study_files):
    headers = read_headers(study_files)
    by_description = select_instances(
        headers, [], FilterConfig(exclude_series_descriptions=["LOCALIZER"])
    )
    assert len(by_description.kept) == 6
    assert by_description.series_dropped == {"series description": 1}

    by_modality = select_instances(headers, ["CT"], FilterConfig())
    assert by_modality.series_dropped == {"modality": 1}

    by_vendor = select_instances(headers, [], FilterConfig(manufacturers=["philips"]))
    assert len(by_vendor.kept) == 3 and by_vendor.series_dropped == {"manufacturer": 2}

    by_size = select_instances(headers, [], FilterConfig(min_instances_per_series=2))
    assert by_size.series_dropped == {"too few instances": 1}


def test_summary_of_an_excluded_study_names_reasons_not_descriptions(study_files):
    selection = select_instances(
        read_headers(study_files),
        ["US"],
        FilterConfig(exclude_series_descriptions=["scout"]),
    )
    assert selection.kept == []
    assert selection.summary() == "kept 0 of 3 series; dropped: 3 by modality"
    assert "Axial" not in selection.summary()
