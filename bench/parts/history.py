"""History cost (issue 7): events per step kind in a participant's history.

One participant (a demo contact with a mobile number and an account manager) travels a flow with
every step kind the engine runs, on the dev server. Each step of that flow ends with one workflow
task, so the history cut at its workflow tasks gives each step's cost (``step_segments``; a
participant upserts FlowStep only where it waits, so those upserts no longer mark every step).
The baseline is the least
Temporal needs for one activity: ``bench.baseline`` with two activities minus the same with one
(whole one-activity workflow: reported too).
"""

from __future__ import annotations

import asyncio
import itertools
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
    BASELINE_ACTIVITY_SLOTS,
    EMAIL_SETTINGS,
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
from control.histories import local_activity
from models.crm import Contact
from models.database import session
from models.demo import DEMO_SELECTION_ID, VIP_SELECTION_ID, seed_demo
from models.participant import ParticipantState, participant_workflow_id

NAME = "history"
TITLE = "History cost: events per step kind (issue 7)"
TIME_ZONE = "Europe/Stockholm"
# The wait step waits until this long after the flow is deployed: a real timer on the dev server,
# short enough for the part to stay quick (the steps before it take well under a second).
WAIT = timedelta(seconds=4)

ENROLLMENT = "(enrollment: start, first record)"


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


def _patching(event: HistoryEvent) -> bool:
    """A patch marker, or the TemporalChangeVersion upsert that comes with it."""
    if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
        return event.marker_recorded_event_attributes.marker_name == "core_patch"
    if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        return set(fields.indexed_fields) == {"TemporalChangeVersion"}
    return False


def _short(event_type: EventType.ValueType) -> str:
    name = EventType.Name(event_type).removeprefix("EVENT_TYPE_")
    return "".join(word.capitalize() for word in name.split("_"))


def _done_in_worker(event: HistoryEvent) -> bool:
    """The marker of a step's activity run in the participant's worker (a send, a CRM change or
    read: a local activity other than the participant's own record): the step's whole cost,
    inside the workflow task that ran it."""
    local = local_activity(event)
    return local is not None and local["activity_type"] != "record_participant"


def step_segments(events: list[HistoryEvent], trail: list[str]) -> dict[str, list[HistoryEvent]]:
    """Each step's events, keyed by step id (unique in the bench flow). Every step of the bench
    flow but the finish issues one command (an activity or a timer) and ends with the workflow
    task that follows it, or is one activity run in the participant's worker, whose marker is all
    it leaves; so the history is cut after each WorkflowTaskCompleted and after each such
    marker: the first cut (the start, its task, and for runs that ask patches the patch marker
    and its upsert) is enrollment, the next ones are the steps of the participant's trail in
    order, and what follows the last task is the finish (the participant's status and the
    close)."""
    ends = [
        index + 1
        for index, event in enumerate(events)
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        or _done_in_worker(event)
    ]
    if not ends:
        return {ENROLLMENT: events}
    start = ends[0]
    while start < len(events) and _patching(events[start]):
        start += 1
    segments = {ENROLLMENT: events[:start]}
    cuts = [start, *(end for end in ends[1:] if end > start), len(events)]
    for step, (begin, end) in zip(trail, itertools.pairwise(cuts), strict=False):
        segments[step] = events[begin:end]
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
                handle = server.client.get_workflow_handle(
                    workflow_id, result_type=ParticipantState
                )
                state = await handle.result()
                trail = [visit.step for visit in state.trail]
                return step_segments(await _events(server.client, workflow_id), trail)

            found: list[dict[str, list[HistoryEvent]]] = await bounded(
                asyncio.gather(*(one(flow_id) for flow_id in flow_ids)), "history participants"
            )
            return found


async def baseline_events(server: Server, activities: int) -> list[HistoryEvent]:
    task_queue = "bench-history-baseline"
    workflow_id = f"bench-history-baseline-{activities}"
    async with baseline_worker(server.client, task_queue, BASELINE_ACTIVITY_SLOTS):
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
        engine_label="one participant through every step kind (its history cut at workflow tasks)",
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
