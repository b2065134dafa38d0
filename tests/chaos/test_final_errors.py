"""Final answers take the documented path and leave no participant stuck.

README, "Sends": final answers (hard bounce, invalid number, opted out) are outcomes the
participant moves on with, recorded in the ledger and its trail, never retried; spec §3 (send_sms):
with "exit the flow if no mobile number" a contact without one leaves as Dropped out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import select
from temporalio.client import Client

from control.enrollment import enroll
from models.crm import Contact
from models.database import session
from models.engine import Delivery, ParticipantStatus
from peers.smtp_inbox import MaildirHandler
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox
from testkit.processes import WorkerProcess
from testkit.servers import free_port
from tests.chaos.conftest import (
    SENDER,
    Database,
    add_contacts,
    all_left,
    contact_addresses,
    deploy,
    email_recipients,
    final_states,
    sms_recipients,
    worker_settings,
)

pytestmark = pytest.mark.chaos

BOUNCE = "550 5.1.1 <{}>: no such user"


class BouncingInbox(MaildirHandler):
    """The SMTP inbox, with mailboxes that do not exist: a hard bounce at RCPT."""

    def __init__(self, maildir: Path, unknown: set[str]) -> None:
        super().__init__(maildir)
        self.unknown = unknown

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.unknown:
            return BOUNCE.format(address)
        envelope.rcpt_tos.append(address)
        return "250 OK"


FLOW = {
    "id": "finals",
    "name": "Final answers",
    "time_zone": "UTC",
    "email": {"from": {"address": SENDER}},
    "sms_sender": "Finals",
    "start": "mail",
    "steps": [
        {"id": "mail", "type": "send_email", "subject": "Hi", "text": "Hi", "next": "sms"},
        {"id": "sms", "type": "send_sms", "text": "Hej", "exit_if_no_mobile": True, "next": "done"},
        {"id": "done", "type": "finish"},
    ],
}


async def test_bounces_bad_numbers_and_opt_outs_move_participants_on(
    tmp_path: Path,
    temporal_server: Client,
    database: Database,
    twilio_api: TwilioApiServer,
    task_queue: str,
) -> None:
    engine = database.engine
    everyone = add_contacts(engine, 6)
    fine, bounced, invalid, opted_out, no_mobile, no_consent = everyone
    with session(engine) as db:  # the CRM side of the final answers
        without_mobile, without_consent = db.get(Contact, no_mobile), db.get(Contact, no_consent)
        assert without_mobile is not None and without_consent is not None
        without_mobile.mobile, without_consent.consents = None, []
        db.add_all([without_mobile, without_consent])
    addresses = contact_addresses(engine, everyone)
    twilio_api.reject_number(addresses[invalid][1], code=21211)  # not a valid To
    twilio_api.reject_number(addresses[opted_out][1], code=21610)  # replied STOP

    inbox = Inbox(free_port(), tmp_path / "mail")
    bouncing = BouncingInbox(inbox.maildir, {addresses[bounced][0]})
    controller = Controller(bouncing, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    address = temporal_server.service_client.config.target_host
    worker = WorkerProcess(
        worker_settings(address, task_queue, database, inbox, twilio_api), tmp_path / "worker.log"
    )
    try:
        await worker.restart()
        flow_id = deploy(engine, FLOW)
        report = await enroll(temporal_server, engine, flow_id, everyone, task_queue=task_queue)
        assert sorted(report.enrolled) == sorted(everyone), report.refused
        await all_left(engine, flow_id, len(everyone), timeout=60)
        states = await final_states(temporal_server, flow_id, everyone)
    finally:
        worker.stop()
        controller.stop()

    def outcomes(contact_id: int) -> list[str]:
        return [visit.outcome for visit in states[contact_id].trail]

    assert outcomes(fine)[0] == "email sent: 250 OK" or outcomes(fine)[0].startswith("email sent")
    assert outcomes(fine)[1].startswith("sms sent")
    assert outcomes(bounced)[0].startswith("email bounced: 550 5.1.1"), outcomes(bounced)
    assert outcomes(bounced)[1].startswith("sms sent"), outcomes(bounced)
    assert outcomes(invalid)[1].startswith("sms failed: Twilio 400 21211"), outcomes(invalid)
    assert outcomes(opted_out)[1].startswith("sms failed: Twilio 400 21610"), outcomes(opted_out)
    assert outcomes(no_consent)[0] == "email skipped: no consent for emarketing"
    for contact_id in (fine, bounced, invalid, opted_out, no_consent):
        assert states[contact_id].status is ParticipantStatus.finished, outcomes(contact_id)
    assert states[no_mobile].status is ParticipantStatus.dropped_out, outcomes(no_mobile)
    assert states[no_mobile].drop_out_reason == "no mobile number"

    # Final answers are never retried: one request for each rejected number, one delivery row
    # per send, and at the peers only what could be delivered.
    with session(engine) as db:
        rows = db.exec(select(Delivery.channel, Delivery.status)).all()
    assert sorted(rows) == sorted(
        [("email", "sent")] * 4
        + [("email", "bounced"), ("email", "skipped")]
        + [("sms", "sent")] * 3
        + [("sms", "failed")] * 2
        + [("sms", "skipped")]
    )
    assert twilio_api.attempts == 5
    assert sorted(email_recipients(inbox)) == sorted(
        addresses[c][0] for c in (fine, invalid, opted_out, no_mobile)
    )
    assert sorted(sms_recipients(twilio_api)) == sorted(
        addresses[c][1] for c in (fine, bounced, no_consent)
    )
