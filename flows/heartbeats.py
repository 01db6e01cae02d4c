"""Flow-run heartbeats that stop the moment their run ends.

Prefect (3.9) sends a flow run's heartbeats from a thread that sleeps one second at a
time, checking between sleeps whether the run has ended, and the run's engine waits for
that thread before the flow call returns. So every flow run ended 0 to 1 s after its last
step: twice per ``pacsflow extract`` (``extract-project`` and its ``process-studies``
subflow), about a second of every run's tail, measured. :func:`install` puts in its
place a context manager that sends the same heartbeats (same events, same interval,
first one at once, none after the run is final) from the same kind of daemon thread,
but that waits on its stop event instead of sleeping, so it ends as soon as it is told.

Heartbeats are what turns a killed run into ``Crashed`` (``deployments/crashes.py``), so
they are kept, not switched off. If Prefect's private ``_send_heartbeats`` is not the
one this was written against, Prefect's own is left in place.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow_engine

#: The parameters of Prefect's ``flow_engine._send_heartbeats`` this module replaces.
PREFECT_SIGNATURE = ("engine", "join_on_exit")
#: What the replacement uses of Prefect's flow-run engine.
ENGINE_NEEDS = ("heartbeat_seconds", "_build_heartbeat_event_template", "_emit_flow_run_heartbeat")


@contextmanager
def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Prefect's ``_send_heartbeats``, with a thread that stops as soon as it is told."""
    seconds = engine.heartbeat_seconds
    if seconds is None:  # heartbeats are off
        yield
        return
    seconds = max(seconds, flow_engine.MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            state = engine.flow_run.state if engine.flow_run else None
            if state is not None and state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stop.wait(seconds)

    # The calling thread's context, so the heartbeat sees the run's Prefect settings.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(beat,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)


def install() -> bool:
    """Use :func:`send_heartbeats` for flow runs of this process; False if left as it was."""
    current = getattr(flow_engine, "_send_heartbeats", None)
    if current is send_heartbeats:
        return True
    engine = getattr(flow_engine, "FlowRunEngine", None)
    if current is None or engine is None or not hasattr(flow_engine, "MINIMUM_HEARTBEAT_INTERVAL"):
        return False
    if tuple(inspect.signature(current).parameters) != PREFECT_SIGNATURE:
        return False
    if not all(hasattr(engine, name) for name in ENGINE_NEEDS):
        return False
    flow_engine._send_heartbeats = send_heartbeats
    return True
