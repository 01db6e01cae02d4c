"""A throw-away PKI for DICOM TLS tests: a CA, certificates it signs for 127.0.0.1, and an
unrelated CA (what a source must not be trusted by)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


def make_pki(folder: Path, leaves: tuple[str, ...] = ("server",)) -> dict[str, Path]:
    """PEM files in ``folder``: ``ca``, ``other-ca`` and, for each name in ``leaves``, a
    certificate for 127.0.0.1 signed by ``ca`` (``NAME``) and its key (``NAME-key``)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for label in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(label, _name(label), key, key, ca=True)
        files[label], files[f"{label}-key"] = _write(folder / f"{label}.pem", key, cert)
        if label == "ca":
            ca_key, ca_name = key, cert.subject
    for leaf in leaves:
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(leaf, ca_name, ca_key, leaf_key, ca=False)
        files[leaf], files[f"{leaf}-key"] = _write(folder / f"{leaf}.pem", leaf_key, cert)
    return files
