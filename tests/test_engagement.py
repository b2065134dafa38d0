"""Events reaching participants: wait_for_action, event-based splits, success criteria, pause and
resume, leaving on request, and the checks before every step (time-skipping server)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from control.flows import deploy_flow
from models.crm import SelectionMember
from models.database import session
from models.demo import VIP_SELECTION_ID
from models.engine import ParticipantStatus
from models.events import EventKind, FlowEvent
from models.participant import Resume, participant_workflow_id
from testkit.waiting import waiting_at
from tests.test_participant import STOCKHOLM, first_contact, flow_of, start
from worker import build_worker
from workflows.participant import ParticipantWorkflow


def event(kind: EventKind, contact_id: int, **fields: Any) -> FlowEvent:
    return FlowEvent(
        event_id=str(uuid.uuid4()),
        kind=kind,
        contact_id=contact_id,
        occurred_at=fields.pop("occurred_at", datetime.now(UTC)),
        **fields,
    )


WAIT_FOR_FORM = {
    "id": "wait",
    "type": "wait_for_action",
    "actions": [{"kind": "form_submitted", "form_id": 7}],
    "exit_on_timeout": True,
    "exit": {"add_to_selection": VIP_SELECTION_ID},
    "next": "done",
}
FINISH = {"id": "done", "type": "finish"}


async def test_the_awaited_action_moves_the_participant_on(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    flow = flow_of([WAIT_FOR_FORM, FINISH])
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact)
        waiting = await waiting_at(handle, "wait")
        assert waiting.wait_until is not None
        # The default maximum, seven days on the flow's wall clock (DST may fall in between).
        until, entered = (
            moment.astimezone(STOCKHOLM).replace(tzinfo=None)
            for moment in (waiting.wait_until, waiting.trail[-1].entered_at)
        )
        assert abs(until - entered - timedelta(days=7)) < timedelta(seconds=1)
        await handle.signal(
            ParticipantWorkflow.event, event(EventKind.form_submitted, contact, form_id=8)
        )
        await handle.signal(
            ParticipantWorkflow.event, event(EventKind.form_submitted, contact, form_id=7)
        )
        state = await handle.result()
    assert state.status is ParticipantStatus.finished
    assert state.trail[0].outcome.startswith("form submitted")


async def test_no_action_within_the_maximum_time_exits_with_the_hand_offs(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    flow = flow_of([WAIT_FOR_FORM, FINISH])
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        state = await (await start(time_skipping_env, task_queue, flow, contact)).result()
    assert (state.status, state.drop_out_reason) == (ParticipantStatus.dropped_out, "no response")
    assert state.finished_at is not None
    # Seven days on the flow's wall clock: across a DST change that is 6 d 23 h or 7 d 1 h of UTC
    # (the time-skipping server's clock is wherever earlier tests have moved it).
    local = [
        moment.astimezone(STOCKHOLM).replace(tzinfo=None)
        for moment in (state.enrolled_at, state.finished_at)
    ]
    assert local[1] - local[0] >= timedelta(days=7)
    with session(engine) as db:
        members = db.exec(
            select(SelectionMember).where(SelectionMember.contact_id == contact)
        ).all()
    assert any(m.selection_id == VIP_SELECTION_ID for m in members)


async def test_an_action_taken_before_the_step_counts(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    flow = flow_of(
        [
            {"id": "first", "type": "wait_time", "amount": 1, "unit": "days", "next": "wait"},
            dict(WAIT_FOR_FORM, exit_on_timeout=False),
            FINISH,
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact)
        await waiting_at(handle, "first")
        await handle.signal(
            ParticipantWorkflow.event, event(EventKind.form_submitted, contact, form_id=7)
        )
        state = await handle.result()
    wait_visit = next(v for v in state.trail if v.step == "wait")
    assert wait_visit.outcome.startswith("form submitted")
    done = next(v for v in state.trail if v.step == "done")
    assert done.entered_at - wait_visit.entered_at < timedelta(minutes=1)


async def test_splits_on_form_submission_and_on_link_clicks(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    flow = flow_of(
        [
            {"id": "first", "type": "wait_time", "amount": 1, "unit": "days", "next": "form"},
            {
                "id": "form",
                "type": "split",
                "basis": "form_submitted",
                "form_id": 7,
                "branches": [
                    {"name": "Submitted", "submitted": True, "next": "clicks"},
                    {"name": "Not submitted", "submitted": False, "next": "done"},
                ],
                "everyone_else": {"next": "done"},
            },
            {
                "id": "clicks",
                "type": "split",
                "basis": "link_clicked",
                "branches": [
                    {"name": "Pricing", "link": "https://example.com/pricing", "next": "done"},
                    {"name": "Any link", "next": "done"},
                ],
                "everyone_else": {"next": "done"},
            },
            FINISH,
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact)
        await waiting_at(handle, "first")
        await handle.signal(
            ParticipantWorkflow.event, event(EventKind.form_submitted, contact, form_id=7)
        )
        click = event(
            EventKind.link_clicked,
            contact,
            flow_id="test-flow",
            step_id="mail",
            link="https://example.com/blog",
        )
        await handle.signal(ParticipantWorkflow.event, click)
        state = await handle.result()
    outcomes = {v.step: v.outcome for v in state.trail}
    assert outcomes["form"] == "branch 'Submitted'"
    assert outcomes["clicks"] == "branch 'Any link'"


async def test_a_success_criterion_with_move_to_finish_ends_a_wait_at_once(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    flow = flow_of(
        [
            {"id": "long", "type": "wait_time", "amount": 30, "unit": "days", "next": "done"},
            FINISH,
        ],
        success={"criteria": [{"kind": "sale_created"}], "move_to_finish": True},
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact)
        await waiting_at(handle, "long")
        await handle.signal(ParticipantWorkflow.event, event(EventKind.sale_created, contact))
        state = await handle.result()
    assert state.status is ParticipantStatus.finished_with_success
    assert state.finished_at is not None
    assert state.finished_at - state.enrolled_at < timedelta(days=1)
    assert [v.step for v in state.trail] == ["long"]


async def test_without_move_to_finish_success_is_given_at_finish(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    flow = flow_of(
        [
            {"id": "long", "type": "wait_time", "amount": 3, "unit": "days", "next": "done"},
            FINISH,
        ],
        success={"criteria": [{"kind": "added_to_selection", "selection_id": 5}]},
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact)
        await waiting_at(handle, "long")
        await handle.signal(
            ParticipantWorkflow.event, event(EventKind.added_to_selection, contact, selection_id=4)
        )
        assert not (await handle.query(ParticipantWorkflow.current_state)).success
        await handle.signal(
            ParticipantWorkflow.event, event(EventKind.added_to_selection, contact, selection_id=5)
        )
        state = await handle.result()
    assert state.status is ParticipantStatus.finished_with_success
    assert [v.step for v in state.trail] == ["long", "done"]


async def test_pause_freezes_and_resume_continues_with_the_edited_flow(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    wait = {"id": "wait", "type": "wait_time", "amount": 1, "unit": "days", "next": "note"}
    flow = flow_of(
        [
            wait,
            {"id": "note", "type": "remove_from_list", "selection_id": 1, "next": "done"},
            FINISH,
        ]
    )
    # Edited while paused: a step the participant has not reached yet changes.
    edited = flow_of(
        [
            wait,
            {"id": "note", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
            FINISH,
        ]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, contact)
        await waiting_at(handle, "wait")
        await handle.signal(ParticipantWorkflow.pause)
        await time_skipping_env.sleep(timedelta(days=3))
        frozen = await handle.query(ParticipantWorkflow.current_state)
        assert (frozen.current_step, frozen.paused) == ("wait", True)
        assert frozen.status is ParticipantStatus.active
        await handle.signal(ParticipantWorkflow.resume, Resume(flow=edited, flow_version=2))
        state = await handle.result()
    assert [v.step for v in state.trail] == ["wait", "note", "done"]
    assert state.trail[1].outcome == f"selection {VIP_SELECTION_ID}: added"
    assert state.flow_version == 2


async def test_leave_and_the_checks_before_every_step(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    flow = flow_of(
        [
            {"id": "wait", "type": "wait_time", "amount": 1, "unit": "days", "next": "done"},
            FINISH,
        ],
        exclusion_selections=[VIP_SELECTION_ID],
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        asked_to_leave = await start(time_skipping_env, task_queue, flow, contact)
        await waiting_at(asked_to_leave, "wait")
        await asked_to_leave.signal(ParticipantWorkflow.leave, "enrolled in flow 'other'")
        left = await asked_to_leave.result()

        excluded = await start(time_skipping_env, task_queue, flow, contact)
        await waiting_at(excluded, "wait")
        with session(engine) as db:
            db.add(SelectionMember(selection_id=VIP_SELECTION_ID, contact_id=contact))
        dropped = await excluded.result()
    assert (left.status, left.drop_out_reason) == (
        ParticipantStatus.dropped_out,
        "enrolled in flow 'other'",
    )
    assert (dropped.status, dropped.drop_out_reason) == (
        ParticipantStatus.dropped_out,
        "on the exclusion list",
    )
    assert [v.step for v in dropped.trail] == ["wait", "done"]


async def test_finish_suggests_the_contact_for_another_flow(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact = first_contact(engine)
    other = {
        "id": "next-flow",
        "name": "Next flow",
        "start": "done",
        "steps": [{"id": "done", "type": "finish"}],
    }
    deploy_flow(engine, other)
    flow = flow_of([{"id": "done", "type": "finish", "suggest_flow_otherwise": "next-flow"}])
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        state = await (await start(time_skipping_env, task_queue, flow, contact)).result()
        handle = time_skipping_env.client.get_workflow_handle_for(
            ParticipantWorkflow.run, participant_workflow_id("next-flow", contact)
        )
        suggested = await handle.result()
    assert state.status is ParticipantStatus.finished
    assert (suggested.flow_id, suggested.status) == ("next-flow", ParticipantStatus.finished)
