"""Waking after eviction: N parked participants whose wait ends at the same instant, woken by a
worker that has none of them cached.

Engine: N contacts enrolled in ``wait_time (until an instant) → finish``; once every one has
recorded its wait, the worker stops (every participant leaves its cache) and a fresh one starts
just before the instant. The drain runs from the instant until every participant has finished:
each wake replays the participant's history from the start, then records it finished. Baseline,
on the same server right after: N plain workflows that sleep until their own shared instant and
then run one no-op activity, woken the same way by a fresh plain worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func
from sqlmodel import select

from bench.baseline import BaselinePlan, BaselineWorkflow, baseline_worker
from bench.harness import (
    BASELINE_ACTIVITY_SLOTS,
    BenchTimeout,
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
    results_of,
    seeded_stack,
    smtp_inbox,
    until,
)
from control.enrollment import START_CONCURRENCY, enroll
from models.database import session
from models.engine import Participant, ParticipantStatus
from workflows.participant import ParticipantWorkflow

NAME = "waking"
TITLE = "Waking after eviction: parked participants whose waits end at once"
ZONE = "Europe/Stockholm"
PARK_RATE = 20.0  # participants/s assumed when choosing the instant: well below what parks
MARGIN = timedelta(seconds=20)


def wake_flow(flow_id: str, until: datetime) -> dict[str, Any]:
    local = until.astimezone(ZoneInfo(ZONE)).replace(tzinfo=None)
    return {
        "id": flow_id,
        "name": "Bench: wake at once",
        "time_zone": ZONE,
        "start": "wait",
        "steps": [
            {
                "id": "wait",
                "type": "wait_time",
                "mode": "until",
                "until": local.isoformat(),
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }


def _instant(count: int) -> datetime:
    """A whole second far enough ahead for every one of ``count`` to park first."""
    ahead = timedelta(seconds=count / PARK_RATE) + MARGIN
    return (datetime.now(UTC) + ahead).replace(microsecond=0)


def _count(engine: Engine, flow_id: str, *, finished: bool) -> int:
    with session(engine) as db:
        if finished:
            where = Participant.status == ParticipantStatus.finished.value
        else:
            where = Participant.wait_until.is_not(None)  # type: ignore[union-attr]
        query = select(func.count()).where(Participant.flow_id == flow_id, where)
        return int(db.exec(query).one())


async def _sleep_until(instant: datetime, what: str) -> None:
    left = (instant - datetime.now(UTC)).total_seconds()
    if left < 1:
        raise BenchTimeout(f"{what} took past the wake instant: lower PARK_RATE")
    await asyncio.sleep(left - 1)  # the fresh worker polls before the timers fire


def _drained(result: PartResult, side: str, count: int, instant: datetime, parked_s: float) -> None:
    drain = (datetime.now(UTC) - instant).total_seconds()
    for metric, unit, value in (
        ("time to park them all", "s", parked_s),
        ("drain: from the instant until all finished", "s", drain),
        ("woken and finished/s", "participants/s", count / drain),
    ):
        getattr(result.row(metric, unit), side).append(value)


async def engine_side(
    server: Server, engine: Engine, contact_ids: list[int], directory: Path, result: PartResult
) -> None:
    flow_id, task_queue, count = "bench-waking", "bench-waking", len(contact_ids)
    instant = _instant(count)
    deploy(engine, wake_flow(flow_id, instant))
    with smtp_inbox(directory) as inbox:
        activities = engine_activities(engine, inbox.settings)
        began = time.monotonic()
        async with participant_worker(server.client, engine, task_queue, activities):
            await bounded(
                enroll(server.client, engine, flow_id, contact_ids, task_queue=task_queue),
                "enrolling",
            )

            async def parked() -> bool:
                return await asyncio.to_thread(_count, engine, flow_id, finished=False) >= count

            await until(parked, "parking participants", interval=0.2)
            await quiet(server)  # the last workflow tasks done: every timer started
            parked_s = time.monotonic() - began
        await _sleep_until(instant, "parking")
        async with participant_worker(server.client, engine, task_queue, activities):
            with server.meter.section() as usage:

                async def finished() -> bool:
                    done = await asyncio.to_thread(_count, engine, flow_id, finished=True)
                    return done >= count

                await until(finished, "waking participants", interval=0.2)
                _drained(result, "engine", count, instant, parked_s)
    result.add_usage("engine", usage(), count, "woken participant")


async def baseline_side(server: Server, count: int, result: PartResult) -> None:
    task_queue = "bench-waking-baseline"
    client = server.client
    instant = _instant(count)
    ids = [f"bench-wake-{index}" for index in range(count)]

    def starter(workflow_id: str) -> Callable[[], Awaitable[Any]]:
        async def start() -> Any:
            seconds = (instant - datetime.now(UTC)).total_seconds()
            plan = BaselinePlan(activities=1, sleeps=1, sleep_seconds=seconds)
            return await client.start_workflow(
                BaselineWorkflow.run, plan, id=workflow_id, task_queue=task_queue
            )

        return start

    began = time.monotonic()
    async with baseline_worker(client, task_queue, BASELINE_ACTIVITY_SLOTS):
        await bounded(gather_limited(START_CONCURRENCY, map(starter, ids)), "starting")
        # Stopped before its first workflow task, a plain workflow would start its timer only
        # when the fresh worker runs it: wait until every one has.
        await quiet(server)
        parked_s = time.monotonic() - began
    await _sleep_until(instant, "starting the plain workflows")
    async with baseline_worker(client, task_queue, BASELINE_ACTIVITY_SLOTS):
        with server.meter.section() as usage:
            await results_of(client, ids)
            _drained(result, "baseline", count, instant, parked_s)
    result.add_usage("baseline", usage(), count, "woken participant")


async def run(options: Options) -> PartResult:
    count = options.parked_count
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"{count:,} participants parked until one instant, woken by a fresh worker",
        baseline_label=f"{count:,} plain workflows sleeping until one instant, then one no-op "
        "activity, woken by a fresh plain worker, same server",
        parameters={"waking": count, "rounds": 1, "workflow": ParticipantWorkflow.__name__},
    )
    async with seeded_stack(options.workdir, count, "waking") as stack:
        progress(f"waking: parking and waking {count:,} participants")
        await engine_side(stack.server, stack.engine, stack.contact_ids, stack.directory, result)
        progress(f"waking: parking and waking {count:,} plain workflows")
        await baseline_side(stack.server, count, result)
    result.notes.append(
        "One round. The worker that parked them is stopped before the instant, so every wake "
        "replays its participant's history on a worker that has none cached."
    )
    return result
