"""A contact that already meets the flow's success criteria as it is enrolled is enrolled and
counts as a success (spec §2); with "move directly to finish" it finishes at once (dev server)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from control.enrollment import enroll
from models.crm import SelectionMember
from models.database import session
from models.demo import VIP_SELECTION_ID
from models.engine import ParticipantStatus
from models.participant import participant_workflow_id
from tests.test_events import (
    DONE,
    KARIN,
    LARS,
    WAIT,
    flow_document,
    participant_status,
    running_flow,
    worker,
)
from workflows.participant import ParticipantWorkflow

__all__ = ["worker"]  # the fixture, from the events tests

IN_VIP = {"criteria": [{"kind": "added_to_selection", "selection_id": VIP_SELECTION_ID}]}


def karin_in_vip(engine: Engine) -> None:
    with session(engine) as db:
        db.add(SelectionMember(selection_id=VIP_SELECTION_ID, contact_id=KARIN))


@pytest.mark.usefixtures("worker")
async def test_a_member_already_counts_as_a_success_at_finish(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    karin_in_vip(engine)
    flow_id = running_flow(engine, flow_document("already", [DONE], success=IN_VIP))
    report = await enroll(dev_env.client, engine, flow_id, [KARIN, LARS], task_queue=task_queue)
    assert report.enrolled == [KARIN, LARS]
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.finished_with_success.value)
    await participant_status(engine, flow_id, LARS, ParticipantStatus.finished.value)


@pytest.mark.usefixtures("worker")
async def test_with_move_to_finish_a_member_finishes_at_once(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    karin_in_vip(engine)
    success = {**IN_VIP, "move_to_finish": True}
    flow_id = running_flow(engine, flow_document("already", [WAIT, DONE], success=success))
    await enroll(dev_env.client, engine, flow_id, [KARIN, LARS], task_queue=task_queue)
    karin = participant_workflow_id(flow_id, KARIN)
    handle = dev_env.client.get_workflow_handle_for(ParticipantWorkflow.run, karin)
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.finished_with_success.value)
    state = await handle.result()
    assert state.status is ParticipantStatus.finished_with_success
    assert state.trail == [] and state.wait_until is None  # it never waited
    await participant_status(engine, flow_id, LARS, ParticipantStatus.active.value)
