"""The FTPS destination: one zip per study, uploaded over explicit TLS, resumable.

Layout on the server: ``<directory>/<project>/<pseudo patient>/<pseudo study UID>.zip``.
The zip is uploaded as ``<directory>/<project>/.partial/<pseudo study>.<digest>.zip`` and
renamed into place once its size matches, so a reader never sees half a study. The
zip is deterministic (:mod:`pacsflow.export.archive`) and the digest names the build:
an upload cut off half-way is continued from where it stopped (``REST``) by the next
attempt, which writes the zip again and sends only the bytes past that point (one cut
off after its last byte, before the rename, is renamed without writing it again); a
partial upload of another build is deleted. The zip is written straight into the data
connection, never to local disk first (that copy cost more than the upload). After the
rename the zip's entries are counted on the server, from its last bytes.

``AUTH TLS`` protects the control connection and ``PROT P`` the data connections;
the server's certificate is checked against ``ca_file`` (or the system's CAs).
Refused logins (530) and an untrusted certificate are permanent; no connection, a
timeout and 4xx replies are retriable.
"""

from __future__ import annotations

import contextlib
import ftplib
import logging
import posixpath
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacsflow.config import FtpsDestinationConfig
from pacsflow.errors import PermanentError, RetriableError
from pacsflow.export.archive import (
    TAIL_BYTES,
    SkippingWriter,
    ends_whole,
    entries_from_tail,
    study_digest,
    write_study_zip,
)
from pacsflow.export.factory import register
from pacsflow.export.protocol import ExportReceipt
from pacsflow.export.verification import DeliveryIncomplete

LOGGER = logging.getLogger(__name__)

_BLOCK = 1 << 20


