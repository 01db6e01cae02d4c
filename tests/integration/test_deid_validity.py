"""De-identified output stays valid DICOM: dcmtk parses it, and dicom3tools' dciodvfy
reports no error the original did not already have."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from pacsflow.config import ProfileOption
from pacsflow.deid.files import read_instance, write_instance
from pacsflow.deid.profile import DeidContext, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.sandbox.synthetic import make_study, write_study
from tests.integration.conftest import require, require_dcmtk
from tests.servers import dcmtk_binary

pytestmark = pytest.mark.integration

PROFILES_DIR = Path(__file__).parents[2] / "profiles"
PROFILES = {
    "basic": ("basic", [], []),
    "longitudinal": (
        "basic",
        [
            ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
            ProfileOption.RETAIN_PATIENT_CHARACTERISTICS,
        ],
        [PROFILES_DIR / "longitudinal-ct.yaml"],
    ),
    "allow-list": ("basic", [], [PROFILES_DIR / "pixl-like-allow-list.yaml"]),
}


def _sources(tmp_path: Path) -> list[Path]:
    files = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    large = get_testdata_file("693_UNCI.dcm")  # from pydicom-data: a real 512x512 CT
    if large:
        files.append(Path(large))
    study = make_study(
        mrn="MRN0000042",
        accession="ACC42",
        study_date=dt.date(2022, 5, 6),
        patient_name="NGUYEN^AN",
        birth_date=dt.date(1961, 3, 12),
        sex="F",
        n_series=1,
        n_instances=1,
    )
    return files + write_study(study, tmp_path / "synthetic")


def _errors(dciodvfy: str, path: Path) -> set[str]:
    result = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).splitlines()
    # Errors name the attribute and the problem; values after " = " differ by design.
    return {line.split(" = ")[0] for line in lines if line.startswith("Error")}


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_deidentified_files_stay_valid(profile_name, tmp_path):
    require(Path("/usr/bin/dciodvfy").exists(), "dicom3tools (apt-get install dicom3tools)")
    dcmdump = require_dcmtk("dcmdump")
    dciodvfy = "/usr/bin/dciodvfy"
    assert dcmtk_binary("dcmdump") == dcmdump
    base, options, files = PROFILES[profile_name]
    profile = build_profile(base, options, files)
    pseudonymizer = Pseudonymizer(bytes(range(32)))
    context = DeidContext.for_patient(pseudonymizer, "MRN0000042", "PSEUDO01")
    for number, source in enumerate(_sources(tmp_path)):
        ds = read_instance(source)
        profile.deidentify(ds, context)
        output = write_instance(ds, tmp_path / "out" / f"{number}.dcm")
        dump = subprocess.run([dcmdump, "-q", str(output)], capture_output=True, text=True)
        assert dump.returncode == 0, f"dcmdump cannot read {source.name}: {dump.stderr[:500]}"
        new = _errors(dciodvfy, output) - _errors(dciodvfy, source)
        assert not new, f"{profile_name} de-identification of {source.name} added: {new}"
