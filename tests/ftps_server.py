"""An FTPS test server (pyftpdlib, explicit TLS) in its own process, and its certificate.

Plain helpers with no pytest import, like :mod:`tests.servers`, so the benchmark can use
them. :func:`make_certificate` writes a self-signed CA and a server certificate for
127.0.0.1 with ``cryptography``; :func:`start_ftps_server` runs ``python -m
tests.ftps_server`` on a free 127.0.0.1 port with TLS required on control and data
connections, and :meth:`FtpsServer.stop` ends it by pid.

``cut_after_bytes`` makes the server drop the first upload's connections once it has
received that many bytes of it, as a network cut would; later uploads go through.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.servers import LOOPBACK, free_port, log_tail

if TYPE_CHECKING:
    from pacsflow.config import FtpsDestinationConfig

USER = "research"
PASSWORD = "s3cret-ftps"


@dataclass(frozen=True)
class Certificate:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certificate(folder: Path, host: str = LOOPBACK) -> Certificate:
    """A throwaway CA and a server certificate it signs, for ``host`` (an IP address)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacsflow test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificate(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class FtpsServer:
    """A running pyftpdlib FTPS server started by :func:`start_ftps_server`."""

    port: int
    root: Path
    certificate: Certificate
    workdir: Path
    pid: int
    host: str = LOOPBACK
    _process: subprocess.Popen | None = field(default=None, repr=False)

    def destination(self, **settings: object) -> FtpsDestinationConfig:
        """The FTPS destination settings that log in to this server (``settings`` added)."""
        from pacsflow.config import FtpsDestinationConfig  # not needed by the server itself

        return FtpsDestinationConfig(
            type="ftps",
            host=self.host,
            port=self.port,
            username=USER,
            password=PASSWORD,
            ca_file=self.certificate.ca_file,
            **settings,
        )

    @property
    def log_path(self) -> Path:
        return self.workdir / "ftps.log"

    @property
    def cut_marker(self) -> Path:
        """Exists once the server has cut an upload off (with ``cut_after_bytes``)."""
        return self.workdir / "cut-done"

    def delete_all_files(self) -> None:
        """Empty the FTP root (the benchmark uploads the same study again)."""
        for path in self.root.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def files(self) -> list[str]:
        """Every file under the FTP root, as paths relative to it, sorted."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def stop(self, timeout: float = 10) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if self._process is not None:
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=timeout)


def start_ftps_server(
    workdir: Path, *, cut_after_bytes: int | None = None, timeout: float = 20
) -> FtpsServer:
    """Start the server in a child process; returns once its port accepts connections."""
    workdir = Path(workdir).resolve()
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    certificate = make_certificate(workdir / "tls")
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.ftps_server",
        "--port",
        str(port),
        "--root",
        str(root),
        "--cert",
        str(certificate.cert_file),
        "--key",
        str(certificate.key_file),
        "--workdir",
        str(workdir),
    ]
    if cut_after_bytes is not None:
        argv += ["--cut-after-bytes", str(cut_after_bytes)]
    log_path = workdir / "ftps.log"
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    server = FtpsServer(port, root, certificate, workdir, process.pid, _process=process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the FTPS server exited; log tail:\n{log_tail(log_path)}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"the FTPS server did not listen within {timeout} s:\n{log_tail(log_path)}")


def _serve(args: argparse.Namespace) -> None:  # pragma: no cover - runs in the child
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler
    from pyftpdlib.servers import FTPServer

    marker = Path(args.workdir) / "cut-done"

    class CuttingDTPHandler(TLS_DTPHandler):
        """Drops the first upload's connections after ``--cut-after-bytes`` bytes."""

        # DTPHandler binds handle_read_event to its own handle_read, so hook the event.
        def handle_read_event(self) -> None:
            super().handle_read_event()
            budget = args.cut_after_bytes
            if budget is None or marker.exists() or self.receive is False:
                return
            if self.tot_bytes_received >= budget:
                marker.touch()
                self.file_obj.flush()
                control = self.cmd_channel
                self.close()
                control.close()

    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, args.root, perm="elradfmwMT")
    handler = TLS_FTPHandler
    handler.certfile = args.cert
    handler.keyfile = args.key
    handler.tls_control_required = True
    handler.tls_data_required = True
    handler.authorizer = authorizer
    handler.dtp_handler = CuttingDTPHandler
    handler.passive_ports = None
    server = FTPServer((LOOPBACK, args.port), handler)
    # serve_forever(handle_exit=True) closes everything on KeyboardInterrupt.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.serve_forever(handle_exit=True)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--cut-after-bytes", type=int, default=None)
    _serve(parser.parse_args())
