"""The emit_event activity: flow steps announce the CRM changes they make.

An emitted event takes the same way in as a click or a form (``control.ingest``): recorded once,
signalled to the contact's participants, matched against every flow's triggers. The worker hands
that ingest to this activity.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine
from temporalio import activity
from temporalio.client import Client

from models.events import FlowEvent, IngestReport


class Ingest(Protocol):
    """Record an event once and deliver it to participants and triggers."""

    async def __call__(
        self, client: Client, engine: Engine, event: FlowEvent, *, task_queue: str
    ) -> IngestReport: ...


class EventActivities:
    def __init__(self, engine: Engine, ingest: Ingest) -> None:
        self._engine = engine
        self._ingest = ingest

    @activity.defn
    async def emit_event(self, event: FlowEvent) -> IngestReport:
        """Participants are started on the task queue this activity runs on: the worker's own."""
        return await self._ingest(
            activity.client(), self._engine, event, task_queue=activity.info().task_queue
        )
