"""SIGKILL the worker at random moments while 200 participants send email and SMS; restart it.

Every participant finishes, and the peers hold exactly one email and one SMS per contact: zero
lost, zero duplicates, counted at the SMTP server and the SMS server themselves.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta

import pytest
from temporalio.client import Client

from control.enrollment import enroll
from models.engine import ParticipantStatus
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox
from testkit.processes import WorkerProcess
from tests.chaos.conftest import (
    Database,
    add_contacts,
    all_left,
    contact_addresses,
    deploy,
    email_recipients,
    final_states,
    ledger,
    local_time,
    message_flow,
    sms_recipients,
)

pytestmark = pytest.mark.chaos

PARTICIPANTS = 200
KILLS = 4
SEED = 7  # the kill moments are random, and the same on every run
# A killed worker's in-flight sends come back when their start-to-close timeout (2 minutes)
# expires, then wait out the retry backoff: the run must outlast that.
FINISH_TIMEOUT = 300.0


async def test_sigkilled_workers_lose_and_duplicate_no_message(
    temporal_server: Client,
    worker: WorkerProcess,
    database: Database,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
    task_queue: str,
) -> None:
    rng = random.Random(SEED)
    engine = database.engine
    contacts = add_contacts(engine, PARTICIPANTS)
    # Everyone sends the email, waits on a real-clock timer, then sends the SMS.
    flow_id = deploy(engine, message_flow("kill", local_time(timedelta(seconds=12))))
    total = 2 * PARTICIPANTS
    # Kill when the peers have received these many messages, plus a random fraction of a second:
    # random moments, spread over the email and the SMS bursts whatever the machine's speed.
    thresholds = sorted(rng.sample(range(total // 20, total - total // 20), KILLS))
    delays = [rng.uniform(0.0, 0.3) for _ in thresholds]
    restarts = [rng.uniform(0.0, 1.0) for _ in thresholds]

    def delivered() -> int:
        # Maildir files counted, not parsed: this runs every 50 ms on the machine under test.
        return smtp_inbox.count() + len(twilio_api.messages)

    started = time.monotonic()
    enrolling = asyncio.create_task(
        enroll(temporal_server, engine, flow_id, contacts, task_queue=task_queue)
    )
    killed_at: list[str] = []  # "messages delivered @ seconds since the start", for the report
    for threshold, delay, restart in zip(thresholds, delays, restarts, strict=True):
        deadline = time.monotonic() + 180
        while delivered() < threshold:
            assert time.monotonic() < deadline, f"stuck at {delivered()} messages:\n{worker.tail()}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(delay)
        count = delivered()
        killed_at.append(f"{count}@{time.monotonic() - started:.1f}s")
        worker.kill()
        await asyncio.sleep(restart)
        await worker.restart()
    report = await enrolling
    assert sorted(report.enrolled) == sorted(contacts), report.refused

    await all_left(engine, flow_id, PARTICIPANTS, FINISH_TIMEOUT)
    elapsed = time.monotonic() - started

    addresses = contact_addresses(engine, contacts)
    emails, texts = email_recipients(smtp_inbox), sms_recipients(twilio_api)
    lost = sorted(c for c, (mail, sms) in addresses.items() if emails[mail] < 1 or texts[sms] < 1)
    twice = sorted(c for c, (mail, sms) in addresses.items() if emails[mail] > 1 or texts[sms] > 1)
    context = (
        f"killed at {killed_at} of {total} messages; ledger {dict(ledger(engine))}; "
        f"finished in {elapsed:.0f} s"
    )
    assert not lost, f"contacts missing a message: {lost}; {context}"
    assert not twice, f"contacts with a duplicate: {twice}; {context}"
    assert emails.total() == PARTICIPANTS and texts.total() == PARTICIPANTS, context
    assert len(killed_at) == KILLS, context

    states = await final_states(temporal_server, flow_id, contacts)
    assert {state.status for state in states.values()} == {ParticipantStatus.finished}, context
    print(context)
