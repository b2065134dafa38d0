"""Simulated time (issue 7): a 90-day, 20-step flow under the time-skipping test server.

Engine: one participant through ten 9-day waits with nine action steps between them (CRM list
steps and emails to the loopback SMTP inbox) and a finish: 20 steps, 90 days. Baseline, on the
same server: a plain workflow with the same timers and nine no-op activities. Wall time each.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from temporalio.api.testservice.v1 import LockTimeSkippingRequest, UnlockTimeSkippingRequest

from bench.baseline import BaselinePlan, BaselineWorkflow, baseline_worker
from bench.harness import (
    BASELINE_ACTIVITY_SLOTS,
    EMAIL_SETTINGS,
    Crm,
    Options,
    PartResult,
    Server,
    alternate,
    bounded,
    deploy,
    engine_activities,
    participant_worker,
    progress,
    seed_contacts,
    smtp_inbox,
    temp_database,
    time_skipping_server,
)
from control.enrollment import enroll
from models.participant import participant_workflow_id
from workflows.participant import ParticipantWorkflow

NAME = "simulated"
TITLE = "Simulated time: 90 days, 20 steps on the time-skipping server (issue 7)"
WAITS = 10
WAIT_DAYS = 9
ACTIONS = 9


def long_flow(flow_id: str, crm: Crm) -> dict[str, Any]:
    actions: list[dict[str, Any]] = [
        {"type": "add_to_list", "selection_id": crm.target_selection_id},
        {
            "type": "send_email",
            "subject": "Day [[customer.firstname]]",
            "text": "Hi [[customer.firstname]]",
        },
        {"type": "remove_from_list", "selection_id": crm.target_selection_id},
    ]
    steps: list[dict[str, Any]] = []
    for index in range(WAITS):
        steps.append(
            {
                "id": f"wait-{index}",
                "type": "wait_time",
                "amount": WAIT_DAYS,
                "unit": "days",
                "next": f"action-{index}" if index < ACTIONS else "done",
            }
        )
        if index < ACTIONS:
            action = dict(actions[index % len(actions)])
            action.update(id=f"action-{index}", next=f"wait-{index + 1}")
            steps.append(action)
    steps.append({"id": "done", "type": "finish"})
    assert len(steps) == 20
    return {
        "id": flow_id,
        "name": "Bench: 90 days",
        "email": EMAIL_SETTINGS,
        "start": "wait-0",
        "steps": steps,
    }


@asynccontextmanager
async def time_skipping(server: Server) -> AsyncIterator[None]:
    service = server.client.test_service
    await service.unlock_time_skipping(UnlockTimeSkippingRequest())
    try:
        yield
    finally:
        await service.lock_time_skipping(LockTimeSkippingRequest())


async def engine_round(
    server: Server,
    engine: Engine,
    crm: Crm,
    flow_id: str,
    activities: list[Callable[..., Any]],
    result: PartResult,
) -> None:
    deploy(engine, long_flow(flow_id, crm))
    contact = crm.contact_ids[0]
    task_queue = f"bench-{flow_id}"
    async with participant_worker(server.client, engine, task_queue, activities):
        with server.meter.section() as usage:
            await bounded(
                enroll(server.client, engine, flow_id, [contact], task_queue=task_queue), "enroll"
            )
            handle = server.client.get_workflow_handle_for(
                ParticipantWorkflow.run, participant_workflow_id(flow_id, contact)
            )
            # enroll() drops the handles start_workflow returns, and only those unlock time
            # skipping while their result is awaited: unlock it here instead.
            async with time_skipping(server):
                state = await bounded(handle.result(), "the 90-day participant")
        assert state.finished_at is not None
        simulated = state.finished_at - state.enrolled_at
    result.row("wall time", "s").engine.append(usage().wall)
    result.row("simulated days", "days").engine.append(simulated.total_seconds() / 86400)
    result.add_usage("engine", usage())


async def baseline_round(server: Server, index: int, result: PartResult) -> None:
    task_queue = f"bench-simulated-baseline-{index}"
    plan = BaselinePlan(activities=ACTIONS, sleeps=WAITS, sleep_seconds=WAIT_DAYS * 86400)
    async with baseline_worker(server.client, task_queue, BASELINE_ACTIVITY_SLOTS):
        with server.meter.section() as usage:
            seconds = await bounded(
                server.client.execute_workflow(
                    BaselineWorkflow.run,
                    plan,
                    id=f"bench-simulated-baseline-{index}",
                    task_queue=task_queue,
                ),
                "the 90-day baseline",
            )
    result.row("wall time", "s").baseline.append(usage().wall)
    result.row("simulated days", "days").baseline.append(seconds / 86400)
    result.add_usage("baseline", usage())


async def run(options: Options) -> PartResult:
    result = PartResult(
        NAME,
        TITLE,
        engine_label=(
            f"one participant: {WAITS} waits of {WAIT_DAYS} days, {ACTIONS} action steps, finish"
        ),
        baseline_label=(
            f"plain workflow: {WAITS} timers of {WAIT_DAYS} days, {ACTIONS} no-op activities"
        ),
        parameters={"rounds": options.rounds, "steps": WAITS + ACTIONS + 1},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        crm = seed_contacts(engine, 1)
        with smtp_inbox(directory) as inbox:
            activities = engine_activities(engine, inbox.settings)
            async with time_skipping_server() as server:
                for index in range(options.rounds):
                    for side in alternate(index):
                        progress(f"simulated round {index + 1}/{options.rounds}: {side}")
                        if side == "engine":
                            flow_id = f"bench-90-days-{index}"
                            await engine_round(server, engine, crm, flow_id, activities, result)
                        else:
                            await baseline_round(server, index, result)
        engine.dispose()
    return result
