"""The participant's last record made by the step before a finish without hand-offs (its
departure), and FlowStep set at enrollment: what a participant leaves behind in the participants
table and in its history when no local record is made as it leaves, and how a signal that comes
in between is still recorded (time-skipping server, real activities and database)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import select
from temporalio import activity
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.crm import CrmActivities, ListChange
from control.enrollment import enroll
from control.flows import deploy_flow
from models import search_attributes as sa
from models.crm import Contact, SelectionMember
from models.database import session
from models.demo import DEMO_SELECTION_ID, VIP_SELECTION_ID
from models.engine import Participant, ParticipantStatus, StepChange
from models.events import EventKind
from models.flow import Flow
from models.participant import Enrollment, ParticipantState, Resume, participant_workflow_id
from testkit.histories import local_activities
from testkit.waiting import assert_eventually
from tests.test_engagement import event
from tests.test_participant import first_contact, flow_of
from worker import activities_for, build_worker
from workflows.participant import ParticipantWorkflow

ADD_THEN_FINISH: list[dict[str, Any]] = [
    {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
    {"id": "done", "type": "finish"},
]


async def start(
    env: WorkflowEnvironment, task_queue: str, flow: Flow, contact_id: int, *, as_enrolled: bool
) -> WorkflowHandle[Any, ParticipantState]:
    """A participant started as enrollment starts it (``as_enrolled``: FlowStep set to the first
    step) or as a starter that sets no search attributes does."""
    return await env.client.start_workflow(
        ParticipantWorkflow.run,
        Enrollment(flow=flow, flow_version=1, contact_id=contact_id),
        id=f"test-{uuid.uuid4()}",
        task_queue=task_queue,
        search_attributes=sa.at_start(flow, 1, contact_id) if as_enrolled else None,
    )


def local_records(events: list[HistoryEvent]) -> int:
    return sum(
        e.marker_recorded_event_attributes.marker_name == "core_local_activity" for e in events
    )


def flow_step_upserts(events: list[HistoryEvent]) -> list[str]:
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
    ]
    return [json.loads(fields["FlowStep"].data) for fields in upserts if "FlowStep" in fields]


def row(engine: Engine, participant_id: str) -> Participant:
    with session(engine) as db:
        found = db.get(Participant, participant_id)
    assert found is not None
    return found


def outside_selection(engine: Engine, selection_id: int) -> int:
    with session(engine) as db:
        members = select(SelectionMember.contact_id).where(
            SelectionMember.selection_id == selection_id
        )
        contact = db.exec(
            select(Contact).where(
                Contact.id.not_in(members),  # type: ignore[union-attr]
                Contact.retired == False,  # noqa: E712
            )
        ).first()
    assert contact is not None and contact.id is not None
    return contact.id


async def test_the_last_step_records_the_departure_and_flow_step_shows_where_it_waits(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    waiting: list[dict[str, Any]] = [
        {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "wait"},
        {"id": "wait", "type": "wait_time", "amount": 1, "unit": "days", "next": "remove"},
        {
            "id": "remove",
            "type": "remove_from_list",
            "selection_id": VIP_SELECTION_ID,
            "next": "done",
        },
        {"id": "done", "type": "finish"},
    ]
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        enrolled = await start(
            time_skipping_env, task_queue, flow_of(ADD_THEN_FINISH), contact, as_enrolled=True
        )
        finished = await enrolled.result()
        passing = await start(
            time_skipping_env, task_queue, flow_of(waiting), contact, as_enrolled=False
        )
        await passing.result()
    events = [e async for e in enrolled.fetch_history_events()]
    assert finished.status is ParticipantStatus.finished
    assert local_records(events) == 0
    left = row(engine, finished.participant_id)
    assert (left.status, left.current_step, left.finished_at, left.wait_until) == (
        "Finished",
        "done",
        finished.finished_at,
        None,
    )
    # Set at the start, FlowStep changes once: as the participant leaves.
    assert flow_step_upserts(events) == ["done"]
    # Action steps done at once show no FlowStep; the wait does, and so does leaving.
    assert flow_step_upserts([e async for e in passing.fetch_history_events()]) == [
        "wait",
        "done",
    ]


async def test_the_finish_checks_in_the_departure_see_what_the_step_just_changed(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    """The step adds the contact to the flow's exclusion list: its entry's checks pass, the
    finish's (made in the same transaction, after the change) find it, and it drops out."""
    contact = outside_selection(engine, DEMO_SELECTION_ID)
    flow = flow_of(
        [
            {"id": "add", "type": "add_to_list", "selection_id": DEMO_SELECTION_ID, "next": "done"},
            {"id": "done", "type": "finish"},
        ],
        exclusion_selections=[DEMO_SELECTION_ID],
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact, as_enrolled=True)
        state = await handle.result()
    assert (state.status, state.drop_out_reason) == (
        ParticipantStatus.dropped_out,
        "on the exclusion list",
    )
    assert [(v.step, v.outcome) for v in state.trail][-1] == ("done", "on the exclusion list")
    assert local_records([e async for e in handle.fetch_history_events()]) == 0
    left = row(engine, state.participant_id)
    assert (left.status, left.drop_out_reason, left.finished_at) == (
        "Dropped out",
        "on the exclusion list",
        state.finished_at,
    )


