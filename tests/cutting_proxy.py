"""A TCP proxy that cuts its first connection off after so many bytes, like a network cut.

Used to interrupt a DICOM or DICOMweb export half-way through a study. Plain threads on
127.0.0.1; :meth:`CuttingProxy.stop` closes everything it opened.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.servers import LOOPBACK


class CuttingProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; drops the connection that carries the
    ``cut_after``-th byte sent towards the target (only once)."""

    def __init__(self, target: tuple[str, int], cut_after: int) -> None:
        self.target = target
        self.cut_after = cut_after
        self.forwarded = 0
        self.cut = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            pair = (client, upstream)
            threading.Thread(target=self._pump, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: tuple | None) -> None:
        try:
            while data := src.recv(65536):
                if counted is not None:
                    with self._lock:
                        self.forwarded += len(data)
                        cut_now = not self.cut and self.forwarded >= self.cut_after
                        self.cut = self.cut or cut_now
                    if cut_now:
                        for sock in counted:
                            _close(sock)
                        return
                dst.sendall(data)
        except OSError:
            pass
        _close(dst)

    def stop(self) -> None:
        _close(self._listener)
        with self._lock:
            for sock in self._sockets:
                _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
