"""The baselines: plain Temporal workflows that run no-op activities (and, if asked, timers), and
plain workflows that each send one email.

They are the least Temporal itself needs for the same work, so the engine's figures can be read as
a ratio to them. They run on a worker with the same activity slots as worker.py, and unsandboxed,
as the engine's workflows run by default (``WORKFLOW_SANDBOX``): the cheapest a workflow per
contact can be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage

import aiosmtplib
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

NOOP_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class BaselinePlan:
    activities: int
    sleeps: int = 0  # timers: a timer goes before each of the first `sleeps` activities
    sleep_seconds: float = 0.0
    # What a participant does before it parks, for the memory part: a local activity that takes
    # and returns ``record`` before the first timer (its row recorded), and ``ballast`` riding in
    # the input (its enrollment's size).
    record: str = ""
    ballast: str = ""


@activity.defn(name="bench_noop")
async def noop() -> None:
    return None


@activity.defn(name="bench_echo")
async def echo(record: str) -> str:
    return record


@workflow.defn(name="BenchBaseline", sandboxed=False)
class BaselineWorkflow:
    @workflow.run
    async def run(self, plan: BaselinePlan) -> float:
        """Runs the plan; returns the workflow time it took, in seconds."""
        started = workflow.now()
        if plan.record:
            await workflow.execute_local_activity(
                echo, plan.record, start_to_close_timeout=NOOP_TIMEOUT
            )
        for index in range(max(plan.activities, plan.sleeps)):
            if index < plan.sleeps:
                await workflow.sleep(timedelta(seconds=plan.sleep_seconds))
            if index < plan.activities:
                await workflow.execute_activity(noop, start_to_close_timeout=NOOP_TIMEOUT)
        return (workflow.now() - started).total_seconds()


@dataclass(frozen=True)
class PlainEmail:
    """One message, as the engine's send_email builds it for the same contact."""

    host: str
    port: int
    sender: str
    recipient: str
    display_name: str
    subject: str
    text: str
    message_id: str
    local: bool = False  # send from a local activity instead of a scheduled one


@activity.defn(name="bench_send_email")
async def send_plain_email(email: PlainEmail) -> str:
    message = EmailMessage()
    message["From"] = f"Bench <{email.sender}>"
    message["To"] = f"{email.display_name} <{email.recipient}>"
    message["Subject"] = email.subject
    message["Message-ID"] = email.message_id
    message.set_content(email.text)
    _errors, reply = await aiosmtplib.send(
        message,
        hostname=email.host,
        port=email.port,
        sender=email.sender,
        recipients=[email.recipient],
        start_tls=False,
        timeout=60,
    )
    return reply


@workflow.defn(name="BenchPlainEmail", sandboxed=False)
class PlainEmailWorkflow:
    @workflow.run
    async def run(self, email: PlainEmail) -> str:
        if email.local:
            return await workflow.execute_local_activity(
                send_plain_email, email, start_to_close_timeout=timedelta(seconds=60)
            )
        return await workflow.execute_activity(
            send_plain_email, email, start_to_close_timeout=timedelta(seconds=60)
        )


@asynccontextmanager
async def baseline_worker(
    client: Client, task_queue: str, activity_slots: int, max_cached_workflows: int = 1000
) -> AsyncIterator[Worker]:
    """The plain workflows' worker; the cache size is the SDK's default unless given."""
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[BaselineWorkflow, PlainEmailWorkflow],
        activities=[noop, echo, send_plain_email],
        max_concurrent_activities=activity_slots,
        max_cached_workflows=max_cached_workflows,
    )
    async with worker:
        yield worker
