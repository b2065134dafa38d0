"""Fault tests: the worker and the Temporal server as real processes, real SMTP and SMS peers.

What a test needs to break things for real: a dev server with a database file, ``python
worker.py`` pointed at it, the test's SQLite database, the SMTP inbox and the Twilio API. What it
counts is what the peers received, never only the ledger.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus

from control.flows import deploy_flow
from models.crm import Contact
from models.database import get_engine, session
from models.engine import Delivery, Participant, ParticipantStatus
from models.ledger import DeliveryStatus
from models.participant import ParticipantState, participant_workflow_id
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox
from testkit.processes import TemporalServer, WorkerProcess, worker_environment
from testkit.waiting import assert_eventually

SENDER = "news@example.com"


@pytest.fixture(scope="package")
async def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """One dev server with a database file for the fault tests that do not restart it."""
    folder = tmp_path_factory.mktemp("temporal")
    server = TemporalServer(folder / "temporal.db", folder / "temporal.log")
    server.start()
    try:
        yield await server.client()
    finally:
        server.stop()


@dataclass(frozen=True)
class Database:
    url: str
    engine: Engine


@pytest.fixture
def database(tmp_path: Path, sqlite_templates: dict[str, Path]) -> Iterator[Database]:
    """A migrated SQLite file that this test and its worker process share."""
    path = tmp_path / "flows.db"
    shutil.copyfile(sqlite_templates["empty"], path)
    url = f"sqlite:///{path}"
    engine = get_engine(url)
    try:
        yield Database(url, engine)
    finally:
        engine.dispose()


def worker_settings(
    address: str, task_queue: str, database: Database, inbox: Inbox, sms: TwilioApiServer
) -> dict[str, str]:
    """``python worker.py``'s environment, pointed at this test's peers; SMTP commands time out
    after 10 s, so the outage tests see a hung server give up quickly."""
    return worker_environment(address, task_queue, database.url, inbox, sms.url, smtp_timeout=10)


@pytest.fixture
async def worker(
    tmp_path: Path,
    temporal_server: Client,
    task_queue: str,
    database: Database,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> AsyncIterator[WorkerProcess]:
    """``python worker.py`` against the package's dev server, polling when the test starts."""
    address = temporal_server.service_client.config.target_host
    settings = worker_settings(address, task_queue, database, smtp_inbox, twilio_api)
    process = WorkerProcess(settings, tmp_path / "worker.log")
    process.start()
    try:
        await process.polling()
        yield process
    finally:
        process.stop()


# --- the crowd ---------------------------------------------------------------------------------


def mobile_number(index: int) -> str:
    """A valid Swedish mobile number per contact, already in E.164."""
    return f"+4670{index:07d}"


def add_contacts(engine: Engine, count: int, **fields: Any) -> list[int]:
    """``count`` contacts that may be mailed and texted: an address, a mobile, consent."""
    with session(engine) as db:
        first = db.exec(select(func.count()).select_from(Contact)).one()
        contacts = [
            Contact(
                first_name=f"Person{first + n}",
                last_name="Chaos",
                email=f"person{first + n}@example.com",
                mobile=mobile_number(first + n),
                consents=[{"purpose": "emarketing", "legal_basis": "consent"}],
                **fields,
            )
            for n in range(count)
        ]
        db.add_all(contacts)
        db.flush()
        ids = [contact.id for contact in contacts]
    assert all(contact_id is not None for contact_id in ids)
    return [contact_id for contact_id in ids if contact_id is not None]


def local_time(after: timedelta) -> str:
    """A moment ``after`` from now as a local date-time in UTC, the flows' time zone here."""
    return (datetime.now(UTC) + after).replace(tzinfo=None, microsecond=0).isoformat()


