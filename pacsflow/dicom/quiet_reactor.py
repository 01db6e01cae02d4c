"""pynetdicom's reactor threads wait for work instead of waking every millisecond.

Every pynetdicom association runs a DUL thread that sleeps 1 ms between looks at its
socket and queues, and a second such loop for its DIMSE messages (pynetdicom's own source
calls this a TODO). Each wake-up is some microseconds of Python under the GIL, about 8% of
a core per thread: four idle associations with both ends in one process measured 60-77%
of a core. The sandbox PACS accepts an association per lane (two with find-ahead) and our
receiver one per C-MOVE, so on a 2-core machine that polling took a large share of the
CPU the transfers need.

:func:`install` makes both loops of every association (requested and accepted: our
C-MOVE receiver, the sandbox PACS, every SCU and SCP built on
:func:`pacsflow.dicom.network.make_ae`) wait on what actually wakes them, with no added
latency:

- a DUL thread waits in ``select`` on its socket and on a wake-up socket that is written
  when another thread queues a primitive for it to send, an event, or asks it to stop;
- an association's reactor waits on an event the DUL thread sets after every
  state-machine action (a message decoded, a release or an abort received) and when it
  ends, and that a thread sets when it asks the reactor to pause (before every request
  and release pynetdicom sends).

A requested association also gets the pause handshake of
:mod:`pacsflow.dicom.pause_handshake`. pynetdicom's own can let a late reactor take a
request's answer; stock polling made that rare, quiet reactors (which resume later) made
it common under load, so they come together.

Both waits end after :data:`IDLE_WAIT` at most, so pynetdicom's timers (ARTIM, network
idle timeout: seconds) still fire on time. Only those two sleeps are replaced: the stand-in
for ``time`` in pynetdicom's modules recognises the calling loop by its code object and
sleeps as before for every other caller. :func:`install` does nothing unless pynetdicom
looks as it did when this was written (3.x), so another version runs stock: slower on a
busy machine, never wrong.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import sys
import threading
import time
from types import CodeType, ModuleType
from typing import Any

from pacsflow.dicom import pause_handshake

LOGGER = logging.getLogger(__name__)

#: The longest a reactor waits with nothing to do before it looks at its timers.
IDLE_WAIT = 0.05

#: How often an association being killed looks whether its DUL thread has stopped
#: (pynetdicom: every 10 ms).
KILL_POLL = 0.001


class _WakingQueue(queue.Queue):
    """A queue that wakes its DUL thread whenever something is put on it."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Waker:
    """A socket pair: :meth:`wake` makes the DUL thread's ``select`` return at once."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed (thread ended)
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


def _quiet_dul_class(base: type) -> type:
    """A subclass of pynetdicom's ``DULServiceProvider`` whose idle sleep is a wait."""

    class QuietDUL(base):  # type: ignore[misc, valid-type]
        def __init__(self, assoc: Any) -> None:
            super().__init__(assoc)
            self._waker = _Waker()
            self.to_provider_queue = _WakingQueue(self._waker.wake)
            self.event_queue = _WakingQueue(self._waker.wake)
            #: Set after every state-machine action: the acceptor reactor's wake-up.
            self.activity = threading.Event()
            do_action = self.state_machine.do_action

            def acted(event: str) -> None:
                try:
                    do_action(event)
                finally:
                    self.activity.set()

            self.state_machine.do_action = acted

        def run(self) -> None:
            try:
                super().run()
            finally:
                self.activity.set()  # the reactor sees the DUL gone at once
                self._waker.close()

        def kill_dul(self) -> None:
            super().kill_dul()
            self._waker.wake()

        def stop_dul(self) -> bool:
            # pynetdicom sets _kill_thread here and then waits for the thread to end:
            # set it first and wake the thread, or it would sleep out IDLE_WAIT.
            if self.state_machine.current_state == "Sta1":
                self._kill_thread = True
                self._waker.wake()
            return super().stop_dul()

        def idle_wait(self) -> None:
            """Wait until the socket has data, another thread wakes us, or IDLE_WAIT."""
            waiting = [self._waker.reader]
            sock = getattr(self.socket, "socket", None)
            if sock is not None:
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    return  # decrypted bytes already buffered: select would not see them
                waiting.append(sock)
            try:
                select.select(waiting, [], [], IDLE_WAIT)
            except (OSError, ValueError):
                # The socket (or the waker, as the thread ends) closed under us: sleep as
                # stock pynetdicom does until the state machine sees it, never spin.
                time.sleep(self._run_loop_delay)
                return
            self._waker.drain()

    return QuietDUL


