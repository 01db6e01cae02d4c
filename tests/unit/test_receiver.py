"""The receiver shares its port only with a pacsflow receiver filling the same staging."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import pytest
from pynetdicom.sop_class import CTImageStorage

from pacsflow.config import FilesystemDestinationConfig, ReceiverConfig, SiteConfig, SourceConfig
from pacsflow.dicom.network import make_ae
from pacsflow.dicom.peers import AllowedPeers, allowed_peers
from pacsflow.dicom.receiver import Receiver
from pacsflow.errors import ConfigError
from pacsflow.sandbox import SandboxPacs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_second_receiver_for_the_same_staging_uses_the_running_one(tmp_path: Path) -> None:
    config = ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=free_port())
    first = Receiver(config, tmp_path / "staging").start()
    try:
        second = Receiver(config, tmp_path / "staging").start()
        assert second.shared and second.running
    finally:
        first.stop()


@pytest.mark.parametrize("holder", ["another site's receiver", "a PACS"])
def test_a_port_held_by_anything_else_is_an_error_not_a_shared_receiver(
    tmp_path: Path, holder: str
) -> None:
    port = free_port()
    config = ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=port)
    if holder == "a PACS":
        # A DICOM program answers C-ECHO whatever AE title it is called by.
        other = SandboxPacs("PACSFLOW", port, tmp_path / "pacs").start()
    else:
        other = Receiver(config, tmp_path / "other-staging").start()
    try:
        receiver = Receiver(config, tmp_path / "staging")
        receiver.handover_seconds = 0.5
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*receiver.port"):
            receiver.start()
    finally:
        other.stop()


def _associates(port: int, calling_ae: str) -> bool:
    ae = make_ae(calling_ae, timeout=5)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSFLOW")
    established = assoc.is_established
    if established:
        assoc.release()
    return established


def _site(port: int, **source: object) -> SiteConfig:
    return SiteConfig(
        receiver=ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=port),
        sources={"primary": SourceConfig(ae_title="PRIMARY", host="127.0.0.1", port=104, **source)},
        destinations={"local": FilesystemDestinationConfig(path=Path("/tmp/unused"))},
    )


def test_the_receiver_accepts_only_the_sites_sources(tmp_path: Path) -> None:
    site = _site(free_port(), store_ae_titles=["PRIMARY-OUT"])
    receiver = Receiver(site.receiver, tmp_path / "staging", allowed_peers(site)).start()
    try:
        assert _associates(site.receiver.port, "PRIMARY")
        assert _associates(site.receiver.port, "PRIMARY-OUT")  # its declared sending title
        assert not _associates(site.receiver.port, "INTRUDER")
    finally:
        receiver.stop()


def test_the_receiver_refuses_a_sources_title_from_another_address(tmp_path: Path) -> None:
    site = _site(free_port())
    elsewhere = AllowedPeers(frozenset({"PRIMARY"}), frozenset({"192.0.2.7"}))
    receiver = Receiver(site.receiver, tmp_path / "staging", elsewhere).start()
    try:
        assert not _associates(site.receiver.port, "PRIMARY")
        assert "store_hosts" in (elsewhere.refusal("PRIMARY", "127.0.0.1") or "")
    finally:
        receiver.stop()


def test_the_receivers_quick_copy_of_its_contexts_is_a_full_copy() -> None:
    import copy

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts

    from pacsflow.dicom.network import QuicklyCopiedContexts

    ae = AE()
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    quick = copy.deepcopy(QuicklyCopiedContexts(ae.supported_contexts))
    assert [vars(c) for c in quick] == [vars(c) for c in copy.deepcopy(ae.supported_contexts)]
    quick[0].transfer_syntax.append("1.2.840.10008.1.2.4.999")  # negotiation may edit it
    assert "1.2.840.10008.1.2.4.999" not in ae.supported_contexts[0].transfer_syntax


def test_a_stopped_receiver_has_freed_its_port_for_the_next(tmp_path: Path) -> None:
    config = ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=free_port())
    for _ in range(3):  # stop() wakes the accept loop itself; each start binds afresh
        receiver = Receiver(config, tmp_path / "staging").start()
        assert receiver.running and not receiver.shared
        receiver.stop()
        assert not receiver.running
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", config.port))


def test_a_study_arrives_as_the_source_stores_it_with_its_private_vrs(tmp_path: Path) -> None:
    """A source that can send explicit or implicit VR sends what it stores.

    The acceptor's order picks the syntax; pynetdicom's list starts with implicit VR,
    which would make the source re-encode and leave private elements as UN for the
    de-identification that reads the staged files.
    """
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian

    from pacsflow.dicom import routes
    from pacsflow.dicom.retrieve import move_study
    from pacsflow.sandbox.synthetic import make_study

    (instance,) = make_study(
        mrn="MRN1",
        accession="ACC1",
        study_date=datetime.date(2024, 1, 2),
        patient_name="DOE^JANE",
        birth_date=datetime.date(1960, 5, 6),
        sex="F",
        n_series=1,
        n_instances=1,
    )
    assert instance.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    block = instance.private_block(0x0011, "PACSFLOW TEST", create=True)
    block.add_new(0x01, "LO", "a private note")
    study_uid = str(instance.StudyInstanceUID)

    receiver_config = ReceiverConfig(ae_title="PACSFLOW", host="127.0.0.1", port=free_port())
    pacs = SandboxPacs(
        "PRIMARY",
        free_port(),
        tmp_path / "pacs",
        destinations={"PACSFLOW": ("127.0.0.1", receiver_config.port)},
    )
    pacs.add_datasets([instance])
    staging, folder = tmp_path / "staging", tmp_path / "staging" / "study"
    receiver = Receiver(receiver_config, staging).start()
    pacs.start()
    try:
        source = SourceConfig(ae_title="PRIMARY", host="127.0.0.1", port=pacs.address[1])
        with routes.expect_study(staging, study_uid, folder):
            outcome = move_study(source, "PACSFLOW", "PACSFLOW", study_uid)
    finally:
        pacs.stop()
        receiver.stop()

    assert outcome.completed == 1, outcome
    (staged,) = folder.glob("*.dcm")
    received = dcmread(staged)
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    note = received.private_block(0x0011, "PACSFLOW TEST")[0x01]
    assert (note.VR, note.value) == ("LO", "a private note")
