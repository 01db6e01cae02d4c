"""The two example projects, each with its own profile, run end to end through the flow.

Checks that each profile did what it says, that projects get different pseudonyms for
the same patient, and that re-running a project from an empty ledger gives the same
pseudonyms byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml

from pacsflow.config import load_project_config, load_site_config

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples" / "projects"
LONGITUDINAL = EXAMPLES / "lung-ct-longitudinal.yaml"
ALLOW_LIST = EXAMPLES / "imaging-allow-list.yaml"


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory(n_studies=6)


def _run(sandbox, project_file: Path, ledger: Path, export: Path) -> dict[str, int]:
    from blocks.site import save_site
    from flows.extract import extract_project

    data = yaml.safe_load(sandbox.config_path.read_text())
    data["ledger"] = f"sqlite:///{ledger}"
    data["destinations"]["local"]["path"] = str(export)
    config = ledger.parent / f"{ledger.stem}.yaml"
    config.write_text(yaml.safe_dump(data))
    save_site(load_site_config(config))
    state = extract_project(
        project=str(project_file), manifest=str(sandbox.manifest_path), return_state=True
    )
    assert state.is_completed(), state.message
    return state.result()


def _pseudonyms(root: Path) -> dict[str, tuple[str, str, str]]:
    """file path relative to the project folder -> (PatientID, StudyUID, SOPInstanceUID)"""
    found = {}
    for path in sorted(root.glob("*/*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found[str(path.relative_to(root))] = (ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID)
    return found


def _originals(sandbox) -> dict[str, pydicom.Dataset]:
    by_study = {}
    for folder in (sandbox.primary.storage_dir, sandbox.secondary.storage_dir):
        for path in folder.rglob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            by_study[str(ds.StudyInstanceUID)] = ds
    return by_study


def test_two_example_projects_with_different_profiles(sandbox, tmp_path, prefect_api):
    wanted = 6 - sandbox.expected["neither"]
    counts = _run(sandbox, LONGITUDINAL, tmp_path / "ledger-a.db", tmp_path / "export-a")
    assert counts["exported"] == wanted
    counts = _run(sandbox, ALLOW_LIST, tmp_path / "ledger-a.db", tmp_path / "export-a")
    assert counts["exported"] == wanted

    longitudinal = tmp_path / "export-a" / load_project_config(LONGITUDINAL).name
    allow_list = tmp_path / "export-a" / load_project_config(ALLOW_LIST).name
    originals = _originals(sandbox)
    key = load_project_config(LONGITUDINAL)

    # Longitudinal: dates shifted (never kept), options recorded, patient size kept.
    for path in longitudinal.glob("*/*/*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
        assert {"113100", "113107", "113108"} <= codes
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert ds.StudyDate and ds.StudyDate not in {o.StudyDate for o in originals.values()}
        assert "PatientSex" in ds and ds.PatientSex in ("F", "M")
        assert "InstitutionName" not in ds or ds.InstitutionName == "RESEARCH SITE"

    # Allow-list: what the file does not list is gone; accession numbers are hashed.
    original_accessions = {o.AccessionNumber for o in originals.values()}
    for path in allow_list.glob("*/*/*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in (
            "InstitutionName",
            "StationName",
            "ReferringPhysicianName",
            "OperatorsName",
            "PatientAge",
        ):
            assert keyword not in ds or ds[keyword].value in ("", None), keyword
        assert ds.AccessionNumber and ds.AccessionNumber not in original_accessions
        assert "StudyDate" not in ds or ds.StudyDate == ""

    # The same patients get different pseudonyms in the two projects (different keys).
    ids_a = {v[0] for v in _pseudonyms(longitudinal).values()}
    ids_b = {v[0] for v in _pseudonyms(allow_list).values()}
    assert len(ids_a) == wanted and not ids_a & ids_b
    assert key.name not in "".join(ids_a)

    # A re-run from an empty ledger and an empty destination: the same pseudonyms.
    _run(sandbox, LONGITUDINAL, tmp_path / "ledger-b.db", tmp_path / "export-b")
    again = tmp_path / "export-b" / key.name
    assert _pseudonyms(again) == _pseudonyms(longitudinal)
    for relative in _pseudonyms(again):
        assert (again / relative).read_bytes() == (longitudinal / relative).read_bytes()
