"""Events recorded while the engine could not be reached are delivered by the sweep, each once,
however many sweeps run at the same time or after (dev server, both databases)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from control.enrollment import enroll
from control.ingest import sweep, undelivered
from models.engine import ParticipantStatus
from models.events import EventKind
from models.participant import participant_workflow_id
from tests.test_events import (
    DONE,
    FORM_ID,
    KARIN,
    WAIT,
    crm_events,
    event_of,
    flow_document,
    participant_status,
    running_flow,
    signalled,
    signals,
    worker,
)
from tracking.delivery import Delivery

__all__ = ["worker"]  # the fixture, from the events tests


@pytest.mark.usefixtures("worker")
async def test_events_recorded_during_an_outage_are_delivered_once_by_the_sweeps(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    waiting = running_flow(engine, flow_document("sweep-wait", [WAIT, DONE]))
    await enroll(client, engine, waiting, [KARIN], task_queue=task_queue)
    await participant_status(engine, waiting, KARIN, ParticipantStatus.active.value)
    triggers = [{"kind": "form_submitted", "form_id": FORM_ID}]
    triggered = running_flow(
        engine, flow_document("sweep-trigger", [WAIT, DONE], triggers=triggers)
    )

    # The engine is down: the tracking service records what comes in and delivers nothing.
    offline = Delivery(engine, None, task_queue=task_queue)
    events = [
        event_of(EventKind.form_submitted, KARIN, form_id=FORM_ID),
        event_of(EventKind.link_clicked, KARIN, link="https://www.example.com/a"),
        event_of(EventKind.email_opened, KARIN, flow_id=waiting, step_id="mail"),
    ]
    for event in events:
        assert await offline.take_in(event, wait=1) is True
    assert [e.event_id for e in undelivered(engine)] == [e.event_id for e in events]

    # Back up: two sweepers at once (two workers, or a worker and the tracking service), then
    # a third after them.
    first, second = await asyncio.gather(
        sweep(client, engine, task_queue=task_queue),
        sweep(client, engine, task_queue=task_queue),
    )
    assert first + second == len(events)
    assert await sweep(client, engine, task_queue=task_queue) == 0
    assert undelivered(engine) == []
    assert all(row.delivered_at is not None for row in crm_events(engine))

    expected = [("event", event.event_id) for event in events]
    await signalled(client, participant_workflow_id(waiting, KARIN), expected)
    # The form enrolled the contact in the flow it triggers, with the form as its first signal
    # (the later events reach it too once its row says it is active).
    await participant_status(engine, triggered, KARIN, ParticipantStatus.active.value)
    found = await signals(client, participant_workflow_id(triggered, KARIN))
    assert found[0] == expected[0] and len(set(found)) == len(found)
    assert set(found) <= set(expected)
