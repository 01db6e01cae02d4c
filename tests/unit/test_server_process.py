"""The local Prefect server replays a request its database was too busy for, and only that."""

from __future__ import annotations

import asyncio
import os

from deployments.server_process import RetryWhileBusy


class BusyApp:
    """An ASGI app that answers 503 (then raises, as Starlette does) ``busy`` times, then 200.

    It records the body of every request it was given.
    """

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        self.bodies.append(message["body"])
        if len(self.bodies) <= self.busy:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"Service Unavailable"})
            raise RuntimeError("database is locked")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _request(app, body_parts: list[bytes]) -> tuple[list[dict], Exception | None]:
    """Send one HTTP request with its body in ``body_parts``; what the client received."""
    incoming = [
        {"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1}
        for i, part in enumerate(body_parts)
    ]
    sent: list[dict] = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)  # a client that stays connected

    async def send(message):
        sent.append(message)

    async def run():
        await app({"type": "http", "method": "POST", "path": "/api/x"}, receive, send)

    try:
        asyncio.run(run())
    except Exception as exc:  # what the server would log
        return sent, exc
    return sent, None


def test_a_busy_answer_is_replayed_with_the_same_body_and_the_client_sees_only_the_success():
    app = BusyApp(busy=2)
    sent, error = _request(RetryWhileBusy(app, delays=(0, 0, 0)), [b'{"slots"', b": 1}"])

    assert app.bodies == [b'{"slots": 1}'] * 3
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert sent[-1]["body"] == b"ok"
    assert error is None  # a replayed 503 is not logged as an error


def test_a_database_busy_for_longer_than_the_replays_reaches_the_client_as_503():
    app = BusyApp(busy=10)
    sent, error = _request(RetryWhileBusy(app, delays=(0, 0)), [b"{}"])

    assert len(app.bodies) == 3  # the first try and two replays
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [503]
    assert isinstance(error, RuntimeError)  # the last one is raised, for the server's log


def test_other_answers_pass_through_untouched():
    app = BusyApp(busy=0)
    sent, error = _request(RetryWhileBusy(app), [b"{}"])

    assert len(app.bodies) == 1
    assert sent == [
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"ok"},
    ]
    assert error is None


def test_the_ui_is_pointed_at_the_port_the_server_listens_on(monkeypatch):
    """Prefect's UI otherwise calls the API on 4200, another checkout's server perhaps."""
    from deployments.server_process import _point_ui_at_this_server

    for name in ("PREFECT_SERVER_UI_API_URL", "PREFECT_UI_API_URL"):
        monkeypatch.setenv(name, "")  # unset, and restored after the test
    _point_ui_at_this_server(["--host", "127.0.0.1", "--port", "43117"])
    assert os.environ["PREFECT_SERVER_UI_API_URL"] == "http://127.0.0.1:43117/api"

    monkeypatch.setenv("PREFECT_SERVER_UI_API_URL", "https://prefect.example.org/api")
    _point_ui_at_this_server(["--host", "127.0.0.1", "--port", "43118"])
    assert os.environ["PREFECT_SERVER_UI_API_URL"] == "https://prefect.example.org/api"
