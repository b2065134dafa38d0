"""Stop the Temporal server mid-run and start it again: waiting participants resume.

The server keeps its state in a database file, as `make run`'s does. While it is down the worker
keeps trying to poll; when it is back, the participants' timers fire and they send their SMS,
each exactly once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control.enrollment import enroll
from models.engine import ParticipantStatus
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox
from testkit.processes import TemporalServer, WorkerProcess
from testkit.waiting import assert_eventually
from tests.chaos.conftest import (
    Database,
    add_contacts,
    all_left,
    contact_addresses,
    deploy,
    email_recipients,
    final_states,
    local_time,
    message_flow,
    sms_recipients,
    waiting_at,
    worker_settings,
)

pytestmark = pytest.mark.chaos

PARTICIPANTS = 20  # the point is resuming, not scale: the kill test has 200
DOWN_FOR = 5.0  # seconds with no Temporal server at all
WAIT = timedelta(seconds=30)  # outlasts the emails, the stop and the restart


async def test_participants_waiting_through_a_server_restart_resume(
    tmp_path: Path,
    database: Database,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
    task_queue: str,
) -> None:
    server = TemporalServer(tmp_path / "temporal.db", tmp_path / "temporal.log")
    worker: WorkerProcess | None = None
    server.start()
    try:
        client = await server.client()
        worker = WorkerProcess(
            worker_settings(server.address, task_queue, database, smtp_inbox, twilio_api),
            tmp_path / "worker.log",
        )
        await worker.restart()
        engine = database.engine
        contacts = add_contacts(engine, PARTICIPANTS)
        wake_at = datetime.now(UTC) + WAIT
        flow_id = deploy(engine, message_flow("restart", local_time(WAIT)))
        report = await enroll(client, engine, flow_id, contacts, task_queue=task_queue)
        assert sorted(report.enrolled) == sorted(contacts), report.refused

        # Everyone has had the email and waits on its timer: now the server goes away.
        await assert_eventually(
            lambda: asyncio.to_thread(waiting_at, engine, flow_id, "pause"),
            timeout=60,
            interval=0.2,
            until=lambda waiting: waiting == PARTICIPANTS,
            what="every participant waiting at 'pause'",
        )
        server.stop()
        stopped = time.monotonic()
        await asyncio.sleep(DOWN_FOR)
        assert worker.running, f"the worker gave up without a server:\n{worker.tail()}"
        server.start()
        client = await server.client()
        back_after = time.monotonic() - stopped
        assert datetime.now(UTC) < wake_at, "the server came back after the timers were due"

        await all_left(engine, flow_id, PARTICIPANTS, timeout=90)
        states = await final_states(client, flow_id, contacts)
        assert {s.status for s in states.values()} == {ParticipantStatus.finished}
        # Resumed by the timer itself, not earlier: each entered the SMS step after waking.
        assert all(
            next(v.entered_at for v in s.trail if v.step == "sms") >= wake_at - timedelta(seconds=1)
            for s in states.values()
        )
        emails, texts = email_recipients(smtp_inbox), sms_recipients(twilio_api)
        for contact, (mail, mobile) in contact_addresses(engine, contacts).items():
            assert (emails[mail], texts[mobile]) == (1, 1), contact
        assert emails.total() == texts.total() == PARTICIPANTS
        print(f"server down for {back_after:.1f} s; {PARTICIPANTS} participants resumed")
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
