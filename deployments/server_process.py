"""The local Prefect server's process: Prefect's own server, with busy answers retried inside it.

Run as ``python -m deployments.server_process --host 127.0.0.1 --port N``: the same as
``prefect server start --host ... --port ...``, plus :class:`RetryWhileBusy` around the app.

Why: on SQLite, Prefect's server answers a write that lost a race for the database lock
with 503 ("database is locked"), and Prefect's client then waits 2 s, then 4, 8... A lane
asking for a free slot of its source's tag limit lost that race about every second time
on an idle server, so slots sat free for 2-4 s each (measured: four lanes took 0.1, 1.9,
3.9 and 5.3 s to start against a limit of 4). Here such a request is replayed within the
server a few times, after tens of milliseconds, before the client ever sees the 503. The
client would send the very same request again anyway: a 503 is Prefect's answer for an
error its client may retry (the transaction rolled back), so replaying it earlier
changes nothing but the wait. PostgreSQL-backed servers (the production path) rarely
answer 503; they run Prefect's server as it is.

It also tells the UI where its API is. ``prefect server start --port N`` serves the UI a
page that calls ``PREFECT_SERVER_UI_API_URL``, whose default is built from
``PREFECT_SERVER_API_PORT`` (4200), not from ``--port``: a local server on a free port
showed a UI that talked to whatever answered on 4200, another checkout's server included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

#: Pauses before each replay of a request answered 503: about 3 s in all, so a database
#: locked for longer still reaches the client, whose own retries take over.
REPLAY_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5)


class RetryWhileBusy:
    """ASGI middleware: replay an HTTP request the app answered 503, after a short pause.

    The request body is read once and given again to every attempt; a 503 answer is
    dropped unless it is the last attempt's. Websockets and lifespan pass straight through.
    """

    def __init__(self, app: ASGIApp, delays: Sequence[float] = REPLAY_DELAYS) -> None:
        self.app = app
        self.delays = tuple(delays)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away before it finished sending
            return
        for delay in (*self.delays, None):
            busy = await self._attempt(scope, body, receive, send, last=delay is None)
            if not busy:
                return
            await asyncio.sleep(delay)

    async def _attempt(
        self, scope: MutableMapping[str, Any], body: bytes, receive: Receive, send: Send, last: bool
    ) -> bool:
        """Run the app once; True if it answered 503 and the answer was held back."""
        given = False
        held_back = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only a disconnect can come

        async def send_unless_busy(message: Message) -> None:
            nonlocal held_back
            if message["type"] == "http.response.start" and message["status"] == 503 and not last:
                held_back = True
            if not held_back:
                await send(message)

        try:
            await self.app(dict(scope), replay, send_unless_busy)
        except Exception:
            # Starlette answers an unhandled error (here the 503), then raises it again for
            # the server to log. Held back, it is replayed, not logged: re-raise only what
            # reached the client.
            if not held_back:
                raise
        return held_back


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _wrap_prefect_app() -> None:
    """Make Prefect's ``create_app`` return its app wrapped in :class:`RetryWhileBusy`."""
    import prefect.server.api.server as server

    create_app = server.create_app

    def create_app_retrying_while_busy(*args: Any, **kwargs: Any):
        app = create_app(*args, **kwargs)
        if not getattr(app.state, "pacsflow_retry_while_busy", False):
            app.add_middleware(RetryWhileBusy)
            app.state.pacsflow_retry_while_busy = True
        return app

    server.create_app = create_app_retrying_while_busy


def _point_ui_at_this_server(argv: list[str]) -> None:
    """Give the UI this server's API URL, unless the user chose one (before Prefect loads
    its settings)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="4200")
    known, _ = parser.parse_known_args(argv)
    if not (os.environ.get("PREFECT_SERVER_UI_API_URL") or os.environ.get("PREFECT_UI_API_URL")):
        os.environ["PREFECT_SERVER_UI_API_URL"] = f"http://{known.host}:{known.port}/api"


def main(argv: list[str]) -> int:
    """``prefect server start`` with ``argv``, its app wrapped (see the module's docstring)."""
    _point_ui_at_this_server(argv)
    _wrap_prefect_app()
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", *argv]  # Prefect's CLI reads sys.argv
    app()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
