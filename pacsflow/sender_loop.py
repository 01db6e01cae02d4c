"""A sender process's loop: run each call the parent sends, answer, end at EOF.

Started by :mod:`pacsflow.export.sender_processes` as ``python -P -m pacsflow.sender_loop
REQUESTS_FD ANSWERS_FD PARENT_PID``. It lives outside :mod:`pacsflow.export` so that
starting it imports nothing but itself; a call's function imports what it needs when it
is unpickled.

A sender must not outlive its parent: between calls it reads the end of its pipe, and a
watch thread ends it within :data:`WATCH_INTERVAL` of the parent's death mid-call (a C-STORE
of a large study would otherwise go on for minutes, holding the parent's stdout open).
Answers carry exceptions that unpickle in the parent; any other becomes a pacsflow error
naming its type and message.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from multiprocessing.connection import Connection

from pacsflow.errors import PermanentError, RetriableError

#: How often the watch thread looks whether the parent is still there, in seconds.
WATCH_INTERVAL = 0.5


def watch_parent(parent: int) -> None:
    """End this process as soon as ``parent`` is no longer its parent (it died)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL)
        os._exit(1)

    threading.Thread(target=watch, name="pacsflow-parent-watch", daemon=True).start()


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a pacsflow error of the same kind saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to round-trip
        kind = RetriableError if isinstance(exc, RetriableError) else PermanentError
        return kind(f"{type(exc).__name__}: {exc}")


def serve(requests_fd: int, answers_fd: int) -> None:
    """Run each call sent on ``requests_fd``, answer ``(ok, value)``, end at EOF."""
    requests = Connection(requests_fd, writable=False)
    answers = Connection(answers_fd, readable=False)
    while True:
        ending = False
        try:
            function, args = requests.recv()
        except EOFError:
            return
        except Exception as exc:  # noqa: BLE001 - a call this process cannot unpickle
            answer = (False, portable(exc))
        else:
            try:
                answer = (True, function(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                answer = (False, portable(exc))
                ending = not isinstance(exc, Exception)  # SystemExit and the like: answer, end
        try:
            answers.send(answer)
        except OSError:
            return  # the parent is gone
        except Exception as exc:  # noqa: BLE001 - a result that does not pickle
            answers.send((False, PermanentError(f"unpicklable result: {exc}")))
        if ending:
            return


if __name__ == "__main__":
    watch_parent(int(sys.argv[3]))
    serve(int(sys.argv[1]), int(sys.argv[2]))
