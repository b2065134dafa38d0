"""How the tracking service's events reach the participants, with Temporal up or not.

Every click, open and form is recorded in the database first (``control.ingest.record_event``);
that is what the visitor waits for. Handing it to the participants (``control.ingest.ingest``,
which finds the record and delivers it) goes on in the background, and a visitor waits for it at
most a moment, and not at all while an earlier delivery is overdue. While Temporal cannot be
reached — not yet connected at start, or a delivery just failed — events are only recorded.

What was recorded and not delivered is picked up again: ``Delivery.redeliver`` runs while the
service does and hands over, oldest first, every click, open and form of the last week still
marked undelivered (``control.ingest.undelivered``), as soon as Temporal answers again; the
worker sweeps the same events (``control.ingest.sweep_forever``). Each delivery claims its event
first, so of the two (and of several services or workers) one delivers it, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.service import RPCError

from control.ingest import SWEEP_BATCH, ingest, record_event, undelivered
from models.events import FlowEvent

log = logging.getLogger("tracking")

REDELIVERY_SECONDS = 5.0  # how often undelivered events are looked for
CONNECT_SECONDS = 1.0  # between attempts to reach Temporal at start


class Delivery:
    """Records events and hands them to the participants when Temporal can be reached."""

    def __init__(
        self,
        engine: Engine,
        client: Client | None,
        *,
        task_queue: str,
        redelivery_seconds: float = REDELIVERY_SECONDS,
    ) -> None:
        self.engine = engine
        self.client = client
        self.task_queue = task_queue
        self.redelivery_seconds = redelivery_seconds
        self.reachable = client is not None  # as far as the last delivery tells
        self._pending: dict[str, asyncio.Task[bool]] = {}
        self._overdue: set[asyncio.Task[bool]] = set()  # deliveries a visitor gave up waiting for
        self._again = asyncio.Event()

    async def take_in(self, event: FlowEvent, *, wait: float) -> bool:
        """Record the event (raises if the database cannot), then deliver it in the background,
        waiting for that at most ``wait`` seconds. False: its id was recorded before, and it is
        delivered, being delivered or left to ``redeliver``."""
        if not await asyncio.to_thread(record_event, self.engine, event):
            return False
        if self.client is None or not self.reachable:
            return True  # redeliver hands it over once Temporal answers
        task = asyncio.create_task(
            self._deliver(self.client, event), name=f"ingest {event.event_id}"
        )
        self._pending[event.event_id] = task
        task.add_done_callback(lambda _: self._pending.pop(event.event_id, None))
        if self._overdue:
            return True  # deliveries already take too long: the next visitor need not wait
        try:
            await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            log.warning("event %s: still being delivered, answering anyway", event.event_id)
            self._overdue.add(task)
            task.add_done_callback(self._overdue.discard)
        return True

    async def _deliver(self, client: Client, event: FlowEvent) -> bool:
        """Whether this delivery handed the event to everyone it concerns (False too when
        another was delivering it); an RPC failure marks Temporal as unreachable until a
        delivery succeeds again."""
        try:
            report = await ingest(client, self.engine, event, task_queue=self.task_queue)
        except RPCError as error:
            if self.reachable:
                log.warning("event %s: recorded, not delivered (%s); later", event.event_id, error)
            self.reachable = False
            return False
        except Exception:
            # This event's own trouble: the others go on; it is tried again with the next pass.
            log.exception("event %s: recorded, not delivered", event.event_id)
            return False
        if not self.reachable:
            self.reachable = True
            self._again.set()
        return report.delivered

    async def connect(self, connect: Callable[[], Awaitable[Client]]) -> None:
        """Keep trying ``connect`` until Temporal answers; events are recorded meanwhile."""
        told = False
        while self.client is None:
            try:
                self.client = await connect()
            except Exception as error:
                if not told:
                    log.warning("Temporal not reachable (%s): recording events meanwhile", error)
                    told = True
                await asyncio.sleep(CONNECT_SECONDS)
        log.info("connected to Temporal")
        self.reachable = True
        self._again.set()

    async def redeliver(self) -> None:
        """Runs until cancelled: hands over undelivered events (see the module's docstring)."""
        while True:
            try:
                async with asyncio.timeout(self.redelivery_seconds):
                    await self._again.wait()
            except TimeoutError:
                pass
            self._again.clear()
            if self.client is None:
                continue
            try:
                while await self._redeliver_some(self.client) == SWEEP_BATCH:
                    pass
            except Exception:
                log.exception("looking for undelivered events failed; trying again later")

    async def _redeliver_some(self, client: Client) -> int:
        """Delivers one batch; how many of its events were delivered."""
        events = await asyncio.to_thread(undelivered, self.engine)
        delivered = 0
        for event in events:
            if event.event_id in self._pending:
                continue
            if await self._deliver(client, event):
                delivered += 1
            if not self.reachable:
                break
        return delivered

    async def finish(self, timeout: float) -> None:
        """Let deliveries that outlived their request finish (the service is stopping)."""
        if self._pending:
            await asyncio.wait(set(self._pending.values()), timeout=timeout)
