"""The participant workflow on the time-skipping server: waits, splits, lists, exits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from models.crm import Contact, SelectionMember
from models.database import session
from models.demo import DEMO_SELECTION_ID, VIP_SELECTION_ID
from models.engine import Participant, ParticipantStatus
from models.flow import Flow
from models.participant import Enrollment, ParticipantState
from models.settings import Settings
from testkit.waiting import assert_eventually
from worker import build_worker
from workflows.participant import ParticipantWorkflow

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def flow_of(steps: list[dict[str, Any]], **settings: Any) -> Flow:
    return Flow.model_validate(
        {
            "id": "test-flow",
            "name": "Test flow",
            "start": steps[0]["id"],
            "steps": steps,
            **settings,
        }
    )


async def next_weekday(
    env: WorkflowEnvironment, weekday: int, hour: int, minute: int = 0
) -> datetime:
    """A local (naive) Stockholm date-time on the given weekday, at least a week after the test
    server's clock (which earlier tests have moved on)."""
    day = (await env.get_current_time()).astimezone(STOCKHOLM).date() + timedelta(days=7)
    while day.weekday() != weekday:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, minute)


def first_contact(engine: Engine) -> int:
    with session(engine) as db:
        contact = db.exec(select(Contact).order_by(Contact.id)).first()  # type: ignore[arg-type]
        assert contact is not None and contact.id is not None
        return contact.id


async def start(
    env: WorkflowEnvironment, task_queue: str, flow: Flow, contact_id: int, **kwargs: Any
) -> WorkflowHandle[Any, ParticipantState]:
    return await env.client.start_workflow(
        ParticipantWorkflow.run,
        Enrollment(flow=flow, flow_version=1, contact_id=contact_id, **kwargs),
        id=f"test-{uuid.uuid4()}",
        task_queue=task_queue,
    )


def entered(state: ParticipantState, step_id: str) -> datetime:
    """When the participant entered a step, as local Stockholm wall-clock time to the second.

    Timers fire on time; the workflow task that follows takes a few milliseconds more.
    """
    instant = next(v.entered_at for v in state.trail if v.step == step_id)
    return instant.astimezone(STOCKHOLM).replace(tzinfo=None, microsecond=0)


