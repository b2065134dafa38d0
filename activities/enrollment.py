"""The suggest_contact activity: a hand-off that suggests the contact for another flow.

Enrolling is the client's work (``control.enrollment``); the worker hands it to this activity, so
that a flow step enrolls through the same rules as ``starter.py start``.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine
from temporalio import activity
from temporalio.client import Client

from models.participant import Suggestion


class Suggest(Protocol):
    """Enroll the suggested contact in the other flow; the outcome as text (refusals too)."""

    async def __call__(
        self, client: Client, engine: Engine, suggestion: Suggestion, *, task_queue: str
    ) -> str: ...


class EnrollmentActivities:
    def __init__(self, engine: Engine, suggest: Suggest) -> None:
        self._engine = engine
        self._suggest = suggest

    @activity.defn
    async def suggest_contact(self, suggestion: Suggestion) -> str:
        """Enroll through the other flow's own rules; a refusal is an outcome, not an error.

        Participants are started on the task queue this activity runs on: the worker's own."""
        return await self._suggest(
            activity.client(), self._engine, suggestion, task_queue=activity.info().task_queue
        )
