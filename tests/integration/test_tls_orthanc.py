"""DICOM TLS against a real Orthanc whose DICOM port speaks TLS only and asks for a client
certificate (mutual TLS, as a hospital's security team would set it up).

The unit tests check the handshake against the sandbox PACS; here a whole extraction
finds and retrieves (C-GET, on the TLS association) from Orthanc, and a worker without
our client certificate, or trusting another CA, is refused as unavailable, never as
"not found".
"""

from __future__ import annotations

import datetime as dt

import pytest

from pacsflow.config import SourceConfig
from pacsflow.dicom.query import StudyQuery, find_studies
from pacsflow.errors import SourceUnavailable
from pacsflow.sandbox.synthetic import make_patients, study_of, write_study
from tests.orthanc_sites import filesystem_site, orthanc_source, write_manifest, write_project
from tests.pki import make_pki
from tests.servers import free_port

pytestmark = pytest.mark.integration

PROJECT = "secure"


@pytest.fixture
def tls_orthanc(orthanc_factory, tmp_path):
    """An Orthanc with one 3-instance study, DICOM over TLS only, client certificate required."""
    pki = make_pki(tmp_path / "pki", leaves=("orthanc", "pacsflow"))
    pacs = orthanc_factory(
        "SECURE",
        {"pacsflow": ("PACSFLOW", "127.0.0.1", free_port())},
        extra_config={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki["orthanc"]),
            "DicomTlsPrivateKey": str(pki["orthanc-key"]),
            "DicomTlsTrustedCertificates": str(pki["ca"]),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )
    patient = make_patients(1, seed=5)[0]
    datasets = study_of(
        patient,
        accession="TLS00001",
        study_date=dt.date(2023, 2, 1),
        modality="CT",
        n_series=1,
        n_instances=3,
        seed=5,
    )
    files = write_study(datasets, tmp_path / "seed")
    assert pacs.upload(files) == len(files)  # REST: plain HTTP, only DICOM is TLS
    return pacs, pki, patient


def _source(pacs, **tls) -> SourceConfig:
    return SourceConfig(
        ae_title="SECURE",
        host="127.0.0.1",
        port=pacs.dicom_port,
        timeout=10,
        retrieve="get",
        tls=tls or None,
    )


def test_an_extraction_over_mutual_tls_exports_the_study(
    tls_orthanc, ledger_url, tmp_path, prefect_api
):
    from blocks.site import save_site
    from flows.extract import extract_project

    pacs, pki, patient = tls_orthanc
    tls = {"ca_file": pki["ca"], "cert_file": pki["pacsflow"], "key_file": pki["pacsflow-key"]}
    source = orthanc_source(pacs, retrieve="get", timeout=10, tls=tls)
    site = filesystem_site(tmp_path, ledger_url, free_port(), {"secure": source})
    project_file = write_project(tmp_path, PROJECT, ["secure"])
    row = {"mrn": patient.mrn, "accession_number": "TLS00001", "study_date": "2023-02-01"}
    manifest = write_manifest(tmp_path, [row])
    save_site(site)

    state = extract_project(project=str(project_file), manifest=str(manifest), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["exported"] == 1
    assert len(list((tmp_path / "export" / PROJECT).rglob("*.dcm"))) == 3


@pytest.mark.parametrize("how", ["no client certificate", "plain TCP", "another CA"])
def test_a_worker_orthanc_cannot_verify_or_that_cannot_verify_it_is_refused(tls_orthanc, how):
    pacs, pki, patient = tls_orthanc
    query = StudyQuery(None, patient.mrn, "TLS00001")
    mutual = {"cert_file": pki["pacsflow"], "key_file": pki["pacsflow-key"]}
    source = {
        "no client certificate": _source(pacs, ca_file=pki["ca"]),
        "plain TCP": _source(pacs),
        "another CA": _source(pacs, ca_file=pki["other-ca"], **mutual),
    }[how]
    with pytest.raises(SourceUnavailable):
        find_studies(source, "PACSFLOW", query)
