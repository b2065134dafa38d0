"""A campaign's burst under overload: slower, never lost, never duplicated, nobody stranded.

Contacts are enrolled at once into ``send_email → finish`` against ``python worker.py`` at its
defaults, while a CPU burner takes one of the machine's cores and, in the middle of the burst,
another writer holds the database's write lock for 25 seconds. Sends then block on the database
at every step of the ledger (claim, the mark at the point of no return, the outcome), and the
worker is starved: what the test counts is at the SMTP server itself, exactly one message per
contact, every ledger row ``sent`` (none ``unconfirmed``), every participant Finished.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from temporalio.client import Client

from control.enrollment import enroll
from models.engine import ParticipantStatus
from testkit.faults import hold_write_lock
from testkit.peers import Inbox
from testkit.processes import WorkerProcess, cpu_burner
from tests.chaos.conftest import (
    SENDER,
    Database,
    add_contacts,
    all_left,
    contact_addresses,
    deploy,
    email_recipients,
    final_states,
    ledger,
)

pytestmark = pytest.mark.chaos

PARTICIPANTS = 300
LOCK_SECONDS = 25.0
FINISH_TIMEOUT = 480.0


def burst_flow(flow_id: str) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": f"Chaos {flow_id}",
        "time_zone": "UTC",
        "email": {"from": {"address": SENDER, "name": "Chaos"}},
        "start": "mail",
        "steps": [
            {
                "id": "mail",
                "type": "send_email",
                "subject": "Hello [[customer.firstname]]",
                "text": "Hi [[customer.firstname]], this is the campaign.",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }


async def test_a_burst_on_a_starved_worker_and_a_locked_database_loses_nothing(
    temporal_server: Client,
    worker: WorkerProcess,
    database: Database,
    smtp_inbox: Inbox,
    task_queue: str,
) -> None:
    engine = database.engine
    contacts = add_contacts(engine, PARTICIPANTS)
    flow_id = deploy(engine, burst_flow("burst"))

    started = time.monotonic()
    held = threading.Event()
    with cpu_burner():
        enrolling = asyncio.create_task(
            enroll(temporal_server, engine, flow_id, contacts, task_queue=task_queue)
        )
        # The lock falls in the middle of the burst: once a fifth of the mail is out.
        deadline = time.monotonic() + 240
        while (stored := smtp_inbox.count()) < PARTICIPANTS // 5:
            assert time.monotonic() < deadline, f"stuck at {stored} messages:\n{worker.tail()}"
            await asyncio.sleep(0.1)
        locker = threading.Thread(
            target=hold_write_lock, args=(engine, LOCK_SECONDS, held), daemon=True
        )
        locker.start()
        report = await enrolling
        assert sorted(report.enrolled) == sorted(contacts), report.refused
        await all_left(engine, flow_id, PARTICIPANTS, FINISH_TIMEOUT)
        locker.join()
    elapsed = time.monotonic() - started
    assert held.is_set()

    addresses = contact_addresses(engine, contacts)
    emails = email_recipients(smtp_inbox)
    lost = sorted(c for c, (mail, _) in addresses.items() if emails[mail] < 1)
    twice = sorted(c for c, (mail, _) in addresses.items() if emails[mail] > 1)
    log = worker.output()
    context = (
        f"ledger {dict(ledger(engine))}; finished in {elapsed:.0f} s; "
        f"workflow tasks over 5 s: {log.count('TMPRL1104')}, "
        f"timed out: {log.count('Task not found when completing')}"
    )
    assert not lost, f"contacts missing their email: {lost}; {context}"
    assert not twice, f"contacts with a duplicate: {twice}; {context}"
    assert emails.total() == PARTICIPANTS, context
    assert ledger(engine) == {("email", "sent"): PARTICIPANTS}, context

    states = await final_states(temporal_server, flow_id, contacts)
    assert {state.status for state in states.values()} == {ParticipantStatus.finished}, context
    print(context)
