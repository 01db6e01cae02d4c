"""Processes that run a destination's associations, so that they do not share one GIL.

Why processes: pynetdicom hands every P-DATA PDU from the sending thread to the
association's own thread, and many nodes (Orthanc and dcmtk by default) take PDUs of
16 KB at most, so a 512 KB instance costs some 34 hand-overs of Python work. Two
associations in threads of one process then share one core's worth of interpreter:
158 instances/s to an Orthanc that takes 245/s from dcmtk's ``storescu``; the same two
associations in two processes sent 235/s.

Why not :mod:`multiprocessing`: its spawned children import the parent's main module
again (a flow run's is ``prefect.engine``: a second copy of Prefect in every child, and
a script without a ``__main__`` guard runs again), and forking a process that has
threads can copy a lock another thread held. A sender is a plain
``python -m pacsflow.sender_loop`` that imports only what it runs, and talks
over two pipes with :class:`multiprocessing.connection.Connection` (framed pickles).

A pool per size is started on first use and kept for the life of the process, so the
~0.5 s start of each sender is paid once per worker process, not per study. Calls from
several threads share the pool: a process never has more associations to a node than
its pool has senders. A sender that dies (killed, out of memory) fails the call it was
running as retriable and is replaced at the next call; one found dead while idle is
replaced before it is given a call. When the parent dies, its senders exit within half
a second, even in the middle of a call (:mod:`pacsflow.sender_loop`).
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pacsflow.errors import RetriableError
from pacsflow.export.parallel import run_all

#: The folder that holds the ``pacsflow`` package: a sender imports this same copy.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _command() -> list[str]:
    # -P: the working directory is not put on the sender's sys.path, so a folder there
    # named like a module (another checkout's pacsflow/) cannot stand in for ours.
    return [sys.executable, "-P", "-m", "pacsflow.sender_loop"]


def _site_folders() -> set[str]:
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return {str(Path(folder).resolve()) for folder in folders}


def _environment() -> dict[str, str]:
    """The parent's environment, with this copy of pacsflow first on the sender's path.

    Not when that copy is installed in a site-packages folder: the sender, the same
    interpreter, finds it there anyway, and PYTHONPATH would put the whole folder before
    the standard library, where a backport installed in it (``typing``, ``enum34``)
    would stand in for the real module.
    """
    env = dict(os.environ)
    if _PACKAGE_ROOT not in _site_folders():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


class _SenderDied(RetriableError):
    """The sender process ended while it ran a call."""


class _SenderTimedOut(_SenderDied):
    """The sender did not answer within the call's deadline: it was ended."""


class _Sender:
    """One sender process and the two pipes to it."""

    def __init__(self) -> None:
        fds: list[int] = []
        try:
            to_child, from_parent = os.pipe()
            fds += [to_child, from_parent]
            to_parent, from_child = os.pipe()
            fds += [to_parent, from_child]
            self.process = subprocess.Popen(
                [*_command(), str(to_child), str(from_child), str(os.getpid())],
                pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL,
                env=_environment(),
            )
        except OSError as exc:  # no fork (EAGAIN, ENOMEM), too many open files...
            for fd in fds:
                os.close(fd)
            raise RetriableError(f"could not start a sender process: {exc}") from exc
        os.close(to_child)
        os.close(from_child)
        self._requests = Connection(from_parent, readable=False)
        self._answers = Connection(to_parent, writable=False)

    def call(self, function: Callable[..., Any], args: tuple, deadline: float | None = None) -> Any:
        """``function(*args)`` in the sender; past ``deadline`` seconds it is killed and the
        call fails as retriable (the pool starts another for the next call)."""
        try:
            self._requests.send((function, args))
            # poll() is also true when the sender died: recv() then raises EOFError.
            answered = deadline is None or self._answers.poll(deadline)
            if answered:
                ok, value = self._answers.recv()
        except (EOFError, OSError):
            raise _SenderDied(
                f"sender process {self.process.pid} ended during the transfer (killed, or "
                "out of memory); the next attempt starts a new one"
            ) from None
        except Exception as exc:  # noqa: BLE001 - an answer this process cannot unpickle
            raise RetriableError(
                f"could not read the answer of sender process {self.process.pid}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if not answered:
            self.process.kill()
            self.process.wait()
            raise _SenderTimedOut(
                f"sender process {self.process.pid} did not answer within {deadline:.0f} s "
                "and was ended; the next attempt starts a new one"
            )
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._requests.close()  # the sender reads the end of its pipe and exits
        self._answers.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Pool:
    """Up to ``size`` senders, started when first needed, each running one call at a time."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._idle: list[_Sender] = []
        self._started = 0
        self._changed = threading.Condition()

    def take(self) -> _Sender:
        """An idle sender, or a new one while fewer than ``size`` run; else wait for one."""
        with self._changed:
            while True:
                while self._idle and self._idle[-1].process.poll() is not None:
                    self._idle.pop().close()  # died while idle: never hand it out
                    self._started -= 1
                if self._idle:
                    return self._idle.pop()
                if self._started < self._size:
                    break
                self._changed.wait()
            self._started += 1
        try:
            return _Sender()
        except BaseException:
            self._forget()
            raise

    def give_back(self, sender: _Sender, healthy: bool) -> None:
        if healthy and sender.process.poll() is None:
            with self._changed:
                self._idle.append(sender)
                self._changed.notify()
            return
        sender.close()
        self._forget()

    def _forget(self) -> None:
        """One sender fewer: a caller waiting for one may start a new one."""
        with self._changed:
            self._started -= 1
            self._changed.notify()


_pools: dict[tuple[str, int], _Pool] = {}
_pools_lock = threading.Lock()


def _pool(size: int, purpose: str = "sender") -> _Pool:
    """The pool of ``size`` processes for ``purpose``: a destination's sends never wait
    for a de-identification process, nor the other way round."""
    with _pools_lock:
        return _pools.setdefault((purpose, size), _Pool(size))


def _call(
    pool: _Pool, function: Callable[..., Any], args: tuple, deadline: float | None = None
) -> Any:
    sender = pool.take()
    healthy = True  # the call may fail; the sender is fine as long as it answered
    try:
        return sender.call(function, args, deadline)
    except _SenderDied:
        healthy = False
        raise
    finally:
        pool.give_back(sender, healthy)


def run_in_processes(size: int, function: Callable[..., Any], calls: Iterable[tuple]) -> list[Any]:
    """``function(*args)`` for each ``args`` of ``calls``, run on a pool of ``size`` senders.

    Waits for all of them, then raises the first exception one raised (so that none is
    still sending when the caller checks what the destination holds). ``function`` must
    be importable by name (a module-level function) and its arguments picklable.
    """
    pool = _pool(size)
    return run_all(_call, [(pool, function, args) for args in calls], name="pacsflow-sender")


def call_in_process(
    purpose: str,
    size: int,
    function: Callable[..., Any],
    args: tuple,
    deadline: float | None = None,
) -> Any:
    """``function(*args)`` in one process of the ``purpose`` pool of ``size``; the caller's
    thread waits for it (another thread's call takes another process, up to ``size``).

    With a ``deadline`` (seconds), a process that has not answered by then is killed and
    the call raises :class:`~pacsflow.errors.RetriableError`: a call that hangs must not
    hold its caller, and what waits behind it, for good.
    """
    return _call(_pool(size, purpose), function, args, deadline)
