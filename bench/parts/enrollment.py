"""Enrollment (issue 7): starting participants for every contact of one selection.

Engine: ``enroll(...)`` for the selection's members (the flow's rules checked against the
database a batch of candidates at a time, then one ``start_workflow`` each, 32 in flight).
Baseline: a plain concurrent loop of the same ``start_workflow`` calls (same workflow, input, id
pattern, search attributes; as many in flight) without the rule checks. No worker polls the task
queue: only starting is timed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from bench.harness import (
    Options,
    PartResult,
    Server,
    alternate,
    bounded,
    deploy,
    dev_server,
    gather_limited,
    progress,
    seed_contacts,
    temp_database,
)
from control.enrollment import START_CONCURRENCY, enroll, selection_members
from control.flows import load_flow
from models import search_attributes as sa
from models.participant import Enrollment, participant_workflow_id
from workflows.participant import BEHAVIOUR, ParticipantWorkflow

NAME = "enrollment"
TITLE = "Enrollment: one selection (issue 7)"
DEFAULT_COUNT = 2_000
TASK_QUEUE = "bench-enrollment-unpolled"


def parked_flow(flow_id: str) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": "Bench: wait a month",
        "start": "wait",
        "steps": [
            {"id": "wait", "type": "wait_time", "amount": 30, "unit": "days", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
    }


async def raw_starts(client: Client, engine: Engine, flow_id: str, contact_ids: list[int]) -> None:
    stored = load_flow(engine, flow_id)
    flow = stored.flow

    def starter(contact_id: int) -> Callable[[], Awaitable[Any]]:
        return lambda: client.start_workflow(
            ParticipantWorkflow.run,
            Enrollment(
                flow=flow, flow_version=stored.version, contact_id=contact_id, behaviour=BEHAVIOUR
            ),
            id=participant_workflow_id(flow.id, contact_id),
            task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=sa.at_start(flow, stored.version, contact_id),
            static_summary=f"Contact {contact_id} in flow {flow.name!r} (v{stored.version})",
        )

    await gather_limited(START_CONCURRENCY, map(starter, contact_ids))


async def one_round(
    server: Server, engine: Engine, selection_id: int, side: str, index: int, result: PartResult
) -> None:
    flow_id = f"bench-enroll-{side}-{index}"
    deploy(engine, parked_flow(flow_id))
    with server.meter.section() as usage:
        # Both read the selection: enrollment starts from it in the product too.
        members = selection_members(engine, selection_id)
        if side == "engine":
            report = await bounded(
                enroll(server.client, engine, flow_id, members, task_queue=TASK_QUEUE), "enroll"
            )
            started = len(report.enrolled)
            if report.refused:
                result.notes.append(f"{flow_id}: {len(report.refused)} refused")
        else:
            await bounded(raw_starts(server.client, engine, flow_id, members), "raw starts")
            started = len(members)
    getattr(result.row("starts/s", "workflows started/s"), side).append(started / usage().wall)
    getattr(result.row("time for the selection", "s"), side).append(usage().wall)
    result.add_usage(side, usage(), started, "start")


async def run(options: Options) -> PartResult:
    count = options.enroll_count
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"enroll(...) of a {count:,}-contact selection (rules + start_workflow)",
        baseline_label=(
            f"plain start_workflow loop for the same {count:,} ids, {START_CONCURRENCY} in flight"
        ),
        parameters={"contacts": count, "rounds": options.rounds, "in_flight": START_CONCURRENCY},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        engine = temp_database(Path(scratch))
        progress(f"enrollment: seeding {count:,} contacts")
        crm = seed_contacts(engine, count)
        async with dev_server() as server:
            for index in range(options.rounds):
                for side in alternate(index):
                    progress(f"enrollment round {index + 1}/{options.rounds}: {side}")
                    await one_round(server, engine, crm.selection_id, side, index, result)
        engine.dispose()
    return result
