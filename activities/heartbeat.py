"""Heartbeats while a send is under way.

A worker that dies mid-send (SIGKILL, out of memory, a lost machine) reports nothing, and Temporal
only notices when a timeout of the activity expires. With a heartbeat timeout on the send
activities that takes seconds instead of the start-to-close timeout's minutes; these heartbeats
keep a live but slow send (a sluggish SMTP server, a slow answer from Twilio) from tripping it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat every third of the activity's heartbeat timeout until the block ends; nothing
    when the activity has no heartbeat timeout (or outside an activity)."""
    timeout = activity.info().heartbeat_timeout if activity.in_activity() else None
    if not timeout:
        yield
        return
    interval = timeout.total_seconds() / 3

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
