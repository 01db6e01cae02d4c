"""The DICOM destination against an in-process pynetdicom node that misbehaves on purpose.

Real associations on 127.0.0.1: a node that stores only MR, one that is out of
resources, and one that answers success but keeps only some instances; with or without
the study's instance count in its STUDY-level C-FIND answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacsflow.config import DicomDestinationConfig
from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export import DeliveryIncomplete, make_destination
from pacsflow.sandbox import make_study

DATE = dt.date(2024, 3, 5)


@dataclass
class Node:
    """What the test node does with C-STOREs, and what it answers to a C-FIND."""

    store_status: int = 0x0000
    keep_every: int = 1  # keep one of every n instances it acknowledges
    counts: bool = False  # answer NumberOfStudyRelatedInstances at STUDY level
    stored: dict[str, Dataset] = field(default_factory=dict)
    received: int = 0
    queried: list[str] = field(default_factory=list)  # QueryRetrieveLevel of each C-FIND

    def on_store(self, event: evt.Event) -> int:
        self.received += 1
        if self.store_status == 0x0000 and self.received % self.keep_every == 0:
            ds = event.dataset
            self.stored[str(ds.SOPInstanceUID)] = ds
        return self.store_status

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        study_uid = str(event.identifier.StudyInstanceUID)
        level = str(event.identifier.QueryRetrieveLevel)
        self.queried.append(level)
        held = [ds for ds in self.stored.values() if str(ds.StudyInstanceUID) == study_uid]
        if level == "STUDY" and held:
            answer = Dataset()
            answer.QueryRetrieveLevel = "STUDY"
            answer.StudyInstanceUID = study_uid
            answer.NumberOfStudyRelatedInstances = len(held) if self.counts else None
            yield 0xFF00, answer
        elif level == "IMAGE":
            for ds in held:
                answer = Dataset()
                answer.QueryRetrieveLevel = "IMAGE"
                answer.StudyInstanceUID = study_uid
                answer.SOPInstanceUID = ds.SOPInstanceUID
                yield 0xFF00, answer
        yield 0x0000, None


def start_node(node: Node, contexts: list) -> tuple[object, int]:
    ae = AE("NODE")
    for context in contexts:
        ae.add_supported_context(context.abstract_syntax)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    handlers = [(evt.EVT_C_STORE, node.on_store), (evt.EVT_C_FIND, node.on_find)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    return server, server.socket.getsockname()[1]


def serving(node: Node, running: list) -> int:
    """Start ``node`` for every storage SOP class, stopped with ``running``; its port."""
    server, port = start_node(node, AllStoragePresentationContexts)
    running.append(server)
    return port


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, str]:
    datasets = make_study(
        mrn="X",
        accession="Y",
        study_date=DATE,
        patient_name="ANON^ANON",
        birth_date=DATE,
        sex="O",
        modality="CT",
        n_series=1,
        n_instances=6,
    )
    folder = tmp_path / "deid"
    folder.mkdir()
    for number, ds in enumerate(datasets):
        ds.save_as(folder / f"{number:05d}.dcm", enforce_file_format=True)
    return folder, str(datasets[0].StudyInstanceUID)


def destination_for(port: int) -> object:
    return make_destination(
        DicomDestinationConfig(
            type="dicom", ae_title="NODE", host="127.0.0.1", port=port, timeout=5
        )
    )


@pytest.fixture
def running() -> Iterator[list]:
    servers: list = []
    yield servers
    for server in servers:
        server.shutdown()


def test_a_node_that_refuses_the_sop_class_is_permanent(study, running) -> None:
    node = Node()
    server, port = start_node(
        node, [c for c in AllStoragePresentationContexts if c.abstract_syntax == MRImageStorage]
    )
    running.append(server)
    folder, study_uid = study
    with pytest.raises(PermanentError, match=r"does not accept CT Image Storage .*1\.2\.840"):
        destination_for(port).export(folder, "p", "PAT", study_uid)
    assert node.received == 0


def test_out_of_resources_is_retriable(study, running) -> None:
    node = Node(store_status=0xA702)
    port = serving(node, running)
    folder, study_uid = study
    with pytest.raises(RetriableError, match=r"out of resources \(status 0xA702\)"):
        destination_for(port).export(folder, "p", "PAT", study_uid)


def test_another_failure_status_is_permanent(study, running) -> None:
    node = Node(store_status=0xA900)  # data set does not match SOP class
    port = serving(node, running)
    folder, study_uid = study
    with pytest.raises(PermanentError, match=r"C-STORE status 0xA900"):
        destination_for(port).export(folder, "p", "PAT", study_uid)


def test_a_node_that_loses_instances_fails_with_both_counts(study, running) -> None:
    node = Node(keep_every=2)  # says success, keeps every second instance
    port = serving(node, running)
    folder, study_uid = study
    with pytest.raises(
        DeliveryIncomplete, match=r"holds 4 of the 6 instances sent, after sending the 3"
    ):
        destination_for(port).export(folder, "p", "PAT", study_uid)
    # 6 sent, 3 kept; the 3 missing re-sent, 1 more kept: 4 of 6.
    assert node.received == 9


def test_a_count_that_grew_by_all_sent_needs_no_instance_list(study, running) -> None:
    node = Node(counts=True)
    port = serving(node, running)
    folder, study_uid = study
    receipt = destination_for(port).export(folder, "p", "PAT", study_uid)
    assert (receipt.instances, receipt.sent, receipt.resent) == (6, 6, 0)
    assert node.queried == ["IMAGE", "STUDY"]  # what it held before, then its count


def test_a_count_that_falls_short_lists_and_resends_the_missing(study, running) -> None:
    node = Node(counts=True, keep_every=2)
    port = serving(node, running)
    folder, study_uid = study
    with pytest.raises(
        DeliveryIncomplete, match=r"holds 4 of the 6 instances sent, after sending the 3"
    ):
        destination_for(port).export(folder, "p", "PAT", study_uid)
    assert node.received == 9
    assert node.queried == ["IMAGE", "STUDY", "IMAGE", "IMAGE"]


def test_a_complete_study_is_already_present_and_not_sent_again(study, running) -> None:
    node = Node()
    port = serving(node, running)
    folder, study_uid = study
    destination = destination_for(port)
    first = destination.export(folder, "p", "PAT", study_uid)
    assert (first.instances, first.sent, first.already_present) == (6, 6, False)
    again = destination.export(folder, "p", "PAT", study_uid)
    assert (again.instances, again.sent, again.already_present) == (6, 0, True)
    assert node.received == 6
