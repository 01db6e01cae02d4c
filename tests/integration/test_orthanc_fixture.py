"""The Orthanc fixture gives a real PACS that pynetdicom and dcmtk can talk to."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.integration.conftest import require_dcmtk
from tests.servers import free_port

pytestmark = pytest.mark.integration

SCU_AET = "PACSFLOW"
PACS_AET = "TESTPACS"

SUCCESS = 0x0000
PENDING = {0xFF00, 0xFF01}


def _nodelay(event: evt.Event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _make_ae(aet: str) -> AE:
    ae = AE(ae_title=aet)
    ae.acse_timeout = 10
    ae.dimse_timeout = 20
    ae.network_timeout = 10
    return ae


@pytest.fixture
def ct_small() -> Path:
    return Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def pacs(orthanc_factory, ct_small):
    server = orthanc_factory(PACS_AET, {"pacsflow": (SCU_AET, "127.0.0.1", free_port())})
    assert server.upload([ct_small]) == 1
    return server


def _study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.ModalitiesInStudy = ""
    query.NumberOfStudyRelatedInstances = ""
    query.PatientID = ""
    return query


def test_rest_seeding(pacs, ct_small):
    study_uid = dcmread(ct_small, stop_before_pixels=True).StudyInstanceUID
    assert pacs.study_count() == 1
    assert pacs.instance_count() == 1
    studies = pacs.find_studies()
    assert [s["MainDicomTags"]["StudyInstanceUID"] for s in studies] == [study_uid]
    # Re-uploading is accepted (OverwriteInstances) and does not duplicate.
    assert pacs.upload([ct_small]) == 1
    assert pacs.instance_count() == 1


def test_cfind_and_cget_from_pynetdicom(pacs, ct_small):
    study_uid = dcmread(ct_small, stop_before_pixels=True).StudyInstanceUID
    handlers = [(evt.EVT_CONN_OPEN, _nodelay)]

    # Study-level C-FIND, Study Root.
    ae = _make_ae(SCU_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=PACS_AET, evt_handlers=handlers)
    assert assoc.is_established
    try:
        responses = list(
            assoc.send_c_find(_study_query(study_uid), StudyRootQueryRetrieveInformationModelFind)
        )
    finally:
        assoc.release()
    matches = [ds for status, ds in responses if status and status.Status in PENDING]
    final = responses[-1][0]
    assert final is not None and final.Status == SUCCESS
    assert len(matches) == 1
    assert matches[0].StudyInstanceUID == study_uid
    assert int(matches[0].NumberOfStudyRelatedInstances) == 1
    assert "CT" in matches[0].ModalitiesInStudy

    # C-GET of the study: the instance comes back over the same association.
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return SUCCESS

    ae = _make_ae(SCU_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        pacs.dicom_port,
        ae_title=PACS_AET,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[*handlers, (evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    get_query = Dataset()
    get_query.QueryRetrieveLevel = "STUDY"
    get_query.StudyInstanceUID = study_uid
    try:
        responses = list(assoc.send_c_get(get_query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final_status = responses[-1][0]
    assert final_status is not None and final_status.Status == SUCCESS
    assert final_status.get("NumberOfCompletedSuboperations", 1) == 1
    assert final_status.get("NumberOfFailedSuboperations", 0) == 0
    assert len(received) == 1
    assert received[0].SOPInstanceUID == dcmread(ct_small, stop_before_pixels=True).SOPInstanceUID


def test_cfind_from_unknown_aet_is_refused(pacs, ct_small):
    """An AE missing from DicomModalities must not get a Success-with-no-matches.

    Orthanc 1.10 accepts the association (C-ECHO/C-STORE are open to anyone) and answers
    the C-FIND itself with an A-ABORT; pynetdicom then yields one empty status.
    """
    study_uid = dcmread(ct_small, stop_before_pixels=True).StudyInstanceUID
    aborted: list[evt.Event] = []
    ae = _make_ae("STRANGER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(
        "127.0.0.1",
        pacs.dicom_port,
        ae_title=PACS_AET,
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_ABORTED, aborted.append)],
    )
    assert assoc.is_established
    try:
        responses = list(
            assoc.send_c_find(_study_query(study_uid), StudyRootQueryRetrieveInformationModelFind)
        )
    finally:
        if assoc.is_established:
            assoc.release()
    statuses = [status.Status for status, _ in responses if status]
    assert statuses == [], statuses  # no Success, no Pending, no failure status
    assoc.join(timeout=10)  # the abort is processed by the association's own thread
    assert assoc.is_aborted
    assert len(aborted) == 1


def test_echoscu_dcmtk(pacs):
    echoscu = require_dcmtk("echoscu")
    env = {**os.environ, "TCP_NODELAY": "1"}
    ok = subprocess.run(
        [echoscu, "-aet", SCU_AET, "-aec", PACS_AET, "127.0.0.1", str(pacs.dicom_port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr + ok.stdout
    # DicomCheckCalledAet: a wrong called AE title is rejected, as on a real PACS.
    wrong = subprocess.run(
        [echoscu, "-aet", SCU_AET, "-aec", "NOTME", "127.0.0.1", str(pacs.dicom_port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode != 0