def _ssl_context(config: FtpsDestinationConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    context.check_hostname = config.check_hostname
    return context


class _ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session.

    Many servers (vsftpd's ``require_ssl_reuse``, FileZilla Server, ProFTPD) refuse a
    data connection that does not reuse the session, so an unknown client cannot take
    over a transfer; Python's ftplib does not do it by default.
    """

    def ntransfercmd(self, cmd, rest=None):  # noqa: ANN001, ANN201 - ftplib's signature
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
        return conn, size


@register(FtpsDestinationConfig)
class FtpsDestination:
    """An FTPS server that receives one zip per study."""

    def __init__(self, config: FtpsDestinationConfig) -> None:
        self.config = config

    def describe(self) -> str:
        return f"FTPS server {self.config.host}:{self.config.port}"

    def _remote(self, *parts: str) -> str:
        return posixpath.join(self.config.directory, *parts)

    def export(
        self, study_dir: Path, project: str, pseudo_patient: str, pseudo_study: str
    ) -> ExportReceipt:
        files = sorted(study_dir.glob("*.dcm"))
        final = self._remote(project, pseudo_patient, f"{pseudo_study}.zip")
        location = f"ftps://{self.config.host}:{self.config.port}{final}"
        with self._connection() as ftp:
            if self._size(ftp, final) is not None:
                return ExportReceipt(location, self._entries(ftp, final), already_present=True)
            self._upload(ftp, files, project, pseudo_study, final)
            held = self._entries(ftp, final)
        if held != len(files):
            raise DeliveryIncomplete(
                f"{self.describe()} holds {held} of the {len(files)} instances sent in "
                f"{final}; delete that file on the server and run extract again"
            )
        return ExportReceipt(location, held, already_present=False, sent=len(files))

    def send_file(self, path: Path, project: str) -> str:
        """Upload ``path`` into the project's folder, replacing an older copy."""
        target = self._remote(project, path.name)
        with self._connection() as ftp:
            self._makedirs(ftp, self._remote(project, ".partial"))
            partial = self._remote(project, ".partial", path.name)
            with path.open("rb") as handle:
                ftp.storbinary(f"STOR {partial}", handle, blocksize=_BLOCK)
            if self._size(ftp, target) is not None:
                ftp.delete(target)
            ftp.rename(partial, target)
        return f"ftps://{self.config.host}:{self.config.port}{target}"

    # -- steps --------------------------------------------------------------------------

    def _upload(
        self, ftp: ftplib.FTP_TLS, files: list[Path], project: str, pseudo_study: str, final: str
    ) -> None:
        """Upload (or finish uploading) the zip of ``files`` as a partial, then rename it."""
        partial_dir = self._remote(project, ".partial")
        partial = posixpath.join(partial_dir, f"{pseudo_study}.{study_digest(files)}.zip")
        self._makedirs(ftp, partial_dir)
        for name in self._list(ftp, partial_dir):
            other = posixpath.join(partial_dir, posixpath.basename(name))
            if posixpath.basename(name).startswith(pseudo_study + ".") and other != partial:
                ftp.delete(other)  # an attempt with different content: cannot be resumed
        offset = self._size(ftp, partial) or 0
        if offset and self._whole(ftp, partial, offset, len(files)):
            # Cut off after the upload, before the rename: nothing to write again.
            LOGGER.info("the upload was complete; renaming it into place")
        else:
            if offset:
                LOGGER.info("resuming an upload at byte %d", offset)
            total = _store_zip(ftp, files, partial, offset)
            uploaded = self._size(ftp, partial)
            if uploaded != total:
                if uploaded is not None and uploaded > total:
                    ftp.delete(partial)  # longer than the zip: not ours to continue
                raise RetriableError(
                    f"{self.describe()} holds {uploaded} of the {total} bytes of the study's "
                    "zip after the upload; the next attempt continues it"
                )
        self._makedirs(ftp, posixpath.dirname(final))
        ftp.rename(partial, final)

    @staticmethod
    def _whole(ftp: ftplib.FTP_TLS, partial: str, size: int, entries: int) -> bool:
        """Whether the partial upload (of this build: its name says so) is the whole zip.

        Read from its last bytes, as :meth:`_entries` does: the zip's end records come
        last, so a partial that ends in them, where they say, holding every entry, is
        complete. Writing the zip again to send none of it read the whole study.
        """
        tail = _tail(ftp, partial, size)
        return ends_whole(tail, size) and entries_from_tail(tail) == entries

    def _entries(self, ftp: ftplib.FTP_TLS, remote: str) -> int:
        """Entries of the zip ``remote``, read from its last bytes on the server."""
        size = self._size(ftp, remote) or 0
        count = entries_from_tail(_tail(ftp, remote, size))
        if count is None:
            raise DeliveryIncomplete(
                f"{remote} on {self.describe()} is not a complete zip; delete it on the "
                "server and run extract again"
            )
        return count

    # -- FTP plumbing -------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[ftplib.FTP_TLS]:
        c = self.config
        ftp = _ReusingFTP_TLS(context=_ssl_context(c), timeout=c.timeout)
        try:
            ftp.connect(c.host, c.port)
            ftp.login(c.username, c.password.get_secret_value())  # sends AUTH TLS first
            ftp.prot_p()
            ftp.voidcmd("TYPE I")  # SIZE is refused in ASCII mode
            yield ftp
            with contextlib.suppress(OSError, EOFError, ftplib.Error):
                ftp.quit()  # the work is done; a lost goodbye changes nothing
        except ssl.SSLCertVerificationError as exc:
            raise PermanentError(
                f"the certificate of {self.describe()} is not trusted ({exc.verify_message}); "
                "set the destination's ca_file to the CA that signed it"
            ) from None
        except ftplib.error_perm as exc:
            if str(exc).startswith("530"):
                raise PermanentError(
                    f"{self.describe()} refused the login of {c.username!r} ({exc}); check "
                    "the destination's username and password"
                ) from None
            raise PermanentError(f"{self.describe()} refused a command: {exc}") from None
        except ftplib.error_temp as exc:
            raise RetriableError(f"{self.describe()} is busy: {exc}") from None
        except (OSError, EOFError, ftplib.Error) as exc:
            raise RetriableError(
                f"lost the connection to {self.describe()}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            ftp.close()

    @staticmethod
    def _size(ftp: ftplib.FTP_TLS, remote: str) -> int | None:
        try:
            return ftp.size(remote)
        except ftplib.error_perm:  # 550: no such file
            return None

    @staticmethod
    def _list(ftp: ftplib.FTP_TLS, folder: str) -> list[str]:
        try:
            listing = _download(ftp, f"NLST {folder}")
        except ftplib.error_perm:  # 550: no such folder
            return []
        return [line for line in listing.decode("utf-8", "replace").splitlines() if line]

    @staticmethod
    def _makedirs(ftp: ftplib.FTP_TLS, folder: str) -> None:
        path = ""
        for part in folder.strip("/").split("/"):
            path = f"{path}/{part}"
            # 550: it exists already (or cannot be made, which the STOR then reports).
            with contextlib.suppress(ftplib.error_perm):
                ftp.mkd(path)


def _store_zip(ftp: ftplib.FTP_TLS, files: list[Path], remote: str, offset: int) -> int:
    """Write the zip of ``files`` into ``STOR remote`` from byte ``offset``; its size.

    As ftplib's ``storbinary`` does, with the zip written into the data connection
    instead of read from a file: the bytes before ``offset`` are made and dropped.
    """
    with ftp.transfercmd(f"STOR {remote}", offset or None) as conn:
        writer = SkippingWriter(conn.sendall, skip=offset, block=_BLOCK)
        write_study_zip(files, writer)
        if isinstance(conn, ssl.SSLSocket):
            conn.unwrap()
    ftp.voidresp()
    return writer.written


def _tail(ftp: ftplib.FTP_TLS, remote: str, size: int) -> bytes:
    """The last :data:`TAIL_BYTES` bytes of ``remote`` (``size`` bytes long): its zip end."""
    return _download(ftp, f"RETR {remote}", rest=max(0, size - TAIL_BYTES))[-TAIL_BYTES:]


def _download(ftp: ftplib.FTP_TLS, command: str, rest: int = 0) -> bytes:
    """The bytes a RETR or NLST sends, read to the end of the data connection.

    Unlike ftplib's ``retrbinary``, the TLS data connection is closed without a TLS
    shutdown: a server that closes an empty listing before its TLS handshake settles
    (pyftpdlib under TLS 1.3) makes that shutdown fail, leaving the reply to the
    command unread and the control connection out of step.
    """
    with contextlib.closing(ftp.transfercmd(command, rest or None)) as conn:
        chunks = []
        while chunk := conn.recv(_BLOCK):
            chunks.append(chunk)
    ftp.voidresp()
    return b"".join(chunks)
