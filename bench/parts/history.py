"""History cost (issue 7): events per step kind in a participant's history.

One participant (a demo contact with a mobile number and an account manager) travels a flow with
every step kind the engine runs, on the dev server. At each step entry the participant upserts the
FlowStep search attribute (the first step's comes with the start), so the events from one FlowStep
upsert to the next are that step's cost. The baseline is the least
Temporal needs for one activity: ``bench.baseline`` with two activities minus the same with one
(whole one-activity workflow: reported too).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import select
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from bench.baseline import BaselinePlan, BaselineWorkflow, baseline_worker
from bench.harness import (
    EMAIL_SETTINGS,
    WORKER_PY_ACTIVITY_SLOTS,
    Options,
    PartResult,
    Server,
    bounded,
    deploy,
    dev_server,
    engine_activities,
    participant_worker,
    progress,
    smtp_inbox,
    temp_database,
    twilio_api,
)
from control.enrollment import enroll
from models import search_attributes as sa
from models.crm import Contact
from models.database import session
from models.demo import DEMO_SELECTION_ID, VIP_SELECTION_ID, seed_demo
from models.participant import participant_workflow_id

NAME = "history"
TITLE = "History cost: events per step kind (issue 7)"
TIME_ZONE = "Europe/Stockholm"
# The wait step waits until this long after the flow is deployed: a real timer on the dev server,
# short enough for the part to stay quick (the steps before it take well under a second).
WAIT = timedelta(seconds=4)

ENROLLMENT = "(enrollment: start, first record)"
CLOSE = "(leaving: status, last record, close)"


def every_step_flow(flow_id: str, wait_until: datetime) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": "Bench: every step kind",
        "time_zone": TIME_ZONE,
        "email": EMAIL_SETTINGS,
        "sms_sender": "+46700000000",
        "start": "send_email",
        "steps": [
            {
                "id": "send_email",
                "type": "send_email",
                "subject": "Hello [[customer.firstname]]",
                "text": "Hi [[customer.firstname]]",
                "next": "send_sms",
            },
            {
                "id": "send_sms",
                "type": "send_sms",
                "text": "Hej [[customer.firstname]]!",
                "next": "notify_email",
            },
            {
                "id": "notify_email",
                "type": "notify_email",
                "to": {"our_contact": True},
                "subject": "[[customer.fullname]] is in the bench flow",
                "text": "FYI",
                "next": "notify_sms",
            },
            {
                "id": "notify_sms",
                "type": "notify_sms",
                "to": {"our_contact": True},
                "text": "[[customer.fullname]] is in the bench flow",
                "next": "wait_time",
            },
            {
                "id": "wait_time",
                "type": "wait_time",
                "mode": "until",
                "until": wait_until.replace(tzinfo=None).isoformat(timespec="seconds"),
                "next": "split",
            },
            {
                "id": "split",
                "type": "split",
                "basis": "selection",
                "branches": [
                    {"name": "Demo", "next": "add_to_list", "selection_id": DEMO_SELECTION_ID}
                ],
                "everyone_else": {"next": "add_to_list"},
            },
            {
                "id": "add_to_list",
                "type": "add_to_list",
                "selection_id": VIP_SELECTION_ID,
                "next": "remove_from_list",
            },
            {
                "id": "remove_from_list",
                "type": "remove_from_list",
                "selection_id": VIP_SELECTION_ID,
                "next": "finish",
            },
            {"id": "finish", "type": "finish"},
        ],
    }


def _karin(engine: Engine) -> int:
    with session(engine) as db:
        contact = db.exec(select(Contact).where(Contact.first_name == "Karin")).one()
    assert contact.id is not None
    return contact.id


def _flow_step(event: HistoryEvent) -> str | None:
    if event.event_type != EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        return None
    fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
    payload = fields.indexed_fields.get(sa.FLOW_STEP.name)
    if payload is None:
        return None
    return payload.data.decode().strip('"')


def _started_at(event: HistoryEvent) -> str | None:
    """The FlowStep the participant started with (set by enrollment), if any."""
    fields = event.workflow_execution_started_event_attributes.search_attributes
    payload = fields.indexed_fields.get(sa.FLOW_STEP.name)
    return None if payload is None else payload.data.decode().strip('"')


_ENROLLING = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_MARKER_RECORDED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
}


def _short(event_type: EventType.ValueType) -> str:
    name = EventType.Name(event_type).removeprefix("EVENT_TYPE_")
    return "".join(word.capitalize() for word in name.split("_"))


def step_segments(events: list[HistoryEvent]) -> dict[str, list[HistoryEvent]]:
    """Events from each FlowStep upsert up to the next; before the first: enrollment; after the
    finish step's record: leaving. Keys are step ids (unique in the bench flow)."""
    segments: dict[str, list[HistoryEvent]] = {ENROLLMENT: []}
    current = ENROLLMENT
    # Enrollment sets FlowStep to the first step: that step's events begin with its first
    # command after the start's workflow task (and the patch marker with its upsert).
    first = _started_at(events[0]) if events else None
    for event in events:
        step = _flow_step(event)
        if step is None and first is not None and event.event_type not in _ENROLLING:
            step, first = first, None
        if step is not None:
            current = step
            segments[current] = []
        segments[current].append(event)
    # The finish step's segment ends where leaving begins: the ParticipantStatus upsert.
    finish = segments.get("finish", [])
    for index, event in enumerate(finish):
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES and index:
            segments["finish"], segments[CLOSE] = finish[:index], finish[index:]
            break
    return segments


