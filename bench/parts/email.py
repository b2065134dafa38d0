"""Email throughput: participants through a one-email flow against a plain send loop and against
plain Temporal workflows that each send the same message.

Engine: N contacts enrolled in ``send_email → finish``; the clock runs from the first start
request until every participant workflow has closed. Baselines, on the same server and inbox:
- the same N messages (same headers and body) handed to the SMTP server by aiosmtplib, one
  connection per message as the activity does, with as many in flight as the worker has activity
  slots (the raw loop: no Temporal at all);
- N plain workflows (unsandboxed runner) that each send the message in one activity, started by
  the same kind of loop as enrollment's: the cost floor of one workflow per contact;
- the same with the send in a local activity.
"""

from __future__ import annotations

import asyncio
import tempfile
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy import Engine

from bench.baseline import PlainEmail, PlainEmailWorkflow, baseline_worker
from bench.harness import (
    BASELINE_ACTIVITY_SLOTS,
    EMAIL_SETTINGS,
    Crm,
    Options,
    PartResult,
    Server,
    alternate,
    bounded,
    dev_server,
    engine_activities,
    enroll_and_finish,
    gather_limited,
    progress,
    results_of,
    seed_contacts,
    smtp_inbox,
    temp_database,
)
from control.enrollment import START_CONCURRENCY
from testkit.peers import Inbox

NAME = "email"
TITLE = "Email throughput"
DEFAULT_PARTICIPANTS = 200
SUBJECT = "Hello [[customer.firstname]]"
TEXT = "Hi [[customer.firstname]],\n\nThis is the benchmark's message.\n\nThe bench team"


def email_flow(flow_id: str) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": "Bench: one email",
        "email": EMAIL_SETTINGS,
        "start": "mail",
        "steps": [
            {"id": "mail", "type": "send_email", "subject": SUBJECT, "text": TEXT, "next": "done"},
            {"id": "done", "type": "finish"},
        ],
    }


async def engine_round(
    server: Server, engine: Engine, crm: Crm, inbox: Inbox, flow_id: str, result: PartResult
) -> None:
    activities = engine_activities(engine, inbox.settings)
    before = inbox.count()
    usage, _ = await enroll_and_finish(
        server, engine, crm.contact_ids, email_flow(flow_id), activities
    )
    delivered = inbox.count() - before
    if delivered != len(crm.contact_ids):
        result.notes.append(f"{flow_id}: {delivered} of {len(crm.contact_ids)} delivered")
    for metric in (RAW_LOOP, PLAIN, PLAIN_LOCAL):
        result.row(metric, "msg/s").engine.append(delivered / usage.wall)
    result.add_usage("engine", usage, delivered, "message")


RAW_LOOP = "messages/s (baseline: the raw aiosmtplib loop)"
PLAIN = "messages/s (baseline: plain workflows, one activity each)"
PLAIN_LOCAL = "messages/s (baseline: plain workflows, one local activity each)"


def plain_message(contact_id: int, index: int) -> EmailMessage:
    """What the send_email activity builds for a seeded contact, headers and body alike."""
    first = f"Bench{contact_id}"
    message = EmailMessage()
    message["From"] = Address(display_name="Bench", addr_spec="news@bench.example.com")
    message["To"] = Address(display_name=f"{first} Contact", addr_spec=_address(contact_id))
    message["Subject"] = SUBJECT.replace("[[customer.firstname]]", first)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<baseline-{index}-{contact_id}@flows.local>"
    message.set_content(TEXT.replace("[[customer.firstname]]", first))
    return message


def _address(contact_id: int) -> str:
    return f"contact{contact_id}@bench.example.org"


async def baseline_round(
    server: Server, crm: Crm, inbox: Inbox, index: int, result: PartResult
) -> None:
    gate = asyncio.Semaphore(BASELINE_ACTIVITY_SLOTS)

    async def send(contact_id: int) -> None:
        async with gate:
            await aiosmtplib.send(
                plain_message(contact_id, index),
                hostname=inbox.settings.host,
                port=inbox.port,
                sender="news@bench.example.com",
                recipients=[_address(contact_id)],
                start_tls=False,
                timeout=60,
            )

    before = inbox.count()
    with server.meter.section() as usage:
        await bounded(asyncio.gather(*(send(c) for c in crm.contact_ids)), "plain sends")
    delivered = inbox.count() - before
    result.row(RAW_LOOP, "msg/s").baseline.append(delivered / usage().wall)
    result.add_usage("baseline", usage(), delivered, "message")


async def plain_round(
    server: Server, crm: Crm, inbox: Inbox, index: int, result: PartResult, *, local: bool
) -> None:
    kind = "local" if local else "activity"
    task_queue = f"bench-plain-email-{kind}-{index}"
    client = server.client

    def starter(contact_id: int) -> Any:
        first = f"Bench{contact_id}"
        email = PlainEmail(
            host=inbox.settings.host,
            port=inbox.port,
            sender="news@bench.example.com",
            recipient=_address(contact_id),
            display_name=f"{first} Contact",
            subject=SUBJECT.replace("[[customer.firstname]]", first),
            text=TEXT.replace("[[customer.firstname]]", first),
            message_id=f"<plain-{kind}-{index}-{contact_id}@flows.local>",
            local=local,
        )
        return lambda: client.start_workflow(
            PlainEmailWorkflow.run, email, id=f"{task_queue}-{contact_id}", task_queue=task_queue
        )

    before = inbox.count()
    async with baseline_worker(client, task_queue, BASELINE_ACTIVITY_SLOTS):
        with server.meter.section() as usage:
            ids = [f"{task_queue}-{c}" for c in crm.contact_ids]
            await bounded(
                gather_limited(START_CONCURRENCY, map(starter, crm.contact_ids)), "starting"
            )
            await results_of(client, ids)
    delivered = inbox.count() - before
    figures = usage()
    result.row(PLAIN_LOCAL if local else PLAIN, "msg/s").baseline.append(delivered / figures.wall)
    label = "plain workflows, local activity" if local else "plain workflows, activity"
    for metric, value in (
        ("server CPU per message", figures.server_cpu * 1000 / delivered),
        ("Python CPU per message", figures.python_cpu * 1000 / delivered),
    ):
        result.row(f"{label}: {metric}", "CPU ms").baseline.append(value)


async def run(options: Options) -> PartResult:
    count = options.participants or DEFAULT_PARTICIPANTS
    result = PartResult(
        NAME,
        TITLE,
        engine_label=f"{count} participants through send_email → finish (enroll + worker)",
        baseline_label=(
            f"{count} aiosmtplib sends of the same messages, {BASELINE_ACTIVITY_SLOTS} in flight;"
            f" {count} plain workflows sending each in one activity (and in a local activity)"
        ),
        parameters={"participants": count, "rounds": options.rounds},
    )
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        directory = Path(scratch)
        engine = temp_database(directory)
        crm = seed_contacts(engine, count)
        with smtp_inbox(directory) as inbox:
            async with dev_server() as server:
                for index in range(options.rounds):
                    sides = [*alternate(index), "plain", "plain-local"]
                    if index % 2:
                        sides.reverse()
                    for side in sides:
                        progress(f"email round {index + 1}/{options.rounds}: {side}")
                        if side == "engine":
                            flow_id = f"bench-email-{index}"
                            await engine_round(server, engine, crm, inbox, flow_id, result)
                        elif side == "baseline":
                            await baseline_round(server, crm, inbox, index, result)
                        else:
                            local = side == "plain-local"
                            await plain_round(server, crm, inbox, index, result, local=local)
        engine.dispose()
    return result
