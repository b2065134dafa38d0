"""The dry run's message stand-ins answer as the real activities do: the same skips, failures and
final errors for the same contacts, on the same demo CRM. The real ones run against a real SMTP
server and a real Twilio-compatible endpoint; the stand-ins send nothing."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities, EmailNotify, EmailSend
from activities.sms import SmsActivities, SmsNotify, SmsSend
from control.dry_run.stand_ins import NOT_SENT, Capture
from models.crm import Contact
from models.database import session
from models.flow import EmailSettings, NotifyEmail, NotifySms, Recipients, SendEmail, SendSms
from models.ledger import DeliveryOutcome, DeliveryStatus
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox, twilio_settings

KARIN, LARS, EMILY, OLIVER, JOHAN, NOBODY = 1, 2, 3, 4, 8, 999_999
SETTINGS = EmailSettings.model_validate(
    {"subscription_type": "newsletter", "from": {"address": "news@nordlys.example"}}
)
Outcomes = DeliveryOutcome | list[DeliveryOutcome]


@pytest.fixture
def pair(
    engine: Engine, smtp_inbox: Inbox, twilio_api: TwilioApiServer
) -> tuple[Capture, EmailActivities, SmsActivities]:
    with session(engine) as db:  # a number no country has
        contact = db.get(Contact, OLIVER)
        assert contact is not None
        contact.mobile = "12"
        db.add(contact)
    twilio = twilio_settings(twilio_api)
    return (
        Capture(engine, sms_region=twilio.default_region),
        EmailActivities(engine, smtp_inbox.settings),
        SmsActivities(engine, twilio),
    )


async def outcome_of(run: Callable[[Any], Outcomes | Awaitable[Outcomes]], request: Any) -> Any:
    """The activity's outcome(s) without what only a real hand-over has; or the final error."""
    try:
        if inspect.iscoroutinefunction(run):
            answered = await ActivityEnvironment().run(run, request)
        else:  # the real email activities are synchronous: the worker runs them on threads
            answered = await asyncio.to_thread(ActivityEnvironment().run, run, request)
    except ApplicationError as error:
        return ("error", error.type, error.message, error.non_retryable)
    outcomes = answered if isinstance(answered, list) else [answered]
    return [(o.key, o.channel, o.recipient, o.status, _detail(o)) for o in outcomes]


def _detail(outcome: DeliveryOutcome) -> str | None:
    # A sent email's detail is the SMTP server's answer, which a stand-in cannot know.
    if outcome.channel == "email" and outcome.status is DeliveryStatus.sent:
        assert outcome.detail == NOT_SENT or (outcome.detail or "").startswith("250")
        return "sent"
    return outcome.detail


def email(contact_id: int, key: str, settings: bool = True, **fields: Any) -> EmailSend:
    step = SendEmail.model_validate(
        {"id": "mail", "type": "send_email", "next": "done", "subject": "Hi", "text": "Hello"}
        | fields
    )
    return EmailSend(
        delivery_key=key,
        flow_id="f",
        flow_name="F",
        contact_id=contact_id,
        step=step,
        settings=SETTINGS if settings else None,
    )


def sms(contact_id: int, key: str, sender: str | None = "Nordlys", text: str = "Hej") -> SmsSend:
    step = SendSms(id="text", type="send_sms", next="done", text=text)
    return SmsSend(
        delivery_key=key, flow_id="f", contact_id=contact_id, step=step, default_sender=sender
    )


@pytest.mark.parametrize(
    ("case", "request_for"),
    [
        ("no contact", lambda: email(NOBODY, "e1")),
        ("no settings", lambda: email(KARIN, "e2", settings=False)),
        ("no mailings", lambda: email(OLIVER, "e3")),
        ("no consent", lambda: email(JOHAN, "e4")),
        ("unknown tag", lambda: email(KARIN, "e5", text="Hello [[nope.tag]]")),
        ("sent", lambda: email(KARIN, "e6")),
    ],
)
async def test_send_email(
    pair: tuple[Capture, EmailActivities, SmsActivities],
    case: str,
    request_for: Callable[[], EmailSend],
) -> None:
    stand_in, real, _ = pair
    request = request_for()
    assert await outcome_of(stand_in.send_email, request) == await outcome_of(
        real.send_email, request
    ), case


@pytest.mark.parametrize(
    ("case", "request_for"),
    [
        ("no contact", lambda: sms(NOBODY, "s1")),
        ("no mobile", lambda: sms(LARS, "s2")),
        ("invalid mobile", lambda: sms(OLIVER, "s3")),
        ("no sender", lambda: sms(KARIN, "s4", sender=None)),
        ("unknown tag", lambda: sms(KARIN, "s5", text="Hej [[nope.tag]]")),
        ("sent", lambda: sms(KARIN, "s6")),
    ],
)
async def test_send_sms(
    pair: tuple[Capture, EmailActivities, SmsActivities],
    case: str,
    request_for: Callable[[], SmsSend],
) -> None:
    stand_in, _, real = pair
    request = request_for()
    assert await outcome_of(stand_in.send_sms, request) == await outcome_of(
        real.send_sms, request
    ), case


@pytest.mark.parametrize("contact_id", [EMILY, NOBODY])
async def test_notify_email(
    pair: tuple[Capture, EmailActivities, SmsActivities], contact_id: int
) -> None:
    stand_in, real, _ = pair
    # Emily's contact is James; her service contact is Sofia. One address is James's again,
    # one is no address at all.
    to = Recipients(
        our_contact=True,
        our_service_contact=True,
        addresses=["james.carter@example.com", "not an address"],
    )
    step = NotifyEmail(id="tell", type="notify_email", next="done", to=to, subject="S", text="T")
    request = EmailNotify(
        delivery_key=f"n-{contact_id}",
        flow_id="f",
        contact_id=contact_id,
        step=step,
        sender="flows@nordlys.example",
    )
    assert await outcome_of(stand_in.notify_email, request) == await outcome_of(
        real.notify_email, request
    )


@pytest.mark.parametrize("contact_id", [EMILY, NOBODY])
async def test_notify_sms(
    pair: tuple[Capture, EmailActivities, SmsActivities], contact_id: int
) -> None:
    stand_in, _, real = pair
    # Emily's service contact (Sofia) has no mobile; James's number is listed again; "12" is no
    # number at all.
    to = Recipients(our_contact=True, our_service_contact=True, addresses=["+447700900001", "12"])
    step = NotifySms(id="tell", type="notify_sms", next="done", to=to, text="Hej")
    request = SmsNotify(
        delivery_key=f"n-{contact_id}",
        flow_id="f",
        contact_id=contact_id,
        step=step,
        default_sender="Nordlys",
    )
    assert await outcome_of(stand_in.notify_sms, request) == await outcome_of(
        real.notify_sms, request
    )