async def _events(client: Client, workflow_id: str) -> list[HistoryEvent]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return list(history.events)


async def engine_histories(
    server: Server, engine: Engine, rounds: int, directory: Path
) -> list[dict[str, list[HistoryEvent]]]:
    contact = _karin(engine)
    task_queue = "bench-history"
    with smtp_inbox(directory) as inbox, twilio_api() as twilio:
        activities = engine_activities(engine, inbox.settings, twilio)
        async with participant_worker(server.client, engine, task_queue, activities):
            until = datetime.now(ZoneInfo(TIME_ZONE)) + WAIT
            flow_ids = [f"bench-history-{index}" for index in range(rounds)]
            for flow_id in flow_ids:
                deploy(engine, every_step_flow(flow_id, until))

            async def one(flow_id: str) -> dict[str, list[HistoryEvent]]:
                report = await enroll(
                    server.client, engine, flow_id, [contact], task_queue=task_queue
                )
                assert report.enrolled == [contact], report.refused
                workflow_id = participant_workflow_id(flow_id, contact)
                await server.client.get_workflow_handle(workflow_id).result()
                return step_segments(await _events(server.client, workflow_id))

            found: list[dict[str, list[HistoryEvent]]] = await bounded(
                asyncio.gather(*(one(flow_id) for flow_id in flow_ids)), "history participants"
            )
            return found


async def baseline_events(server: Server, activities: int) -> list[HistoryEvent]:
    task_queue = "bench-history-baseline"
    workflow_id = f"bench-history-baseline-{activities}"
    async with baseline_worker(server.client, task_queue, WORKER_PY_ACTIVITY_SLOTS):
        await bounded(
            server.client.execute_workflow(
                BaselineWorkflow.run,
                BaselinePlan(activities=activities),
                id=workflow_id,
                task_queue=task_queue,
            ),
            "baseline workflow",
        )
    return await _events(server.client, workflow_id)


def _size(events: list[HistoryEvent]) -> float:
    return sum(event.ByteSize() for event in events) / 1024


async def run(options: Options) -> PartResult:
    result = PartResult(
        NAME,
        TITLE,
        engine_label="one participant through every step kind (segments between FlowStep upserts)",
        baseline_label=(
            "one more activity in a plain workflow (2-activity history minus 1-activity history)"
        ),
        parameters={"rounds": options.rounds},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        with session(engine) as db:
            seed_demo(db)
        async with dev_server() as server:
            progress(f"history: {options.rounds} participant(s) through every step kind")
            histories = await engine_histories(server, engine, options.rounds, directory)
            progress("history: baseline workflows")
            one, two = await baseline_events(server, 1), await baseline_events(server, 2)
        engine.dispose()

    marginal_events = float(len(two) - len(one))
    marginal_kib = _size(two) - _size(one)
    for segment in histories[0]:
        events = result.row(f"{segment}: events", "events")
        size = result.row(f"{segment}: history size", "KiB")
        for history in histories:
            events.engine.append(float(len(history.get(segment, []))))
            size.engine.append(_size(history.get(segment, [])))
        if not segment.startswith("("):
            events.baseline.append(marginal_events)
            size.baseline.append(marginal_kib)
    total = result.row("whole participant history: events", "events")
    total_size = result.row("whole participant history: size", "KiB")
    for history in histories:
        everything = [e for segment in history.values() for e in segment]
        total.engine.append(float(len(everything)))
        total_size.engine.append(_size(everything))
    whole = result.row("plain workflow with one activity: events", "events")
    whole.baseline.append(float(len(one)))
    result.row("plain workflow with one activity: size", "KiB").baseline.append(_size(one))

    first = histories[0]
    for segment, found in first.items():
        kinds = Counter(_short(e.event_type) for e in found)
        result.notes.append(
            f"{segment}: " + ", ".join(f"{name} x{n}" for name, n in kinds.most_common())
        )
    extra = Counter(_short(e.event_type) for e in two) - Counter(_short(e.event_type) for e in one)
    result.notes.append(
        "baseline, one more activity: " + ", ".join(f"{n} x{c}" for n, c in extra.most_common())
    )
    if not any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in first["wait_time"]):
        result.notes.append("the wait step found its instant already past: no timer was counted")
    if any([len(s) for s in h.values()] != [len(s) for s in first.values()] for h in histories[1:]):
        result.notes.append("event counts differed between rounds: see the per-round figures")
    return result
