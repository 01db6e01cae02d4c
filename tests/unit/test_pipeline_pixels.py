"""The pixel PHI policy end to end, through ``deidentify_and_export``.

Studies are staged as if retrieved (files in the raw staging folder, a located ledger
row), then de-identified and exported by the same function the Prefect task calls. What
is asserted is what a user sees: the study's status, the ledger's reason (rule names,
never the text), and the exported files (present, and without the text in their pixels).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from pacsflow.config import FilesystemDestinationConfig, ProjectConfig, SiteConfig, SourceConfig
from pacsflow.deid.files import write_instance
from pacsflow.deid.pixels.ocr import find_text
from pacsflow.deid.profile import build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.dicom import storage
from pacsflow.ledger import StudyStatus, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.pipeline import Workspace, deidentify_and_export
from pacsflow.sandbox import FakePatient, make_patients
from tests.ledger_rows import ingest_study
from tests.pixel_phantoms import SC_RECIPE, base_study, ct_slice, secondary_capture, ultrasound

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr not installed (scripts/system-deps.sh)"
)
PSEUDONYMIZER = Pseudonymizer(bytes(range(32)))
BASIC = build_profile("basic")
DATE = dt.date(2024, 3, 5)
PATIENTS = make_patients(4, seed=77)


def project(**pixels: object) -> ProjectConfig:
    return ProjectConfig(name="pixels", sources=["pacs"], destination="local", pixels=pixels)


def burned_text(patient: FakePatient) -> str:
    return f"{patient.family_name.upper()} {patient.mrn}"


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    site = SiteConfig(
        ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
        staging=tmp_path / "staging",
        sources={"pacs": SourceConfig(ae_title="PACS", host="127.0.0.1", port=104)},
        destinations={"local": FilesystemDestinationConfig(path=tmp_path / "export")},
    )
    engine: Engine = make_engine(site.ledger)
    migrate(engine)
    yield Workspace(site=site, sessions=session_factory(engine))
    engine.dispose()


def stage(ws: Workspace, study: list[Dataset]) -> int:
    """Ledger row located at the source, files in raw staging: as after ``fetch``."""
    first = study[0]
    study_id = ingest_study(ws.sessions, "pixels", study, DATE)
    with ws.sessions() as session:
        repo.update_study(
            session,
            study_id,
            source="pacs",
            found_study_uid=str(first.StudyInstanceUID),
            expected_instances=len(study),
        )
    folder = storage.study_dir(ws.staging, "pixels", str(first.StudyInstanceUID))
    for number, ds in enumerate(study):
        write_instance(ds, folder / f"{number:03d}.dcm")
    return study_id


def run(ws: Workspace, study_id: int, config: ProjectConfig) -> tuple[str, str | None]:
    status = deidentify_and_export(ws, study_id, config, PSEUDONYMIZER, BASIC)
    with ws.sessions() as session:
        return status, repo.get_study(session, study_id).last_error


def exported_files(ws: Workspace) -> list[Path]:
    return sorted((ws.site.destinations["local"].path / "pixels").rglob("*.dcm"))


def test_us_and_sc_with_burned_in_text_are_quarantined_by_default(ws: Workspace) -> None:
    patient = PATIENTS[0]
    ct, us, sc = base_study(patient, "ACC9001", 3)
    text = burned_text(patient)
    study = [ct_slice(ct), ultrasound(us, text), secondary_capture(sc, text)]
    study_id = stage(ws, study)

    status, reason = run(ws, study_id, project())

    assert status == StudyStatus.QUARANTINED.value
    assert reason == (
        "pixel policy quarantine held 2 of 3 instances: "
        "Modality US is prone to burned-in text and BurnedInAnnotation is absent; "
        "secondary capture SOP class: BurnedInAnnotation is absent"
    )
    assert exported_files(ws) == []


def test_an_ultrasound_whose_no_is_contradicted_by_ocr_is_quarantined(ws: Workspace) -> None:
    patient = PATIENTS[1]
    [us] = base_study(patient, "ACC9002", 1)
    study_id = stage(ws, [ultrasound(us, burned_text(patient), burned_in="NO")])

    status, reason = run(ws, study_id, project())

    assert status == StudyStatus.QUARANTINED.value
    assert reason == "pixel policy quarantine held 1 of 1 instances: OCR found text in PixelData"
    assert patient.family_name.upper() not in reason.upper() and patient.mrn not in reason


def test_clean_masks_the_text_and_exports(ws: Workspace, tmp_path: Path) -> None:
    patient = PATIENTS[2]
    ct, us, sc = base_study(patient, "ACC9003", 3)
    text = burned_text(patient)
    study = [ct_slice(ct), ultrasound(us, text), secondary_capture(sc, text, burned_in="YES")]
    recipe = tmp_path / "site-devices.dicom"
    recipe.write_text(SC_RECIPE)
    cleaning = project(policy="clean", recipe_files=[str(recipe)])

    # Without the project's recipe for its screen captures, the SC still has text.
    status, reason = run(ws, stage(ws, study), project(policy="clean"))
    assert status == StudyStatus.QUARANTINED.value
    assert reason == (
        "pixel policy clean held 1 of 3 instances: "
        "BurnedInAnnotation is YES and no deid recipe knows where to mask"
    )

    with ws.sessions() as session:  # what a user does once the recipe is written
        assert repo.requeue(session, "pixels", StudyStatus.QUARANTINED) == 1
    status, reason = run(ws, stage(ws, study), cleaning)

    assert (status, reason) == (StudyStatus.EXPORTED.value, None)
    files = exported_files(ws)
    assert len(files) == 3
    for path in files:
        ds = pydicom.dcmread(path)
        assert find_text(ds.pixel_array, 50).words == 0, f"text left in {ds.Modality}"
        assert patient.mrn.encode() not in path.read_bytes()


def test_a_ct_without_text_is_exported(ws: Workspace) -> None:
    patient = PATIENTS[3]
    study = [ct_slice(ds) for ds in base_study(patient, "ACC9004", 2)]
    status, reason = run(ws, stage(ws, study), project())
    assert (status, reason) == (StudyStatus.EXPORTED.value, None)
    assert len(exported_files(ws)) == 2
