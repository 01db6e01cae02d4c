"""One project, four destination types: each verified end to end against a real server.

Orthanc (Debian, with its DICOMweb plugin) is the DICOM node and the DICOMweb archive;
pyftpdlib with a certificate made in the test is the FTPS server. A study is staged as
a retrieval would leave it, then :func:`pacsflow.pipeline.deidentify_and_export` runs
with the project's ``destination:`` line naming each type in turn.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ftplib
import io
import json
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from pacsflow.config import (
    DicomDestinationConfig,
    DicomwebDestinationConfig,
    load_project_config,
    load_site_config,
)
from pacsflow.deid.profile import build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.dicom import storage
from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export import ftps as ftps_destination
from pacsflow.export import make_destination
from pacsflow.ledger import StudyStatus, make_engine, migrate, session_factory
from pacsflow.ledger import repository as repo
from pacsflow.manifest import ManifestRow
from pacsflow.pipeline import Workspace, deidentify_and_export
from pacsflow.sandbox import make_patients, make_study, study_of
from pacsflow.sandbox.synthetic import write_study
from tests.cutting_proxy import CuttingProxy
from tests.ftps_server import PASSWORD, USER, FtpsServer, start_ftps_server
from tests.integration.conftest import require
from tests.servers import (
    OrthancServer,
    free_port,
    orthanc_available,
    orthanc_binary,
    orthanc_config,
    start_orthanc,
)

pytestmark = pytest.mark.integration

PSEUDONYMIZER = Pseudonymizer(bytes(range(32)))
BASIC = build_profile("basic")
DATE = dt.date(2024, 3, 5)
CALLING_AE = "PACSFLOW"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """The DICOM node and DICOMweb archive; it lets our AE title C-FIND (to verify)."""
    require(orthanc_available(), "Orthanc (apt-get install orthanc orthanc-dicomweb)")
    server = start_orthanc(
        tmp_path_factory.mktemp("orthanc-dest"),
        "RESEARCH",
        {"pacsflow": (CALLING_AE, "127.0.0.1", free_port())},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ftps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpsServer]:
    server = start_ftps_server(tmp_path_factory.mktemp("ftps"))
    yield server
    server.stop()


def site_yaml(tmp_path: Path, orthanc: OrthancServer, ftps: FtpsServer) -> str:
    return f"""\
ledger: sqlite:///{tmp_path / "ledger.db"}
staging: {tmp_path / "staging"}
sources:
  pacs: {{ae_title: PACS, host: 127.0.0.1, port: 104}}
destinations:
  share: {{type: filesystem, path: {tmp_path / "export"}}}
  node: {{type: dicom, ae_title: RESEARCH, host: 127.0.0.1, port: {orthanc.dicom_port}}}
  archive: {{type: dicomweb, url: "{orthanc.base_url}/dicom-web", batch_size: 4}}
  drop:
    type: ftps
    host: 127.0.0.1
    port: {ftps.port}
    username: {USER}
    password: {PASSWORD}
    directory: /incoming
    ca_file: {ftps.certificate.ca_file}
