"""DICOM over TLS to a source: verified against its CA, refused when it cannot be verified."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pacsflow.config import SourceConfig
from pacsflow.dicom.query import StudyQuery, find_studies
from pacsflow.errors import SourceUnavailable
from pacsflow.sandbox import SandboxPacs, make_patients, make_study


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, key, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path = path.with_suffix(".key")
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key_path


def _certificate(subject: str, issuer_name, issuer_key, key, *, ca: bool):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    files = {}
    for label in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(label, _name(label), key, key, ca=True)
        files[label], files[f"{label}-key"] = _write(tmp_path / f"{label}.pem", key, cert)
        if label == "ca":
            ca_key, ca_name = key, cert.subject
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("sandbox", ca_name, ca_key, server_key, ca=False)
    files["server"], files["server-key"] = _write(tmp_path / "server.pem", server_key, server)
    return files


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: dict[str, Path]):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki["server"]), str(pki["server-key"]))
    patient = make_patients(1, seed=3)[0]
    study = make_study(
        mrn=patient.mrn,
        accession="TLS0001",
        study_date=dt.date(2024, 1, 2),
        patient_name=patient.name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        n_series=1,
        n_instances=1,
    )
    pacs = SandboxPacs("SECURE", 0, tmp_path / "pacs", timeout=5, ssl_context=context)
    pacs.add_datasets(study)
    with pacs:
        yield pacs, StudyQuery(None, patient.mrn, "TLS0001")


def _source(pacs: SandboxPacs, **tls) -> SourceConfig:
    host, port = pacs.address
    return SourceConfig(ae_title="SECURE", host=host, port=port, timeout=5, tls=tls or None)


def test_a_tls_source_is_queried_when_its_certificate_checks_out(tls_pacs, pki) -> None:
    pacs, query = tls_pacs
    matches = find_studies(_source(pacs, ca_file=pki["ca"]), "PACSFLOW", query)
    assert len(matches) == 1


@pytest.mark.parametrize("how", ["plain TCP", "another CA"])
def test_a_tls_source_that_cannot_be_verified_is_not_queried(tls_pacs, pki, how) -> None:
    pacs, query = tls_pacs
    source = _source(pacs) if how == "plain TCP" else _source(pacs, ca_file=pki["other-ca"])
    with pytest.raises(SourceUnavailable):
        find_studies(source, "PACSFLOW", query)
