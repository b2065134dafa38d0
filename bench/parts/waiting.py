"""Waiting at scale (issue 7): memory of the worker and the server with participants parked.

N participants are enrolled in ``wait_time (30 days) → finish`` and run until each has recorded
its wait (the last thing before its timer). Resident memory (VmRSS from /proc) of this process
(the worker, with its workflow cache) and of the dev server process is read before enrolling and
once all are parked. Baseline, on the same server right after: as many plain workflows parked in
a 30-day timer, by a plain worker with the SDK's default cache (memory read the same way).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import select

from bench.baseline import BaselinePlan, BaselineWorkflow, baseline_worker
from bench.harness import (
    BASELINE_ACTIVITY_SLOTS,
    Options,
    PartResult,
    Server,
    bounded,
    deploy,
    engine_activities,
    gather_limited,
    participant_worker,
    progress,
    quiet,
    rss_bytes,
    seeded_stack,
    smtp_inbox,
    until,
)
from control.enrollment import START_CONCURRENCY, enroll
from models.database import session
from models.engine import Participant
from workflows.participant import ParticipantWorkflow

NAME = "waiting"
TITLE = "Waiting at scale: memory with participants parked (issue 7)"
DEFAULT_COUNT = 2_000
PARK_DAYS = 30
MIB = 2**20


def wait_flow(flow_id: str) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": "Bench: wait a month",
        "start": "wait",
        "steps": [
            {
                "id": "wait",
                "type": "wait_time",
                "amount": PARK_DAYS,
                "unit": "days",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }


def count_parked(engine: Engine, flow_id: str) -> int:
    with session(engine) as db:
        query = select(func.count()).where(
            Participant.flow_id == flow_id,
            Participant.current_step == "wait",
            Participant.wait_until.is_not(None),  # type: ignore[union-attr]
        )
        return int(db.exec(query).one())


def memory_mib(server: Server) -> tuple[float, float]:
    """RSS of this process (the worker) and of the server, in MiB."""
    gc.collect()
    server_rss = rss_bytes(server.pid) if server.pid is not None else 0
    return rss_bytes(os.getpid()) / MIB, server_rss / MIB


def _record(
    result: PartResult,
    side: str,
    count: int,
    before: tuple[float, float],
    after: tuple[float, float],
    seconds: float,
    halfway: tuple[float, float] | None = None,
) -> None:
    if halfway is not None:  # read on the engine side only; the rows come first in the table
        result.row("worker process RSS before", "MiB")
        result.row("worker process RSS with half parked", "MiB").engine.append(halfway[0])
    for metric, unit, value in (
        ("worker process RSS before", "MiB", before[0]),
        ("worker process RSS after", "MiB", after[0]),
        ("worker process RSS per 1,000 parked", "MiB", (after[0] - before[0]) * 1000 / count),
        ("server RSS before", "MiB", before[1]),
        *([("server RSS with half parked", "MiB", halfway[1])] if halfway is not None else []),
        ("server RSS after", "MiB", after[1]),
        ("server RSS per 1,000 parked", "MiB", (after[1] - before[1]) * 1000 / count),
        ("time to park them all", "s", seconds),
        ("parked/s", "participants/s", count / seconds),
    ):
        getattr(result.row(metric, unit), side).append(value)


async def engine_side(
    server: Server, engine: Engine, contact_ids: list[int], directory: Path, result: PartResult
) -> None:
    flow_id = "bench-waiting"
    deploy(engine, wait_flow(flow_id))
    task_queue = "bench-waiting"
    with smtp_inbox(directory) as inbox:
        activities = engine_activities(engine, inbox.settings)
        async with participant_worker(server.client, engine, task_queue, activities):
            await asyncio.sleep(1)
            before = memory_mib(server)
            with server.meter.section() as usage:
                await bounded(
                    enroll(server.client, engine, flow_id, contact_ids, task_queue=task_queue),
                    "enrolling",
                )

                async def parked(count: int) -> bool:
                    return await asyncio.to_thread(count_parked, engine, flow_id) >= count

                await until(lambda: parked(len(contact_ids) // 2), "parking half")
                halfway = memory_mib(server)
                await until(lambda: parked(len(contact_ids)), "parking participants")
            await quiet(server)
            after = memory_mib(server)
    _record(result, "engine", len(contact_ids), before, after, usage().wall, halfway)
    result.add_usage("engine", usage(), len(contact_ids), "parked participant")


async def baseline_side(server: Server, count: int, result: PartResult) -> None:
    task_queue = "bench-waiting-baseline"
    plan = BaselinePlan(activities=0, sleeps=1, sleep_seconds=PARK_DAYS * 86400)
    ids = [f"bench-park-{index}" for index in range(count)]
    client = server.client

    def starter(workflow_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: client.start_workflow(
            BaselineWorkflow.run, plan, id=workflow_id, task_queue=task_queue
        )

    async with baseline_worker(client, task_queue, BASELINE_ACTIVITY_SLOTS):
        await asyncio.sleep(1)
        before = memory_mib(server)
        with server.meter.section() as usage:
            await bounded(gather_limited(START_CONCURRENCY, map(starter, ids)), "starting")
            # A plain workflow records nothing on the way: parked is when the server goes quiet
            # (the figures include the one quiet second that tells).
            await quiet(server)
        after = memory_mib(server)
    _record(result, "baseline", count, before, after, usage().wall)
    result.add_usage("baseline", usage(), count, "parked participant")


async def run(options: Options) -> PartResult:
    count = options.parked_count
    rounds = options.rounds
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"{count:,} participants enrolled and parked in a {PARK_DAYS}-day wait step",
        baseline_label=f"{count:,} plain workflows parked in a {PARK_DAYS}-day timer, same server",
        parameters={"parked": count, "rounds": rounds, "workflow": ParticipantWorkflow.__name__},
    )
    for index in range(rounds):
        # Each round on a fresh database and server, the engine first and the plain workflows
        # onto the same server after it, as the part always ran: its figures stay comparable.
        label = f"waiting: round {index + 1} of {rounds}"
        async with seeded_stack(options.workdir, count, label) as stack:
            progress(f"waiting: parking {count:,} participants")
            await engine_side(
                stack.server, stack.engine, stack.contact_ids, stack.directory, result
            )
            progress(f"waiting: parking {count:,} plain workflows")
            await baseline_side(stack.server, count, result)
    result.notes.append(
        "Parking is the expensive part. The worker's cache holds at most "
        "max_cached_workflows (SDK default 1,000) workflows; the rest are evicted and replayed "
        "when their timer fires, so the worker's RSS stops growing once the cache is full (compare "
        "the half-parked reading), while the in-memory dev server keeps every history in RAM. "
        "The worker's RSS readings are of one process across the rounds: compare the growth "
        "within a round, not the levels."
    )
    return result