"""


PROJECT_YAML = """\
name: lung-ct
sources: [pacs]
destination: {destination}
"""


def stage_study(ws: Workspace, project: str, seed: int) -> tuple[int, list[pydicom.Dataset]]:
    """A study in the ledger and in raw staging, as a C-MOVE would have left it."""
    patient = make_patients(1, seed=seed)[0]
    study = study_of(
        patient,
        accession=f"ACC{seed:05d}",
        study_date=DATE,
        n_series=2,
        n_instances=3,
        seed=seed,
    )
    row = ManifestRow(
        row=1,
        study_date=DATE,
        mrn=patient.mrn,
        accession_number=f"ACC{seed:05d}",
        procedure_id=f"PROC-{seed}",
    )
    uid = str(study[0].StudyInstanceUID)
    with ws.sessions() as session:
        repo.ingest_manifest(session, project, [row])
        [(study_id, _ref)] = repo.studies_to_process(session, project)
        repo.start_attempt(session, study_id)
        repo.update_study(session, study_id, source="pacs", found_study_uid=uid)
    write_study(study, storage.study_dir(ws.staging, project, uid))
    return study_id, study


def orthanc_study(orthanc: OrthancServer, study_uid: str) -> list[dict]:
    """The instances Orthanc holds for ``study_uid`` (REST, not the path under test)."""
    found = requests.post(
        f"{orthanc.base_url}/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        timeout=30,
    )
    found.raise_for_status()
    return found.json()


def datasets_at(
    destination: str, where: Path, orthanc: OrthancServer, ftps: FtpsServer, study_uid: str
) -> list[pydicom.Dataset]:
    """Read back what the destination holds of the study, as its user would."""
    if destination == "share":
        return [pydicom.dcmread(p) for p in sorted(where.glob("*.dcm"))]
    if destination in ("node", "archive"):
        instances = orthanc_study(orthanc, study_uid)
        return [pydicom.dcmread(io.BytesIO(orthanc_bytes(orthanc, i["ID"]))) for i in instances]
    [zip_file] = [p for p in (ftps.root / "incoming").rglob("*.zip") if study_uid in p.name]
    with zipfile.ZipFile(zip_file) as zf:
        assert zf.testzip() is None
        return [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist()]


def orthanc_bytes(orthanc: OrthancServer, instance_id: str) -> bytes:
    response = requests.get(f"{orthanc.base_url}/instances/{instance_id}/file", timeout=30)
    response.raise_for_status()
    return response.content


@pytest.mark.parametrize(
    ("destination", "seed"), [("share", 1), ("node", 2), ("archive", 3), ("drop", 4)]
)
def test_one_line_switches_the_destination(
    destination: str, seed: int, tmp_path: Path, orthanc: OrthancServer, ftps: FtpsServer
) -> None:
    (tmp_path / "pacsflow.yaml").write_text(site_yaml(tmp_path, orthanc, ftps))
    (tmp_path / "lung-ct.yaml").write_text(PROJECT_YAML.format(destination=destination))
    site = load_site_config(tmp_path / "pacsflow.yaml")
    project = load_project_config(tmp_path / "lung-ct.yaml")
    project.check_against(site)
    engine = make_engine(site.ledger)
    migrate(engine)
    ws = Workspace(site=site, sessions=session_factory(engine))
    study_id, study = stage_study(ws, project.name, seed)

    assert deidentify_and_export(ws, study_id, project, PSEUDONYMIZER, BASIC) == "exported"

    pseudo_patient = PSEUDONYMIZER.patient_id(str(study[0].PatientID))
    pseudo_study = PSEUDONYMIZER.uid(str(study[0].StudyInstanceUID))
    where = tmp_path / "export" / project.name / pseudo_patient / pseudo_study
    held = datasets_at(destination, where, orthanc, ftps, pseudo_study)
    assert len(held) == 6
    assert {str(ds.PatientID) for ds in held} == {pseudo_patient}
    assert {str(ds.StudyInstanceUID) for ds in held} == {pseudo_study}
    assert len({str(ds.SOPInstanceUID) for ds in held}) == 6
    originals = {str(ds.SOPInstanceUID) for ds in study}
    assert not originals & {str(ds.SOPInstanceUID) for ds in held}
    mrn = str(study[0].PatientID)
    assert all(mrn not in str(ds.PatientID) for ds in held)
    with ws.sessions() as session:
        row = repo.get_study(session, study_id)
        assert row.status == StudyStatus.EXPORTED
        assert row.exported_instances == 6
    engine.dispose()


# -- a connection cut mid-study: the next attempt completes it, with no duplicate ------


def deid_study(tmp_path: Path, seed: int, n_instances: int = 10) -> tuple[Path, str]:
    """A folder of instances as the pipeline hands it to a destination (fresh UIDs)."""
    patient = make_patients(1, seed=seed)[0]
    study = make_study(
        mrn=patient.mrn,
        accession=f"CUT{seed}",
        study_date=DATE,
        patient_name="ANON^ANON",
        birth_date=DATE,
        sex="O",
        n_series=1,
        n_instances=n_instances,
        seed=seed,
    )
    folder = tmp_path / "deid" / f"study-{seed}"
    folder.mkdir(parents=True)
    for number, ds in enumerate(study):
        ds.save_as(folder / f"{number:05d}.dcm", enforce_file_format=True)
    return folder, str(study[0].StudyInstanceUID)


def half_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.dcm")) // 2


@pytest.mark.parametrize("kind", ["dicom", "dicomweb"])
def test_a_cut_connection_is_completed_by_the_next_attempt(
    kind: str, tmp_path: Path, orthanc: OrthancServer
) -> None:
    folder, study_uid = deid_study(tmp_path, seed=10 if kind == "dicom" else 11)
    target = ("127.0.0.1", orthanc.dicom_port if kind == "dicom" else orthanc.http_port)
    with CuttingProxy(target, cut_after=half_of(folder)) as proxy:
        if kind == "dicom":
            config = DicomDestinationConfig(
                type="dicom", ae_title="RESEARCH", host="127.0.0.1", port=proxy.port, workers=1
            )
        else:
            config = DicomwebDestinationConfig(
                type="dicomweb", url=f"http://127.0.0.1:{proxy.port}/dicom-web", batch_size=2
            )
        destination = make_destination(config)
        with pytest.raises(RetriableError):
            destination.export(folder, "lung-ct", "PAT", study_uid)
        assert proxy.cut
        partly = len(orthanc_study(orthanc, study_uid))
        assert 0 < partly < 10

        receipt = destination.export(folder, "lung-ct", "PAT", study_uid)

    assert receipt.instances == 10
    assert receipt.sent == 10 - partly  # only what was missing went again
    held = orthanc_study(orthanc, study_uid)
    assert len(held) == 10
    assert len({i["MainDicomTags"]["SOPInstanceUID"] for i in held}) == 10


def test_a_cut_ftps_upload_resumes_and_leaves_one_zip(tmp_path: Path) -> None:
    folder, study_uid = deid_study(tmp_path, seed=12)
    server = start_ftps_server(tmp_path / "ftps", cut_after_bytes=half_of(folder))
    try:
        destination = make_destination(server.destination())
        with pytest.raises(RetriableError):
            destination.export(folder, "lung-ct", "PAT", study_uid)
        assert server.cut_marker.exists()
        [partial] = server.files()
        assert partial.startswith("lung-ct/.partial/")
        kept = (server.root / partial).stat().st_size
        assert kept > 0

        receipt = destination.export(folder, "lung-ct", "PAT", study_uid)
        log = server.log_path.read_text()
    finally:
        server.stop()
    assert (receipt.instances, receipt.already_present) == (10, False)
    assert server.files() == [f"lung-ct/PAT/{study_uid}.zip"]
    with zipfile.ZipFile(server.root / "lung-ct" / "PAT" / f"{study_uid}.zip") as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(p.name for p in folder.glob("*.dcm"))
        for name in zf.namelist():
            assert zf.read(name) == (folder / name).read_bytes()
    # The second STOR carried only the rest of the zip: the upload was resumed.
    stors = [line for line in log.splitlines() if " STOR " in line]
    total = (server.root / "lung-ct" / "PAT" / f"{study_uid}.zip").stat().st_size
    sent_again = int(stors[-1].split("bytes=")[1].split()[0])
    assert sent_again == total - kept


def test_an_ftps_upload_cut_off_before_its_rename_is_renamed_not_sent_again(
    tmp_path: Path, ftps: FtpsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, study_uid = deid_study(tmp_path, seed=13)
    destination = make_destination(ftps.destination(directory="/renamed"))

    def lost_before_the_rename(self: object, *args: object) -> None:
        raise ftplib.error_temp("421 connection lost")

    with monkeypatch.context() as patched:
        patched.setattr(ftps_destination._ReusingFTP_TLS, "rename", lost_before_the_rename)
        with pytest.raises(RetriableError):
            destination.export(folder, "lung-ct", "PAT", study_uid)
    [partial] = [f for f in ftps.files() if f.startswith("renamed/")]
    assert partial.startswith("renamed/lung-ct/.partial/")

    def not_again(*args: object) -> None:
        raise AssertionError("the whole zip was written again")

    monkeypatch.setattr(ftps_destination, "write_study_zip", not_again)
    receipt = destination.export(folder, "lung-ct", "PAT", study_uid)
    assert (receipt.instances, receipt.already_present) == (10, False)
    assert [f for f in ftps.files() if f.startswith("renamed/")] == [
        f"renamed/lung-ct/PAT/{study_uid}.zip"
    ]
    with zipfile.ZipFile(ftps.root / "renamed" / "lung-ct" / "PAT" / f"{study_uid}.zip") as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == sorted(p.name for p in folder.glob("*.dcm"))


# -- failures say whether a retry can help -------------------------------------------


def changed(config, **values):
    """``config`` with ``values`` changed, validated again (secrets become SecretStr)."""
    return type(config).model_validate({**config.model_dump(), **values})


def test_dicom_node_that_does_not_know_the_ae_title_is_permanent(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    folder, study_uid = deid_study(tmp_path, seed=20, n_instances=1)
    destination = make_destination(
        DicomDestinationConfig(
            type="dicom", ae_title="NOTRESEARCH", host="127.0.0.1", port=orthanc.dicom_port
        )
    )
    with pytest.raises(PermanentError, match=r"rejected the association .*ae_title"):
        destination.export(folder, "lung-ct", "PAT", study_uid)


def test_dicom_node_that_is_down_is_retriable(tmp_path: Path) -> None:
    folder, study_uid = deid_study(tmp_path, seed=21, n_instances=1)
    destination = make_destination(
        DicomDestinationConfig(
            type="dicom", ae_title="RESEARCH", host="127.0.0.1", port=free_port(), timeout=5
        )
    )
    with pytest.raises(RetriableError, match="RESEARCH at 127.0.0.1"):
        destination.export(folder, "lung-ct", "PAT", study_uid)


def test_ftps_wrong_password_and_untrusted_certificate_are_permanent(
    tmp_path: Path, ftps: FtpsServer
) -> None:
    folder, study_uid = deid_study(tmp_path, seed=22, n_instances=1)
    good = ftps.destination()
    wrong_password = changed(good, password="guess")
    with pytest.raises(PermanentError, match=r"refused the login of 'research'"):
        make_destination(wrong_password).export(folder, "p", "PAT", study_uid)
    untrusted = changed(good, ca_file=None)
    with pytest.raises(PermanentError, match=r"certificate .* is not trusted.*ca_file"):
        make_destination(untrusted).export(folder, "p", "PAT", study_uid)
    assert make_destination(good).export(folder, "p", "PAT", study_uid).instances == 1


@pytest.fixture
def orthanc_with_auth(tmp_path: Path) -> Iterator[str]:
    """An Orthanc that wants HTTP basic auth (alice / wonder); yields its base URL.

    Started here rather than with :func:`start_orthanc`, whose readiness probe has no
    credentials: ready means ``GET /system`` answers 401.
    """
    require(orthanc_available(), "Orthanc (apt-get install orthanc orthanc-dicomweb)")
    workdir = tmp_path / "orthanc-auth"
    workdir.mkdir()
    http_port = free_port()
    config = orthanc_config(workdir, "SECURE", free_port(), http_port, {})
    config.update({"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "wonder"}})
    (workdir / "config.json").write_text(json.dumps(config))
    with open(workdir / "orthanc.log", "wb") as log:
        process = subprocess.Popen(
            [orthanc_binary(), str(workdir / "config.json")], stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/system", timeout=2).status_code == 401:
                    break
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_dicomweb_basic_auth(tmp_path: Path, orthanc_with_auth: str) -> None:
    folder, study_uid = deid_study(tmp_path, seed=23, n_instances=2)
    config = DicomwebDestinationConfig(
        type="dicomweb", url=f"{orthanc_with_auth}/dicom-web", username="alice", password="wrong"
    )
    with pytest.raises(PermanentError, match=r"refused our credentials \(HTTP 401\)"):
        make_destination(config).export(folder, "p", "PAT", study_uid)
    config = changed(config, password="wonder")
    receipt = make_destination(config).export(folder, "p", "PAT", study_uid)
    assert (receipt.instances, receipt.sent) == (2, 2)


def test_the_linker_goes_to_the_ftps_drop(tmp_path: Path, ftps: FtpsServer) -> None:
    linker = tmp_path / "linker.parquet"
    linker.write_bytes(b"PAR1 not really")
    destination = make_destination(ftps.destination(directory="/incoming"))
    where = destination.send_file(linker, "linker-project")
    linker.write_bytes(b"PAR1 second version")
    assert destination.send_file(linker, "linker-project") == where
    assert where.endswith("/incoming/linker-project/linker.parquet")
    folder = ftps.root / "incoming" / "linker-project"
    assert (folder / "linker.parquet").read_bytes() == b"PAR1 second version"
    assert [p.name for p in folder.iterdir() if p.is_file()] == ["linker.parquet"]
