"""SMS only to mobile numbers, and never longer than the longest SMS sent: checked by validation
for what the flow document says, and by the send for what merge tags and contact data make of
it, against the local Twilio-compatible API (a refusal never reaches it)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.sms import NOT_MOBILE, SmsActivities, SmsNotify, SmsSend
from models.crm import Associate, Contact
from models.database import session
from models.engine import ParticipantStatus
from models.flow import NotifySms, Recipients, SendSms
from models.ledger import DeliveryOutcome, DeliveryStatus
from models.sms import MAX_CHARACTERS, is_mobile, number_kind
from models.validation import FlowReport, check_flow
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox, twilio_settings
from tests.test_participant import flow_of, start
from worker import activities_for, build_worker

MOBILE = "070-123 45 67"
FIXED_LINE = "08-123 456 78"
PREMIUM_RATE = "0900-123 45 67"
TOLL_FREE = "020-123 456"


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """These tests make their own CRM rows."""
    return empty_engine


def add_contact(engine: Engine, mobile: str | None, first_name: str = "Karin") -> int:
    with session(engine) as db:
        seller = Associate(name="Anna Berg", email="anna@nordljus.se", mobile=PREMIUM_RATE)
        db.add(seller)
        db.flush()
        contact = Contact(first_name=first_name, mobile=mobile, our_contact_id=seller.id)
        db.add(contact)
        db.flush()
        assert contact.id is not None
        return contact.id


async def send_sms(
    twilio_api: TwilioApiServer, engine: Engine, request: SmsSend
) -> DeliveryOutcome:
    activities = SmsActivities(engine, twilio_settings(twilio_api))
    outcome: DeliveryOutcome = await ActivityEnvironment().run(activities.send_sms, request)
    return outcome


def send_request(contact_id: int, text: str = "Hej [[customer.firstname]]") -> SmsSend:
    return SmsSend(
        delivery_key=f"f/{contact_id}/sms/1",
        flow_id="f",
        contact_id=contact_id,
        step=SendSms(id="sms", type="send_sms", next="done", text=text),
        default_sender="Nordljus",
    )


def test_number_kinds() -> None:
    assert [number_kind(n) for n in ("+46701234567", "+4681234567", "+46900123456")] == [
        "mobile",
        "fixed line",
        "premium rate",
    ]
    assert is_mobile("+12125550123")  # the US plan does not tell mobile from fixed line
    assert number_kind("+4612") is None


@pytest.mark.parametrize(
    "number", [FIXED_LINE, PREMIUM_RATE, TOLL_FREE], ids=["fixed line", "premium", "toll free"]
)
async def test_a_number_that_is_not_a_mobile_gets_no_sms(
    engine: Engine, twilio_api: TwilioApiServer, number: str
) -> None:
    outcome = await send_sms(twilio_api, engine, send_request(add_contact(engine, number)))
    assert (outcome.status, outcome.detail) == (DeliveryStatus.skipped, NOT_MOBILE)
    assert twilio_api.attempts == 0


async def test_a_mobile_number_gets_its_sms(engine: Engine, twilio_api: TwilioApiServer) -> None:
    outcome = await send_sms(twilio_api, engine, send_request(add_contact(engine, MOBILE)))
    assert outcome.status is DeliveryStatus.sent
    assert [m["to"] for m in twilio_api.messages] == ["+46701234567"]


async def test_notify_sms_skips_numbers_that_are_not_mobiles(
    engine: Engine, twilio_api: TwilioApiServer
) -> None:
    contact_id = add_contact(engine, MOBILE)  # our contact's "mobile" is a premium-rate number
    step = NotifySms(
        id="tell",
        type="notify_sms",
        next="done",
        to=Recipients(our_contact=True, addresses=[FIXED_LINE, "070 111 22 33"]),
        text="[[customer.firstname]] joined",
    )
    request = SmsNotify(
        delivery_key="f/tell/1", flow_id="f", contact_id=contact_id, step=step, default_sender="N"
    )
    activities = SmsActivities(engine, twilio_settings(twilio_api))
    outcomes: list[DeliveryOutcome] = await ActivityEnvironment().run(
        activities.notify_sms, request
    )
    assert [(o.status, o.detail) for o in outcomes[:2]] == [
        (DeliveryStatus.skipped, f"our contact: {NOT_MOBILE}"),
        (DeliveryStatus.skipped, f"{FIXED_LINE}: {NOT_MOBILE}"),
    ]
    assert outcomes[2].status is DeliveryStatus.sent
    assert [m["to"] for m in twilio_api.messages] == ["+46701112233"]


async def test_a_contact_whose_number_is_not_a_mobile_leaves_when_the_step_says_so(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    flow = flow_of(
        [
            {
                "id": "sms",
                "type": "send_sms",
                "text": "Hello",
                "exit_if_no_mobile": True,
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        sms_sender="Flows",
    )
    contact_id = add_contact(engine, FIXED_LINE)
    activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        state = await (await start(time_skipping_env, task_queue, flow, contact_id)).result()
    assert state.status is ParticipantStatus.dropped_out
    assert state.drop_out_reason == "no mobile number"
    assert twilio_api.attempts == 0


@pytest.mark.parametrize(
    ("first_name", "template"),
    [
        ("K" * 5000, "Hej [[customer.firstname]]"),  # 5,004 characters, 33 segments
        ("😀" * 900, "[[customer.firstname]]"),  # 900 emoji: 1,800 UTF-16 units, 27 segments
    ],
    ids=["long name", "emoji"],
)
async def test_a_text_that_merge_tags_make_too_long_is_not_sent(
    engine: Engine, twilio_api: TwilioApiServer, first_name: str, template: str
) -> None:
    contact_id = add_contact(engine, MOBILE, first_name=first_name)
    outcome = await send_sms(twilio_api, engine, send_request(contact_id, template))
    assert outcome.status is DeliveryStatus.failed
    assert outcome.detail is not None and f"at most {MAX_CHARACTERS:,}" in outcome.detail
    assert twilio_api.attempts == 0
    again = await send_sms(twilio_api, engine, send_request(contact_id, template))
    assert again.already_settled and twilio_api.attempts == 0


# --- validation -----------------------------------------------------------------------------------


def sms_flow(*steps: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "f",
        "name": "F",
        "sms_sender": "Nordljus",
        "start": steps[0]["id"],
        "steps": [*steps, {"id": "done", "type": "finish"}],
    }


def where(report: FlowReport) -> set[tuple[str, str | None, str]]:
    return {(p.level, p.step, p.field) for p in report.problems}


def test_validate_refuses_notify_sms_numbers_that_are_not_mobiles() -> None:
    step = {
        "id": "tell",
        "type": "notify_sms",
        "next": "done",
        "to": {"addresses": ["+46 70 111 22 33", PREMIUM_RATE, FIXED_LINE, "12"]},
        "text": "Hej",
    }
    report = check_flow(sms_flow(step), sms_region="SE")
    assert where(report) == {
        ("error", "tell", "to.addresses.1"),
        ("error", "tell", "to.addresses.2"),
        ("error", "tell", "to.addresses.3"),
    }
    messages = [p.message for p in report.problems]
    assert "premium rate" in messages[0] and "fixed line" in messages[1]
    assert "not a valid phone number" in messages[2]


@pytest.mark.parametrize("kind", ["send_sms", "notify_sms"])
def test_validate_refuses_a_text_longer_than_the_longest_sms(kind: str) -> None:
    # 801 characters for the schema, 1,602 UTF-16 units as an SMS; merge tags count as nothing.
    step: dict[str, Any] = {"id": "sms", "type": kind, "next": "done", "text": "😀" * 801}
    if kind == "notify_sms":
        step["to"] = {"addresses": ["+46 70 111 22 33"]}
    report = check_flow(sms_flow(step))
    assert where(report) == {("error", "sms", "text")}
    assert "1,600" in report.problems[0].message
    step["text"] = "😀" * 795 + "[[customer.firstname]]" * 10
    assert check_flow(sms_flow(step)).can_run
