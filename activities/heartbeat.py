"""Heartbeats while a send is under way, and the stretch of a send no cancellation may cut.

The first beat comes a third of the heartbeat timeout after the start (the timeout counts from
the start too): a send that takes less, nearly every one, costs no heartbeat round trip.

A worker that dies mid-send (SIGKILL, out of memory, a lost machine) reports nothing, and Temporal
only notices when a timeout of the activity expires. With a heartbeat timeout on the send
activities that takes seconds instead of the start-to-close timeout's minutes; these heartbeats
keep a live but slow send (a sluggish SMTP server, a slow answer from Twilio, a database busy
with other writers) from tripping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator

from temporalio import activity


def _interval() -> float | None:
    """A third of the activity's heartbeat timeout; None without one (or outside an activity)."""
    timeout = activity.info().heartbeat_timeout if activity.in_activity() else None
    return timeout.total_seconds() / 3 if timeout else None


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """For async activities: heartbeat every third of the heartbeat timeout until the block
    ends."""
    interval = _interval()
    if interval is None:
        yield
        return

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


@contextlib.contextmanager
def heartbeating_in_background() -> Iterator[None]:
    """For synchronous activities: heartbeat from a thread of its own until the block ends.

    The activity's own thread may be blocked for seconds in a database write (SQLite serialises
    writers) or starved of the GIL; a beat taken on that thread would stop then, the heartbeat
    timeout would fire on a live send, and Temporal would start a second attempt beside it.
    """
    interval = _interval()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            activity.heartbeat()

    # The thread runs in this activity's context: activity.heartbeat() finds the activity there.
    beating = threading.Thread(
        target=contextvars.copy_context().run, args=(beat,), name="heartbeat", daemon=True
    )
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()


@contextlib.contextmanager
def cancellation_deferred() -> Iterator[None]:
    """A stretch of a synchronous activity that a cancellation must not cut: one that arrives
    meanwhile is raised when the block ends. Outside an activity, nothing to defer."""
    if not activity.in_activity():
        yield
        return
    with activity.shield_thread_cancel_exception():
        yield