async def test_three_working_days_from_friday_wake_on_wednesday(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    friday = await next_weekday(time_skipping_env, 4, 10, 15)
    flow = flow_of(
        [
            {
                "id": "wait",
                "type": "wait_time",
                "amount": 3,
                "unit": "working_days",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        time_zone="Europe/Stockholm",
        scheduled_start=friday.isoformat(),
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, first_contact(engine))
        state = await handle.result()
    assert entered(state, "wait") == friday
    woke = entered(state, "done")
    assert woke.strftime("%A %H:%M") == "Wednesday 10:15"
    assert (woke.date() - friday.date()).days == 5
    assert state.status is ParticipantStatus.finished


async def test_wait_until_a_local_date_time(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    until = await next_weekday(time_skipping_env, 1, 9, 30)
    flow = flow_of(
        [
            {
                "id": "wait",
                "type": "wait_time",
                "mode": "until",
                "until": until.isoformat(),
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        time_zone="Europe/Stockholm",
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, first_contact(engine))
        state = await handle.result()
    assert entered(state, "done") == until


async def test_thirty_day_flow_finishes_in_seconds_and_keeps_the_table_current(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    flow = flow_of(
        [
            {"id": "w1", "type": "wait_time", "amount": 2, "unit": "weeks", "next": "w2"},
            {"id": "w2", "type": "wait_time", "amount": 16, "unit": "days", "next": "done"},
            {"id": "done", "type": "finish"},
        ]
    )
    contact_id = first_contact(engine)
    began = datetime.now(UTC)
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact_id)
        state = await handle.result()
    assert datetime.now(UTC) - began < timedelta(seconds=30)
    assert state.finished_at is not None
    assert state.finished_at - state.enrolled_at >= timedelta(days=30) - timedelta(hours=1)
    with session(engine) as db:
        row = db.get(Participant, state.participant_id)
    assert row is not None
    assert (row.status, row.current_step, row.contact_id) == ("Finished", "done", contact_id)
    assert row.finished_at == state.finished_at


async def test_the_worker_runs_participants_unsandboxed_unless_told(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    settings_env: Callable[..., Settings],
) -> None:
    """The tests run workflows in the sandbox; the worker's default runs them without it, and a
    participant goes through a CRM step, a wait and a finish the same way."""
    assert Settings.model_fields["workflow_sandbox"].default is False
    settings_env(WORKFLOW_SANDBOX="false")
    flow = flow_of(
        [
            {"id": "tag", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "w"},
            {"id": "w", "type": "wait_time", "amount": 3, "unit": "days", "next": "done"},
            {"id": "done", "type": "finish"},
        ]
    )
    worker = build_worker(time_skipping_env.client, engine, task_queue=task_queue)
    assert isinstance(worker.participants.config()["workflow_runner"], UnsandboxedWorkflowRunner)
    async with worker:
        handle = await start(time_skipping_env, task_queue, flow, first_contact(engine))
        state = await handle.result()
    assert state.status is ParticipantStatus.finished
    assert [v.step for v in state.trail] == ["tag", "w", "done"]
    settings_env()
    sandboxed = build_worker(time_skipping_env.client, engine, task_queue=task_queue)
    assert isinstance(sandboxed.participants.config()["workflow_runner"], SandboxedWorkflowRunner)


async def test_split_on_data_and_list_steps(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact_id = first_contact(engine)
    with session(engine) as db:
        contact = db.get(Contact, contact_id)
        assert contact is not None
        first_name = contact.first_name
    flow = flow_of(
        [
            {
                "id": "split",
                "type": "split",
                "branches": [
                    {
                        "name": "Nobody",
                        "next": "done",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "contact.first_name",
                                    "operator": "equals",
                                    "value": "Zed",
                                }
                            ]
                        },
                    },
                    {
                        "name": "This one",
                        "next": "vip",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "contact.first_name",
                                    "operator": "equals",
                                    "value": first_name.upper(),
                                }
                            ]
                        },
                    },
                ],
                "everyone_else": {},
            },
            {"id": "vip", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "leave"},
            {
                "id": "leave",
                "type": "remove_from_list",
                "selection_id": DEMO_SELECTION_ID,
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        state = await (await start(time_skipping_env, task_queue, flow, contact_id)).result()
    assert [v.step for v in state.trail] == ["split", "vip", "leave", "done"]
    assert state.trail[0].outcome == "branch 'This one'"
    with session(engine) as db:
        selections = set(
            db.exec(
                select(SelectionMember.selection_id).where(SelectionMember.contact_id == contact_id)
            ).all()
        )
    assert VIP_SELECTION_ID in selections
    assert DEMO_SELECTION_ID not in selections


async def test_everyone_else_exit_hands_off_to_a_selection(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact_id = first_contact(engine)
    flow = flow_of(
        [
            {
                "id": "split",
                "type": "split",
                "basis": "selection",
                "branches": [{"name": "VIPs", "next": "done", "selection_id": VIP_SELECTION_ID}],
                "everyone_else": {"exit": {"add_to_selection": VIP_SELECTION_ID}},
            },
            {"id": "done", "type": "finish"},
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        state = await (await start(time_skipping_env, task_queue, flow, contact_id)).result()
    assert state.status is ParticipantStatus.finished
    assert state.trail[-1].step == "split"
    with session(engine) as db:
        assert db.exec(
            select(SelectionMember).where(
                SelectionMember.contact_id == contact_id,
                SelectionMember.selection_id == VIP_SELECTION_ID,
            )
        ).first()


async def test_a_deleted_contact_drops_out_with_a_reason(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    flow = flow_of(
        [
            {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
            {"id": "done", "type": "finish"},
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        state = await (await start(time_skipping_env, task_queue, flow, 999_999)).result()
    assert state.status is ParticipantStatus.dropped_out
    assert state.drop_out_reason == "the contact no longer exists"


async def test_cancelling_records_cancelled(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    flow = flow_of(
        [
            {"id": "wait", "type": "wait_time", "amount": 10, "unit": "days", "next": "done"},
            {"id": "done", "type": "finish"},
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, first_contact(engine))
        state = await assert_eventually(
            lambda: handle.query(ParticipantWorkflow.current_state),
            until=lambda state: state.wait_until is not None,
            what="the participant on its timer",
        )
        await handle.cancel()
        description = await assert_eventually(
            handle.describe,
            until=lambda description: description.status is not WorkflowExecutionStatus.RUNNING,
            what="the participant closed",
        )
    assert description.status is WorkflowExecutionStatus.CANCELED
    with session(engine) as db:
        row = db.get(Participant, state.participant_id)
    assert row is not None and row.status == "Cancelled"


async def test_long_flows_continue_as_new_carrying_their_state(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact_id = first_contact(engine)
    flow = flow_of(
        [
            {"id": "wait", "type": "wait_time", "amount": 1, "unit": "days", "next": "split"},
            {
                "id": "split",
                "type": "split",
                "basis": "selection",
                "branches": [{"name": "Marked", "next": "done", "selection_id": VIP_SELECTION_ID}],
                "everyone_else": {"next": "mark"},
            },
            {"id": "mark", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "wait"},
            {"id": "done", "type": "finish"},
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact_id, steps_per_run=2)
        state = await handle.result()
    assert [v.step for v in state.trail] == ["wait", "split", "mark", "wait", "split", "done"]
    assert state.visits == {"wait": 2, "split": 2, "mark": 1, "done": 1}
    # Two steps per run: six steps took three runs, each continuing as new with the state.
    first = time_skipping_env.client.get_workflow_handle(
        handle.id, run_id=handle.first_execution_run_id
    )
    first_run_events = [e async for e in first.fetch_history_events()]
    assert first_run_events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
    last = await handle.describe()
    assert last.run_id != handle.first_execution_run_id


async def test_one_record_per_step_with_the_checks_at_a_wait(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    """An action step and a finish without hand-offs: one record each, none of its own at
    enrollment, and no local record at all: the action step's rides in its CRM activity, and so
    does the finish's (the participant's last), which leaves the row as the workflow finished.
    A wait's entry is recorded with its wait, and the checks made there take a deleted contact
    out before it waits."""
    steps: list[dict[str, Any]] = [
        {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
        {"id": "done", "type": "finish"},
    ]
    waiting: list[dict[str, Any]] = [
        {"id": "wait", "type": "wait_time", "amount": 30, "unit": "days", "next": "done"},
        {"id": "done", "type": "finish"},
    ]
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow_of(steps), first_contact(engine))
        finished = await handle.result()
        gone = await (
            await start(time_skipping_env, task_queue, flow_of(waiting), 999_999)
        ).result()
    history = await handle.fetch_history()
    records = [
        e
        for e in history.events
        if e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    assert finished.status is ParticipantStatus.finished
    assert records == []
    with session(engine) as db:
        left = db.get(Participant, finished.participant_id)
    assert left is not None
    assert (left.status, left.current_step, left.finished_at, left.wait_until) == (
        "Finished",
        "done",
        finished.finished_at,
        None,
    )
    assert (gone.status, gone.drop_out_reason) == (
        ParticipantStatus.dropped_out,
        "the contact no longer exists",
    )
    assert [v.step for v in gone.trail] == ["wait"]
    assert gone.finished_at is not None
    assert gone.finished_at - gone.enrolled_at < timedelta(days=1)
    with session(engine) as db:
        row = db.get(Participant, gone.participant_id)
    assert row is not None and (row.status, row.wait_until) == ("Dropped out", None)
