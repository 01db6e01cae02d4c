"""The time the flows hold extraction windows against.

One function that every flow and task calls through this module (``clock.now()``), so a
test can move the clock to a few seconds before a window opens instead of waiting for a
real evening. The domain functions (:mod:`pacsflow.windows`) take the time as an argument.
"""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)
