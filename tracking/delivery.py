"""How the tracking service's events reach the participants, with Temporal up or not.

Every click, open and form is recorded in the database first (``control.ingest.record_event``);
that is what the visitor waits for. Handing it to the participants (``control.ingest.ingest``,
which finds the record and delivers it) goes on in the background, and a visitor waits for it at
most a moment, and not at all while an earlier delivery is overdue. While Temporal cannot be
reached — not yet connected at start, or a delivery just failed — events are only recorded.

What was recorded and not delivered is picked up again: ``Delivery.redeliver`` runs while the
service does and hands over, oldest first, every click, open and form of the last week still
marked undelivered, as soon as Temporal answers again. Delivery is at least once (participants
ignore an event id they have seen; starting a participant is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError

from control.ingest import ingest, record_event
from models.database import session
from models.engine import CrmEvent
from models.events import EventKind, FlowEvent

log = logging.getLogger("tracking")

# The kinds this service records. Other undelivered rows are someone else's: a flow step's
# record of an addition to a list is never announced, and POST /events callers retry themselves.
TRACKED_KINDS = (EventKind.link_clicked, EventKind.email_opened, EventKind.form_submitted)
REDELIVERY_SECONDS = 5.0  # how often undelivered events are looked for
REDELIVERY_HORIZON = timedelta(days=7)  # older undelivered events are left alone
REDELIVERY_BATCH = 100
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
        """Whether the event reached everyone it concerns; an RPC failure marks Temporal as
        unreachable until a delivery succeeds again."""
        try:
            await ingest(client, self.engine, event, task_queue=self.task_queue)
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
        return True

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
                while await self._redeliver_some(self.client) == REDELIVERY_BATCH:
                    pass
            except Exception:
                log.exception("looking for undelivered events failed; trying again later")

    async def _redeliver_some(self, client: Client) -> int:
        """Delivers one batch; how many of its events were delivered."""
        events = await asyncio.to_thread(_undelivered, self.engine, REDELIVERY_BATCH)
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


def _undelivered(engine: Engine, limit: int) -> list[FlowEvent]:
    since = datetime.now(UTC) - REDELIVERY_HORIZON
    with session(engine) as db:
        rows = db.exec(
            select(CrmEvent)
            .where(
                col(CrmEvent.delivered_at).is_(None),
                col(CrmEvent.kind).in_([kind.value for kind in TRACKED_KINDS]),
                col(CrmEvent.occurred_at) >= since,
            )
            .order_by(col(CrmEvent.occurred_at), col(CrmEvent.id))
            .limit(limit)
        ).all()
    events: list[FlowEvent] = []
    for row in rows:
        try:
            events.append(FlowEvent.model_validate(row.payload))
        except ValidationError:  # not one this service can deliver: never blocks the others
            log.error("event %s: its record is no FlowEvent, not delivered", row.event_id)
    return events
