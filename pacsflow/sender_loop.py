"""A sender process's loop: run each call the parent sends, answer, end at EOF.

Started by :mod:`pacsflow.export.sender_processes` as ``python -m pacsflow.sender_loop
REQUESTS_FD ANSWERS_FD``. It lives outside :mod:`pacsflow.export` so that starting it
imports nothing but itself; a call's function imports what it needs when it is unpickled.
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from pacsflow.errors import RetriableError


def serve(requests_fd: int, answers_fd: int) -> None:
    """A sender's loop: run each call it is sent, answer ``(ok, value)``, end at EOF."""
    requests = Connection(requests_fd, writable=False)
    answers = Connection(answers_fd, readable=False)
    while True:
        try:
            function, args = requests.recv()
        except EOFError:
            return
        except Exception as exc:  # noqa: BLE001 - a call this process cannot unpickle
            answer = (False, exc)
        else:
            try:
                answer = (True, function(*args))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
                answer = (False, exc)
        try:
            answers.send(answer)
        except OSError:
            return  # the parent is gone
        except Exception:  # noqa: BLE001 - the answer did not pickle: say what it was
            answers.send((False, RetriableError(f"{type(answer[1]).__name__}: {answer[1]}")))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
