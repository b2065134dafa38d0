"""SIGKILL the worker at random moments while 200 participants send email and SMS; restart it.

Every participant finishes, and the peers hold at most one email and one SMS per contact, counted
at the SMTP server and the SMS server themselves: zero duplicates, and nothing lost but what the
ledger's at-most-once rule for email allows. A kill that falls between a send's `sending` mark
committing and its final dot leaves a message the server never got and the retry may not resend
(SMTP cannot be asked whether it has it); that stretch is the tail of one commit, so a run loses
at most one email that way, and the ledger says so.
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
    interrupted_sends,
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
    lost = sorted(c for c, (mail, _) in addresses.items() if emails[mail] < 1)
    twice = sorted(c for c, (mail, sms) in addresses.items() if emails[mail] > 1 or texts[sms] > 1)
    context = (
        f"killed at {killed_at} of {total} messages; ledger {dict(ledger(engine))}; "
        f"finished in {elapsed:.0f} s"
    )
    assert not twice, f"contacts with a duplicate: {twice}; {context}"
    # An SMS retry asks the provider what it has: none is lost.
    assert texts.total() == PARTICIPANTS, context
    # An email lost to a kill at its point of no return is on record as interrupted, not silent.
    interrupted = interrupted_sends(engine)
    unrecorded = [c for c in lost if c not in interrupted]
    assert not unrecorded, f"emails lost without a record: {unrecorded}; {context}"
    assert len(lost) <= 1, f"contacts missing an email: {lost}; {context}"
    assert emails.total() == PARTICIPANTS - len(lost), context
    assert len(killed_at) == KILLS, context

    states = await final_states(temporal_server, flow_id, contacts)
    assert {state.status for state in states.values()} == {ParticipantStatus.finished}, context
    print(context)