class _ReactorTime:
    """Stands in for ``time`` in pynetdicom's ``dul`` and ``association`` modules.

    ``sleep`` from the two reactor loops becomes a wait for work. Any other ``sleep`` in
    the association module is a thread waiting for an association's reactor (to pause
    before a request or a release is sent, or to end): it wakes that reactor first, then
    sleeps as asked. Every other attribute is the real ``time`` module's.
    """

    def __init__(self, dul_loop: CodeType, association_loop: CodeType, kill: CodeType) -> None:
        self._dul_loop, self._association_loop, self._kill = dul_loop, association_loop, kill

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        frame = sys._getframe(1)
        caller = frame.f_code
        if caller is self._dul_loop:
            thread = threading.current_thread()
            if hasattr(thread, "idle_wait"):
                thread.idle_wait()
                return
        elif caller is self._association_loop:
            activity = _activity(threading.current_thread())
            if activity is not None:
                activity.wait(IDLE_WAIT)
                activity.clear()
                return
        else:
            activity = _activity(frame.f_locals.get("self"))
            if activity is not None:
                activity.set()
                if caller is self._kill:
                    # kill() looks every 10 ms whether the DUL has stopped, which it does
                    # within a millisecond of a release: a source would answer every
                    # C-MOVE ~10 ms late, after releasing its sub-association.
                    seconds = min(seconds, KILL_POLL)
        time.sleep(seconds)


def _activity(association: Any) -> threading.Event | None:
    """The wake-up event of ``association``'s reactor, if its DUL is a quiet one."""
    return getattr(getattr(association, "dul", None), "activity", None)


_installed = False


def installed() -> bool:
    """True once :func:`install` has replaced the polling loops in this process."""
    return _installed


def install() -> bool:
    """Replace pynetdicom's polling sleeps in this process (idempotent); True if done."""
    global _installed
    if _installed:
        return True
    from pynetdicom import __version__, association, dul

    if not _looks_as_expected(__version__, association, dul):
        LOGGER.info("pynetdicom %s: its reactor threads keep polling every 1 ms", __version__)
        return False
    stock = dul.DULServiceProvider
    quiet = _quiet_dul_class(stock)

    def dul_for(assoc: Any) -> Any:
        if assoc.is_requestor:  # before quiet threads, the handshake that makes them safe
            pause_handshake.guard(assoc)
        return quiet(assoc)

    clock = _ReactorTime(
        stock.run_reactor.__code__,
        association.Association._run_reactor.__code__,
        association.Association.kill.__code__,
    )
    association.DULServiceProvider = dul_for
    dul.time = clock
    association.time = clock
    _installed = True
    return True


def _looks_as_expected(version: str, association: ModuleType, dul: ModuleType) -> bool:
    """The names this module replaces exist as they do in pynetdicom 3.x."""
    stock = getattr(dul, "DULServiceProvider", None)
    return (
        version.startswith("3.")
        and getattr(dul, "time", None) is time
        and getattr(association, "time", None) is time
        and getattr(association, "DULServiceProvider", None) is stock
        and all(hasattr(stock, name) for name in ("run_reactor", "kill_dul", "stop_dul"))
        and all(
            hasattr(getattr(association, "Association", None), name)
            for name in ("_run_reactor", "kill")
        )
    )