def message_flow(flow_id: str, wake_at: str) -> dict[str, Any]:
    """Email, a real-clock wait until ``wake_at``, SMS, finish; no sending window."""
    return {
        "id": flow_id,
        "name": f"Chaos {flow_id}",
        "time_zone": "UTC",
        "email": {"from": {"address": SENDER, "name": "Chaos"}},
        "sms_sender": "Chaos",
        "start": "mail",
        "steps": [
            {
                "id": "mail",
                "type": "send_email",
                "subject": "Hello [[customer.firstname]]",
                "text": "Hi [[customer.firstname]], this is the email step.",
                "next": "pause",
            },
            {"id": "pause", "type": "wait_time", "mode": "until", "until": wake_at, "next": "sms"},
            {
                "id": "sms",
                "type": "send_sms",
                "text": "Hej [[customer.firstname]], this is the SMS step.",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }


def deploy(engine: Engine, document: dict[str, Any]) -> str:
    deployed = deploy_flow(engine, document)
    return deployed.flow_id


# --- what happened -----------------------------------------------------------------------------


def statuses(engine: Engine, flow_id: str) -> Counter[str]:
    with session(engine) as db:
        rows = db.exec(select(Participant.status).where(Participant.flow_id == flow_id)).all()
    return Counter(rows)


def waiting_at(engine: Engine, flow_id: str, step_id: str) -> int:
    """Participants on a timer at this step (the mirror records the wait before it starts)."""
    with session(engine) as db:
        count = db.exec(
            select(func.count())
            .select_from(Participant)
            .where(
                Participant.flow_id == flow_id,
                Participant.current_step == step_id,
                col(Participant.wait_until).is_not(None),
            )
        ).one()
    return int(count)


def ledger(engine: Engine) -> Counter[tuple[str, str]]:
    """Deliveries by (channel, status): for the failure message, never the verdict."""
    with session(engine) as db:
        rows = db.exec(select(Delivery.channel, Delivery.status)).all()
    return Counter((channel, status) for channel, status in rows)


def interrupted_sends(engine: Engine) -> set[int]:
    """Contacts with a send that a killed attempt left past its point of no return: the ledger's
    ``unconfirmed`` rows, keyed by participant (the run-chain id), step and visit."""
    with session(engine) as db:
        keys = db.exec(
            select(Delivery.key).where(Delivery.status == DeliveryStatus.unconfirmed.value)
        ).all()
        participants = {key.split("/", 1)[0] for key in keys}
        contacts = db.exec(
            select(Participant.contact_id).where(col(Participant.id).in_(participants))
        ).all()
    return set(contacts)


async def all_left(engine: Engine, flow_id: str, expected: int, timeout: float) -> None:
    """Wait until ``expected`` participants of the flow have left it (no one Active)."""

    def left(found: Counter[str]) -> bool:
        return sum(found.values()) == expected and not found[ParticipantStatus.active.value]

    try:
        await assert_eventually(
            lambda: asyncio.to_thread(statuses, engine, flow_id),
            timeout=timeout,
            interval=0.5,
            until=left,
            what=f"{expected} participants of {flow_id!r} left",
        )
    except AssertionError as stuck:
        ledger_now = dict(await asyncio.to_thread(ledger, engine))
        raise AssertionError(f"{stuck}; ledger: {ledger_now}") from None


async def final_states(
    client: Client, flow_id: str, contact_ids: list[int]
) -> dict[int, ParticipantState]:
    """Every participant's result, from Temporal itself: each workflow completed. (The
    participants table may say a participant left a moment before its workflow closes: the
    step before a finish records the departure.)"""

    async def one(contact_id: int) -> ParticipantState:
        workflow_id = participant_workflow_id(flow_id, contact_id)
        state = await client.get_workflow_handle(workflow_id, result_type=ParticipantState).result()
        assert isinstance(state, ParticipantState)
        description = await client.get_workflow_handle(workflow_id).describe()
        assert description.status is WorkflowExecutionStatus.COMPLETED, (contact_id, description)
        return state

    states = await asyncio.gather(*(one(contact_id) for contact_id in contact_ids))
    return dict(zip(contact_ids, states, strict=True))


def email_recipients(inbox: Inbox) -> Counter[str]:
    """Messages the SMTP server stored, per To address."""
    return Counter(_address(message.recipients) for message in inbox.messages())


def sms_recipients(sms: TwilioApiServer) -> Counter[str]:
    """Messages the SMS server accepted, per To number."""
    return Counter(str(message["to"]) for message in sms.messages)


def _address(header: str) -> str:
    return header.rsplit("<", 1)[-1].rstrip(">").strip().lower()


def contact_addresses(engine: Engine, contact_ids: list[int]) -> dict[int, tuple[str, str]]:
    with session(engine) as db:
        rows = db.exec(select(Contact).where(col(Contact.id).in_(contact_ids))).all()
    return {
        row.id: ((row.email or "").lower(), row.mobile or "") for row in rows if row.id is not None
    }
