"""A provider's rate limit held by Temporal: N sends queued at once against a 20 msg/s ceiling.

Engine: N sends (default 2,000) of the real ``send_email`` activity (ledger claim, message built
from the CRM, SMTP hand-over, settle) scheduled at once on the email channel's task queue by
``SENDERS`` workflows, and served there by worker.py's channel worker (``worker.channel_workers``)
with the sending settings' email rate limit at 20 messages per second: the activity tasks wait in
Temporal's queue and are dispatched at the limit. The participants' own bookkeeping is left out
so that the supply of sends outruns the limit even on a busy 2-core machine (a whole participant
costs about 60 ms of CPU per message). Counted at the peer, from the SMTP inbox's Maildir (each
message's arrival time): the rate over the 60 s that follow the first 20 s of arrivals (N / 20 s
is longer, so the backlog is still there), the slowest and fastest 10-second stretch in it, and
nothing lost (messages, distinct recipients, ledger ``sent``).

Baseline: the same N sends without a rate limit: how fast the burst would hit the provider.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import select
from temporalio import workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.email import EmailActivities, EmailSend
from bench.harness import (
    EMAIL_SETTINGS,
    Crm,
    Options,
    PartResult,
    Server,
    bounded,
    dev_server,
    progress,
    seed_contacts,
    smtp_inbox,
    temp_database,
)
from bench.parts.email import email_flow
from models.database import session
from models.engine import Delivery
from models.flow import EmailSettings, Flow, SendEmail
from models.ledger import DeliveryOutcome
from models.sending import NO_SENDING_SETTINGS, RateLimits, SendingSettings, channel_task_queue
from peers.smtp_inbox import read_inbox
from testkit.peers import Inbox
from worker import CHANNEL_ACTIVITY_SLOTS, channel_workers
from workflows.steps import SEND_ACTIVITY

NAME = "ratelimit"
TITLE = "Provider rate limit held by Temporal (email channel task queue)"
DEFAULT_PARTICIPANTS = 2000
SENDERS = 40  # workflows that queue the sends, N / SENDERS each
LIMIT = 20.0  # messages per second
WARM_UP = 20.0  # seconds of arrivals left out before the measured window
WINDOW = 60.0  # seconds measured
STRETCH = 10.0  # the window's slowest and fastest stretch, seconds
TOLERANCE = 0.10

RATE = "messages/s at the peer over the 60 s window"
SLOWEST = "slowest 10 s stretch in the window"
FASTEST = "fastest 10 s stretch in the window"


@dataclass(frozen=True)
class Sends:
    channel_queue: str
    requests: list[EmailSend]


@workflow.defn(name="BenchQueuedSends")
class QueuedSendsWorkflow:
    """Schedules all its sends at once on the channel's task queue, as participants do."""

    @workflow.run
    async def run(self, sends: Sends) -> int:
        outcomes: list[DeliveryOutcome] = await asyncio.gather(
            *(
                workflow.execute_activity_method(
                    EmailActivities.send_email,
                    request,
                    **{**SEND_ACTIVITY, "task_queue": sends.channel_queue},
                )
                for request in sends.requests
            )
        )
        return sum(outcome.status == "sent" for outcome in outcomes)


def arrivals(inbox: Inbox) -> dict[str, float]:
    """When each message reached the SMTP server (its Maildir file's time), by Maildir key."""
    return {
        path.name: path.stat().st_mtime
        for folder in ("new", "cur")
        for path in (inbox.maildir / folder).glob("*")
    }


