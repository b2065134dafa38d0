"""A send cancelled at its point of no return is neither lost nor duplicated.

The email activity marks the ledger row ``sending`` just before the final dot of DATA. A
cancellation of the attempt (a heartbeat or start-to-close timeout, an ended flow) that lands in
between used to leave the row ``sending`` with the message never handed over: the retry read it as
``unconfirmed`` and sent nothing, so the contact never got the message. Here the database is held
by another writer while the attempt marks the row, the attempt is cancelled meanwhile, and a second
attempt with the same delivery key follows: the SMTP server must hold the message exactly once and
the outcome must say ``sent``: the cancelled attempt, past its mark, finishes the hand-over and
settles it before the cancellation is let through, and the second attempt finds that outcome.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import Engine, text
from sqlmodel import select
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.email import EmailActivities, EmailSend, SmtpSettings
from models.crm import Contact
from models.database import session
from models.engine import Delivery
from models.flow import EmailSettings, SendEmail
from models.ledger import DeliveryOutcome
from testkit.servers import free_port

HOLD_SECONDS = 6.0


@workflow.defn(sandboxed=False)
class CancelledThenRetried:
    """Starts a send, cancels it on request, then sends again with the same delivery key (what a
    retry or a participant continuing after a timeout does)."""

    def __init__(self) -> None:
        self._cancel = False

    @workflow.signal
    def cancel(self) -> None:
        self._cancel = True

    @workflow.run
    async def run(self, request: EmailSend) -> list[str]:
        options: dict[str, Any] = {
            "start_to_close_timeout": timedelta(seconds=60),
            "heartbeat_timeout": timedelta(seconds=3),
            "retry_policy": RetryPolicy(maximum_attempts=1),
        }
        first = workflow.start_activity(
            "send_email",
            request,
            result_type=DeliveryOutcome,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            **options,
        )
        await workflow.wait_condition(lambda: self._cancel or first.done())
        first.cancel()
        seen: list[str] = []
        try:
            seen.append((await first).status.value)
        except ActivityError as error:
            seen.append(type(error.cause).__name__)
        again: DeliveryOutcome = await workflow.execute_activity(
            "send_email", request, result_type=DeliveryOutcome, **options
        )
        seen.append(again.status.value + (" (settled before)" if again.already_settled else ""))
        return seen


class LockingInbox:
    """An SMTP server that, at the first RCPT, lets another writer take the database for a few
    seconds: the attempt then blocks in the ledger write at its point of no return."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.accepted: list[bytes] = []
        self.locked = threading.Event()
        self.released = threading.Event()

    def _hold(self) -> None:
        with self.engine.connect() as connection:
            if self.engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.begin()
                connection.execute(text(f"LOCK TABLE {Delivery.__tablename__} IN EXCLUSIVE MODE"))
            self.locked.set()
            time.sleep(HOLD_SECONDS)
            connection.rollback()
        self.released.set()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.locked.is_set():
            threading.Thread(target=self._hold, daemon=True).start()
            await asyncio.to_thread(self.locked.wait, 10)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append(envelope.content)
        return "250 OK queued"


def _request(engine: Engine) -> EmailSend:
    with session(engine) as db:
        contact = db.exec(select(Contact).where(Contact.first_name == "Karin")).one()
    assert contact.id is not None
    return EmailSend(
        delivery_key=f"cancelled/{uuid.uuid4()}/mail/1",
        flow_id="cancelled",
        flow_name="Cancelled",
        contact_id=contact.id,
        step=SendEmail(id="mail", type="send_email", next="done", subject="Hi", text="Hello"),
        settings=EmailSettings.model_validate(
            {
                "subscription_type": "newsletter",
                "from": {"kind": "address", "address": "news@flows.example.com"},
            }
        ),
    )


def _status(engine: Engine, key: str) -> str:
    with session(engine) as db:
        return db.exec(select(Delivery.status).where(Delivery.key == key)).one()


async def test_a_send_cancelled_at_its_point_of_no_return_is_sent_once(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client: Client = dev_env.client
    inbox = LockingInbox(engine)
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    activities = EmailActivities(engine, SmtpSettings(host="127.0.0.1", port=port))
    request = _request(engine)
    try:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[CancelledThenRetried],
            activities=[activities.send_email],
            activity_executor=ThreadPoolExecutor(4),
        ):
            handle = await client.start_workflow(
                CancelledThenRetried.run,
                request,
                id=f"cancel-{uuid.uuid4()}",
                task_queue=task_queue,
            )
            # The attempt reached RCPT; the database is held, and the attempt blocks marking its
            # row: cancel it there.
            assert await asyncio.to_thread(inbox.locked.wait, 30)
            await asyncio.sleep(1)
            await handle.signal(CancelledThenRetried.cancel)
            seen = await handle.result()
    finally:
        controller.stop()

    assert len(inbox.accepted) == 1, (seen, len(inbox.accepted))
    # The cancelled attempt finished its hand-over and settled it; the second found that.
    assert seen == [CancelledError.__name__, "sent (settled before)"], seen
    assert await asyncio.to_thread(_status, engine, request.delivery_key) == "sent"
