"""The baseline: a plain Temporal workflow that runs no-op activities (and, if asked, timers).

It is the least Temporal itself needs for the same number of activities, so the engine's figures
can be read as a ratio to it. It is run by a worker with the same activity slots as worker.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

NOOP_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class BaselinePlan:
    activities: int
    sleeps: int = 0  # timers: a timer goes before each of the first `sleeps` activities
    sleep_seconds: float = 0.0


@activity.defn(name="bench_noop")
async def noop() -> None:
    return None


@workflow.defn(name="BenchBaseline")
class BaselineWorkflow:
    @workflow.run
    async def run(self, plan: BaselinePlan) -> float:
        """Runs the plan; returns the workflow time it took, in seconds."""
        started = workflow.now()
        for index in range(max(plan.activities, plan.sleeps)):
            if index < plan.sleeps:
                await workflow.sleep(timedelta(seconds=plan.sleep_seconds))
            if index < plan.activities:
                await workflow.execute_activity(noop, start_to_close_timeout=NOOP_TIMEOUT)
        return (workflow.now() - started).total_seconds()


@asynccontextmanager
async def baseline_worker(
    client: Client, task_queue: str, activity_slots: int
) -> AsyncIterator[Worker]:
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[BaselineWorkflow],
        activities=[noop],
        max_concurrent_activities=activity_slots,
    )
    async with worker:
        yield worker