def window_rates(times: list[float]) -> tuple[float, float, float, float]:
    """The rate over the measured window, its slowest and fastest stretch, and the window's
    length (shorter than WINDOW when the arrivals end sooner)."""
    first, last = times[0], times[-1]
    start = first + min(WARM_UP, (last - first) / 4)
    end = min(start + WINDOW, last)
    length = max(end - start, 1e-9)
    inside = [t for t in times if start <= t < end]
    stretches = [
        sum(1 for t in inside if s <= t < s + STRETCH) / STRETCH
        for s in (start + i * STRETCH for i in range(int(length // STRETCH)))
    ] or [len(inside) / length]
    return len(inside) / length, min(stretches), max(stretches), length


async def send_all(
    server: Server,
    engine: Engine,
    crm: Crm,
    inbox: Inbox,
    prefix: str,
    sending: SendingSettings,
) -> dict[str, float]:
    """Queue one send per contact at once and wait until every one is done; what arrived at the
    peer meanwhile, and when."""
    flow = Flow.model_validate(email_flow(prefix))
    step = flow.steps[0]
    assert isinstance(step, SendEmail)
    settings = EmailSettings.model_validate(EMAIL_SETTINGS)
    requests = [
        EmailSend(
            delivery_key=f"{prefix}/{step.id}/{contact_id}",
            flow_id=flow.id,
            flow_name=flow.name,
            contact_id=contact_id,
            step=step,
            settings=settings,
        )
        for contact_id in crm.contact_ids
    ]
    task_queue = f"bench-{prefix}"
    channel_queue = channel_task_queue(task_queue, "email")
    email = EmailActivities(engine, inbox.settings)
    executor = ThreadPoolExecutor(max_workers=CHANNEL_ACTIVITY_SLOTS)
    (channel,) = channel_workers(server.client, task_queue, [email.send_email], sending, executor)
    senders = Worker(
        server.client,
        task_queue=task_queue,
        workflows=[QueuedSendsWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    before = set(arrivals(inbox))
    try:
        async with senders, channel:
            handles = [
                await server.client.start_workflow(
                    QueuedSendsWorkflow.run,
                    Sends(channel_queue, requests[index::SENDERS]),
                    id=f"{prefix}-{index}",
                    task_queue=task_queue,
                )
                for index in range(SENDERS)
            ]
            await bounded(asyncio.gather(*(h.result() for h in handles)), "sending")
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    return {key: at for key, at in arrivals(inbox).items() if key not in before}


def lost(
    engine: Engine, inbox: Inbox, prefix: str, count: int, arrived: dict[str, float]
) -> list[str]:
    """What did not arrive exactly once: notes, none when nothing was lost."""
    recipients = Counter(m.recipients for m in read_inbox(inbox.maildir) if m.key in arrived)
    with session(engine) as db:
        statuses = Counter(
            status
            for key, status in db.exec(select(Delivery.key, Delivery.status)).all()
            if key.startswith(f"{prefix}/")
        )
    notes = []
    if len(arrived) != count or len(recipients) != count:
        notes.append(
            f"{prefix}: {len(arrived)} messages to {len(recipients)} recipients of {count}"
        )
    if statuses["sent"] != count:
        notes.append(f"{prefix}: ledger {dict(statuses)}, {count} sends")
    return notes


async def run(options: Options) -> PartResult:
    count = options.participants or DEFAULT_PARTICIPANTS
    result = PartResult(
        NAME,
        TITLE,
        engine_label=(
            f"{count} send_email activities queued at once by {SENDERS} workflows on the email "
            f"channel's task queue, limited to {LIMIT:g} msg/s (the sending settings' "
            "rate_limits.email)"
        ),
        baseline_label=f"the same {count} sends without a rate limit",
        parameters={"participants": count, "rounds": options.rounds, "limit": LIMIT},
    )
    limited = SendingSettings(rate_limits=RateLimits(email=LIMIT))
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        crm = seed_contacts(engine, count)
        with smtp_inbox(directory) as inbox:
            async with dev_server() as server:
                for index in range(options.rounds):
                    for side in ("engine", "baseline"):
                        progress(f"ratelimit round {index + 1}/{options.rounds}: {side}")
                        flow_id = f"bench-ratelimit-{side}-{index}"
                        sending = limited if side == "engine" else NO_SENDING_SETTINGS
                        arrived = await send_all(server, engine, crm, inbox, flow_id, sending)
                        result.notes += lost(engine, inbox, flow_id, count, arrived)
                        times = sorted(arrived.values())
                        rate, slowest, fastest, length = window_rates(times)
                        for metric, value in ((RATE, rate), (SLOWEST, slowest), (FASTEST, fastest)):
                            getattr(result.row(metric, "msg/s"), side).append(value)
                        getattr(result.row("window measured", "s"), side).append(length)
                        getattr(result.row("all sends, first to last arrival", "s"), side).append(
                            times[-1] - times[0]
                        )
                        if side == "engine" and abs(rate - LIMIT) > TOLERANCE * LIMIT:
                            result.notes.append(
                                f"{flow_id}: {rate:.2f} msg/s, outside {LIMIT:g} ± {TOLERANCE:.0%}"
                            )
        engine.dispose()
    return result
