"""A flow's lifecycle on the real dev server: pause, edit, resume and end reach every participant
through one batch operation each."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio import activity
from temporalio.testing import WorkflowEnvironment

import starter
from activities.crm import CrmActivities, ListChange
from control.enrollment import enroll
from control.flows import FlowRejected, deploy_flow, load_flow
from control.lifecycle import (
    LifecycleError,
    delete_flow,
    end_flow,
    pause_flow,
    resume_flow,
)
from models.database import session
from models.engine import FlowStatus, Participant, StepChange
from models.participant import KeptVersion, ParticipantState
from models.settings import Settings
from testkit.waiting import assert_eventually
from worker import activities_for, build_worker
from workflows.participant import ParticipantWorkflow

FLOW_TEMPLATE: dict[str, Any] = {
    "id": "lifecycle",
    "name": "Lifecycle",
    "start": "short",
    "steps": [
        {
            "id": "short",
            "type": "wait_time",
            "mode": "until",
            "until": "2000-01-01T00:00:00",
            "next": "sort",
        },
        {
            "id": "sort",
            "type": "split",
            "basis": "selection",
            "branches": [{"name": "Demo", "selection_id": 1, "next": "long"}],
            "everyone_else": {"next": "long"},
        },
        {"id": "long", "type": "wait_time", "amount": 10, "unit": "days", "next": "tag"},
        {"id": "tag", "type": "add_to_list", "selection_id": 2, "next": "done"},
        {"id": "done", "type": "finish"},
    ],
}


async def states(
    env: WorkflowEnvironment, flow_id: str, contacts: list[int]
) -> list[ParticipantState]:
    return [
        await env.client.get_workflow_handle(f"flow-{flow_id}-contact-{c}").query(
            ParticipantWorkflow.current_state
        )
        for c in contacts
    ]


async def test_pause_edit_resume_and_end(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    # A flow id of its own: the dev server outlives the test (and its other database backend).
    flow_id = f"lifecycle-{uuid.uuid4().hex[:8]}"
    document = dict(FLOW_TEMPLATE, id=flow_id)
    deploy_flow(engine, document)
    contacts = [1, 2, 3, 4]
    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        report = await enroll(dev_env.client, engine, flow_id, contacts, task_queue=task_queue)
        assert report.enrolled == contacts

        async def all_waiting() -> bool:
            found = [
                w
                async for w in dev_env.client.list_workflows(
                    f"FlowId='{flow_id}' AND FlowStep='long' AND ExecutionStatus='Running'"
                )
            ]
            return len(found) == len(contacts)

        await assert_eventually(all_waiting, what="every participant waiting at 'long'")
        with pytest.raises(FlowRejected, match="running: pause it to edit"):
            deploy_flow(engine, dict(document, name="Edited while running"))

        paused = await pause_flow(dev_env.client, engine, flow_id)
        assert (paused.reached, paused.failed) == (4, 0)
        assert all(s.paused for s in await states(dev_env, flow_id, contacts))
        # A contact enrolled while paused queues before the first step.
        late = await enroll(dev_env.client, engine, flow_id, [5], task_queue=task_queue)
        assert late.enrolled == [5]
        (queued,) = await states(dev_env, flow_id, [5])
        assert queued.paused and queued.current_step is None

        # While paused: a step holding participants cannot go; a later step may change.
        without_long = json.loads(json.dumps(document))
        without_long["steps"] = [s for s in without_long["steps"] if s["id"] != "long"]
        without_long["steps"][1]["branches"][0]["next"] = "tag"
        without_long["steps"][1]["everyone_else"]["next"] = "tag"
        with pytest.raises(FlowRejected, match="'long' holds 4 participants"):
            deploy_flow(engine, without_long)
        edited = json.loads(json.dumps(document))
        edited["steps"][3]["selection_id"] = 1
        assert deploy_flow(engine, edited).version == 2

        resumed = await resume_flow(dev_env.client, engine, flow_id)
        assert resumed.reached == 5
        after = await states(dev_env, flow_id, [*contacts, 5])
        assert not any(s.paused for s in after)
        assert {s.flow_version for s in after} == {2}

        with pytest.raises(LifecycleError, match="end it before deleting"):
            delete_flow(engine, flow_id)
        ended = await end_flow(dev_env.client, engine, flow_id)
        assert ended.reached == 5

        def cancelled() -> set[str]:
            with session(engine) as db:
                rows = db.exec(select(Participant).where(Participant.flow_id == flow_id)).all()
            return {row.status for row in rows}

        async def all_cancelled() -> bool:
            return await asyncio.to_thread(cancelled) == {"Cancelled"}

        await assert_eventually(all_cancelled, what="every participant cancelled")
    assert load_flow(engine, flow_id).status is FlowStatus.not_running
    delete_flow(engine, flow_id)


class HeldTagging:
    """add_to_list that holds one contact inside the step until released; the others pass."""

    def __init__(self, engine: Engine, held: int) -> None:
        self.real = CrmActivities(engine)
        self.held = held
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    @activity.defn(name="add_to_list")
    async def add_to_list(self, change: ListChange) -> StepChange:
        if change.contact_id == self.held:
            self.entered.set()
            await self.released.wait()
        return await asyncio.to_thread(self.real.add_to_list, change)


async def test_resume_reports_who_kept_their_version(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    settings_env: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow_id = f"kept-{uuid.uuid4().hex[:8]}"
    first: dict[str, Any] = {
        "id": flow_id,
        "name": "Kept",
        "start": "tag",
        "steps": [
            {"id": "tag", "type": "add_to_list", "selection_id": 2, "next": "long"},
            {"id": "long", "type": "wait_time", "amount": 10, "unit": "days", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
    }
    deploy_flow(engine, first)
    tagging = HeldTagging(engine, held=3)
    activities = [a for a in activities_for(engine) if getattr(a, "__name__", "") != "add_to_list"]
    async with build_worker(
        dev_env.client, engine, task_queue=task_queue, activities=[*activities, tagging.add_to_list]
    ):
        report = await enroll(dev_env.client, engine, flow_id, [1, 2, 3], task_queue=task_queue)
        assert report.enrolled == [1, 2, 3]
        await asyncio.wait_for(tagging.entered.wait(), 30)

        async def two_waiting() -> bool:
            found = [
                w
                async for w in dev_env.client.list_workflows(
                    f"FlowId='{flow_id}' AND FlowStep='long' AND ExecutionStatus='Running'"
                )
            ]
            return len(found) == 2

        await assert_eventually(two_waiting, what="two participants waiting at 'long'")
        await pause_flow(dev_env.client, engine, flow_id)
        # Version 2 starts at the wait: contact 3, still inside "tag", cannot take it (a step that
        # holds nobody waiting may go while paused).
        second = dict(first, start="long", steps=first["steps"][1:])
        assert deploy_flow(engine, second).version == 2

        settings_env(
            DATABASE_URL=engine.url.render_as_string(hide_password=False),
            TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        )
        assert await asyncio.to_thread(starter.main, ["resume", flow_id]) == 0
        out = capsys.readouterr().out
        assert f"{flow_id}: running; 3 participants resumed" in out
        assert "2 took version 2, 1 kept the version they had" in out
        assert "kept version 1 (1): its current step 'tag' is not in version 2" in out

        kept, *took = await states(dev_env, flow_id, [3, 1, 2])
        assert [s.flow_version for s in took] == [2, 2]
        assert all(s.kept_version is None for s in took)
        assert kept.flow_version == 1 and kept.kept_version == KeptVersion(
            version=1, offered=2, reason="its current step 'tag' is not in version 2"
        )
        # The participant goes on with its own version: "tag" is done, then its own wait.
        tagging.released.set()

        async def kept_one_waiting() -> bool:
            (state,) = await states(dev_env, flow_id, [3])
            return state.current_step == "long" and state.flow_version == 1

        await assert_eventually(kept_one_waiting, what="contact 3 waiting on version 1")
        await end_flow(dev_env.client, engine, flow_id)
