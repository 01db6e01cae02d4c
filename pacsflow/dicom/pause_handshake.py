"""A pause handshake that holds: a request's answers go to the request, not to the reactor.

Every pynetdicom association runs a reactor thread that takes incoming DIMSE messages off
the association's queue. Before it sends a request (C-FIND, C-MOVE, C-GET, C-ECHO,
release), the calling thread pauses that reactor, so that it alone reads the answers:
it clears ``_reactor_checkpoint`` and waits until ``_is_paused`` is true. The reactor
sets ``_is_paused`` just before it waits on the checkpoint, and clears it just after.

That flag can lie. Once a request is answered the checkpoint is set again; the reactor,
woken but not yet scheduled, still reads as paused. A next request sent at once sees the
stale flag, goes ahead, and when the reactor does run it takes one of the new request's
answers off the queue ("Received unexpected C-FIND service message"; pynetdicom issue
#875). The request never sees that answer: a C-FIND silently returns one match fewer
(CI saw dcmqrscp list 4 of 5 instances), a C-MOVE waits out its DIMSE timeout. It needs
only the reactor thread to be scheduled late, which a busy 2-core host does often.

:func:`guard` gives a *requested* association a handshake without that gap: the reactor
holds a lock from the moment it resumes until it pauses again, and, once it holds it,
checks the checkpoint again and backs off if a request cleared it meanwhile. ``_is_paused``
becomes "the reactor does not hold the lock". The stock reactor loop and request methods
are unchanged; only what the flag means is. Accepted associations keep pynetdicom's own
handshake: their requests (none in pacsflow) would come from their reactor's own thread.
"""

from __future__ import annotations

import threading
from typing import Any


def _paused(assoc: Any) -> bool:
    """True once the reactor cannot take a message off the queue until the checkpoint is
    set again: it does not hold its lock (or it is this thread, or it has ended)."""
    if assoc._serving_owner == threading.get_ident() or not assoc.is_alive():
        return True
    if assoc._serving.acquire(blocking=False):
        assoc._serving.release()
        return True
    return False


def _set_paused(assoc: Any, paused: bool) -> None:
    """What the stock reactor loop's ``_is_paused = ...`` does: release or take the lock.

    Only the reactor's own thread (the association, a ``threading.Thread``) pauses or
    resumes it; the same assignment made elsewhere (``__init__``, ``kill``) changes nothing.
    """
    if threading.current_thread() is not assoc:
        return
    if paused:
        if assoc._serving_owner is not None:
            assoc._serving_owner = None
            assoc._serving.release()
        return
    while True:  # resume, unless a request cleared the checkpoint while we woke
        assoc._reactor_checkpoint.wait()
        assoc._serving.acquire()
        if assoc._reactor_checkpoint.is_set():
            assoc._serving_owner = threading.get_ident()
            return
        assoc._serving.release()


_guarded: dict[type, type] = {}


def _guarded_class(base: type) -> type:
    if base not in _guarded:
        _guarded[base] = type(
            f"Guarded{base.__name__}",
            (base,),
            {
                "_is_paused": property(_paused, _set_paused),
                "__doc__": f"{base.__name__} with pacsflow's pause handshake ({__name__}).",
            },
        )
    return _guarded[base]


def guard(assoc: Any) -> None:
    """Give ``assoc`` (a pynetdicom ``Association`` being built) the safe handshake.

    Called while pynetdicom's ``Association.__init__`` builds the association's DUL, before
    it first sets ``_is_paused``.
    """
    assoc._serving = threading.Lock()
    assoc._serving_owner = None
    assoc.__class__ = _guarded_class(type(assoc))


def guarded(assoc: Any) -> bool:
    """True when ``assoc`` has the safe handshake."""
    return type(assoc) in _guarded.values()