class HeldListStep:
    """``add_to_list`` as the worker runs it, held after its work (and its departure) until
    the test lets it report: a signal sent meanwhile reaches the workflow before the result."""

    def __init__(self, engine: Engine) -> None:
        self._crm = CrmActivities(engine)
        self.done = threading.Event()
        self.release = threading.Event()

    @activity.defn(name="add_to_list")
    def add_to_list(self, change: ListChange) -> StepChange:
        result = self._crm.add_to_list(change)
        self.done.set()
        self.release.wait(timeout=30)
        return result


Signalled = Callable[[WorkflowHandle[Any, ParticipantState]], Awaitable[None]]


async def _nothing(handle: WorkflowHandle[Any, ParticipantState]) -> None:
    del handle


async def run_held(
    env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    flow: Flow,
    meanwhile: Signalled,
    afterwards: Signalled = _nothing,
) -> tuple[WorkflowHandle[Any, ParticipantState], ParticipantState]:
    """Run a participant whose add_to_list step is held: ``meanwhile`` while it is, then
    ``afterwards`` once it reported."""
    held = HeldListStep(engine)
    activities = [
        held.add_to_list if getattr(a, "__name__", "") == "add_to_list" else a
        for a in activities_for(engine)
    ]
    async with build_worker(env.client, engine, task_queue=task_queue, activities=activities):
        handle = await start(env, task_queue, flow, first_contact(engine), as_enrolled=True)
        assert await asyncio.to_thread(held.done.wait, 30)
        await meanwhile(handle)
        held.release.set()
        await afterwards(handle)
        return handle, await handle.result()


async def test_success_met_while_the_last_step_reports_is_recorded_as_it_leaves(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    flow = flow_of(ADD_THEN_FINISH, success={"criteria": [{"kind": "sale_created"}]})

    async def sale(handle: WorkflowHandle[Any, ParticipantState]) -> None:
        contact = first_contact(engine)
        await handle.signal(ParticipantWorkflow.event, event(EventKind.sale_created, contact))

    handle, state = await run_held(time_skipping_env, engine, task_queue, flow, sale)
    assert state.status is ParticipantStatus.finished_with_success
    # The departure said "Finished": the participant recorded how it really left.
    assert local_records([e async for e in handle.fetch_history_events()]) == 1
    left = row(engine, state.participant_id)
    assert (left.status, left.finished_at) == ("Finished with success", state.finished_at)


async def test_paused_on_the_way_to_the_finish_it_is_shown_active_until_it_leaves(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    async def pause(handle: WorkflowHandle[Any, ParticipantState]) -> None:
        await handle.signal(ParticipantWorkflow.pause)

    async def frozen_then_resumed(handle: WorkflowHandle[Any, ParticipantState]) -> None:
        participant = handle.first_execution_run_id
        assert participant is not None

        async def frozen_before_the_finish() -> bool:
            found = row(engine, participant)
            return (found.status, found.current_step) == ("Active", "done")

        await assert_eventually(frozen_before_the_finish)
        await handle.signal(ParticipantWorkflow.resume, Resume())

    handle, state = await run_held(
        time_skipping_env, engine, task_queue, flow_of(ADD_THEN_FINISH), pause, frozen_then_resumed
    )
    assert state.status is ParticipantStatus.finished
    # One record while frozen, one as it leaves.
    assert local_records([e async for e in handle.fetch_history_events()]) == 2
    left = row(engine, state.participant_id)
    assert (left.status, left.finished_at) == ("Finished", state.finished_at)


async def test_enrollment_pins_the_behaviour_so_a_participant_carries_no_patch_marker(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    """Started by enrollment, a participant's behaviour is in its input: no patch marker and no
    TemporalChangeVersion upsert. A list step and a finish: a participant that asks its patches
    has the plain one-activity workflow's 11 events, the patch's two and the upsert as it
    leaves; the pinned one (CRM_IN_WORKER) changes the list in its worker, in the workflow task
    it started with: the start, that task, the list step's marker, the upsert, the completion."""
    contact = first_contact(engine)
    document = {"id": "pinned", "name": "Pinned", "start": "add", "steps": ADD_THEN_FINISH}
    flow_id = deploy_flow(engine, document).flow_id
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        report = await enroll(
            time_skipping_env.client, engine, flow_id, [contact], task_queue=task_queue
        )
        assert report.enrolled == [contact]
        handle = time_skipping_env.client.get_workflow_handle_for(
            ParticipantWorkflow.run, participant_workflow_id(flow_id, contact)
        )
        pinned = await handle.result()
        asking = await start(
            time_skipping_env, task_queue, flow_of(ADD_THEN_FINISH), contact, as_enrolled=True
        )
        await asking.result()
    events = [e async for e in handle.fetch_history_events()]
    asked = [e async for e in asking.fetch_history_events()]
    assert pinned.status is ParticipantStatus.finished
    assert [visit.step for visit in pinned.trail] == ["add", "done"]

    def markers(events: list[HistoryEvent]) -> list[str]:
        return [
            e.marker_recorded_event_attributes.marker_name
            for e in events
            if e.HasField("marker_recorded_event_attributes")
        ]

    def changed(events: list[HistoryEvent]) -> list[list[str]]:
        return [
            sorted(
                e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            )
            for e in events
            if e.HasField("upsert_workflow_search_attributes_event_attributes")
        ]

    assert local_activities(events) == ["add_to_list"]
    assert markers(events) == ["core_local_activity"] and markers(asked) == ["core_patch"]
    assert changed(events) == [["FlowStep", "ParticipantStatus"]]
    assert changed(asked) == [["TemporalChangeVersion"], ["FlowStep", "ParticipantStatus"]]
    assert (len(events), len(asked)) == (7, 14)
