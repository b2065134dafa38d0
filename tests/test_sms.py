"""SMS: segment counting, number normalisation, and the SMS activities against a local Twilio.

The activities run through the real twilio client against peers.twilio_api on loopback, and each
call stands for one Temporal attempt: calling again is what a retry would do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from activities.sms import SmsActivities, SmsNotify, SmsSend, TwilioSettings
from models.crm import Associate, Company, Contact
from models.database import session
from models.engine import Delivery
from models.flow import NotifySms, Recipients, SendSms
from models.ledger import DeliveryOutcome, DeliveryStatus
from models.personal_data import mask_phone
from models.settings import Settings
from models.sms import normalise_number, segments
from peers.twilio_api import TwilioApiServer, read_sms_outbox
from testkit.servers import free_port

SID = "AC" + "1" * 32
TOKEN = "test-token"
KARIN = "+46701234567"  # "070-123 45 67" in the CRM
ANNA = "+46701112233"  # our contact, "070 111 22 33" in the CRM
DEFAULT_SENDER = "+46700000001"


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """These tests make their own CRM rows."""
    return empty_engine


@pytest.fixture
def contacts(engine: Engine) -> dict[str, int]:
    """Contact ids by first name: Karin (mobile, our contact Anna, service contact Bo without a
    mobile), Nils (no mobile) and Olle (a number that is not one)."""
    with session(engine) as db:
        anna = Associate(name="Anna Berg", email="anna@nordljus.se", mobile="070 111 22 33")
        bo = Associate(name="Bo Ek", email="bo@nordljus.se")
        db.add_all([anna, bo])
        db.flush()
        company = Company(name="Nordljus AB", country="Sweden", our_contact_id=anna.id)
        db.add(company)
        db.flush()
        people = [
            Contact(
                first_name="Karin",
                last_name="Svensson",
                company_id=company.id,
                mobile="070-123 45 67",
                our_contact_id=anna.id,
                our_service_contact_id=bo.id,
            ),
            Contact(first_name="Nils", last_name="Nord", company_id=company.id),
            Contact(first_name="Olle", last_name="Ost", company_id=company.id, mobile="12345"),
        ]
        db.add_all(people)
        db.flush()
        return {person.first_name: int(person.id or 0) for person in people}


@pytest.fixture
def twilio() -> Iterator[TwilioApiServer]:
    with TwilioApiServer(account_sid=SID, auth_token=TOKEN) as server:
        yield server


def settings(server: TwilioApiServer) -> TwilioSettings:
    return TwilioSettings(account_sid=SID, auth_token=TOKEN, api_base=server.url)


@pytest.fixture
def sms(engine: Engine, twilio: TwilioApiServer) -> SmsActivities:
    return SmsActivities(engine, settings(twilio))


def send_request(contact_id: int, text: str, sender: str | None = None) -> SmsSend:
    step = SendSms(id="sms1", type="send_sms", next="done", text=text, sender=sender)
    return SmsSend(
        delivery_key=f"flow-1/{contact_id}/sms1/1",
        flow_id="flow-1",
        contact_id=contact_id,
        step=step,
        default_sender=DEFAULT_SENDER,
    )


async def send(activities: SmsActivities, request: SmsSend) -> DeliveryOutcome:
    result: DeliveryOutcome = await ActivityEnvironment().run(activities.send_sms, request)
    return result


def ledger_status(engine: Engine, key: str) -> str:
    with session(engine) as db:
        return db.exec(select(Delivery.status).where(Delivery.key == key)).one()


# --- segments and numbers ------------------------------------------------------------------------


def test_gsm7_single_and_split() -> None:
    assert segments("a" * 160).model_dump() == {
        "characters": 160,
        "encoding": "GSM-7",
        "segments": 1,
    }
    assert segments("a" * 161).segments == 2
    assert segments("a" * 306).segments == 2  # 2 x 153
    assert segments("a" * 307).segments == 3
    assert segments("Hej på dig, Åsa! Ü é").encoding == "GSM-7"  # in the GSM-7 alphabet
    assert segments("").segments == 0


def test_gsm7_extension_characters_count_double() -> None:
    for character in "^{}\\[~]|€":
        length = segments(character * 80)
        assert (length.encoding, length.characters, length.segments) == ("GSM-7", 160, 1)
    assert segments("€" * 80 + "a").segments == 2
    # An escape pair is never split: 152 plain + "€" does not fit the first 153-septet part.
    assert segments("a" * 152 + "€" + "a" * 152).segments == 3
    assert segments("a" * 151 + "€" + "a" * 153).segments == 2


def test_ucs2_single_and_split() -> None:
    assert segments("ç" * 70).model_dump() == {"characters": 70, "encoding": "UCS-2", "segments": 1}
    assert segments("ç" * 71).segments == 2
    assert segments("ç" * 134).segments == 2  # 2 x 67
    assert segments("ç" * 135).segments == 3
    assert segments("a" * 69 + "ç").encoding == "UCS-2"  # one character outside GSM-7 is enough


def test_ucs2_counts_utf16_code_units() -> None:
    assert segments("😀").characters == 2
    assert segments("😀" * 35).segments == 1
    assert segments("😀" * 35 + "a").segments == 2
    # A surrogate pair is never split: 66 units + an emoji opens the second part.
    assert segments("a" * 66 + "😀" + "a" * 66).segments == 3


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("070-123 45 67", "SE", "+46701234567"),
        ("+46 70 123 45 67", "SE", "+46701234567"),
        ("0046701234567", "SE", "+46701234567"),
        ("(08) 123 456 78", "SE", "+46812345678"),
        ("07911 123456", "GB", "+447911123456"),
        ("+44 7911 123456", "SE", "+447911123456"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("07911 123456", "SE", None),  # a UK number read as Swedish is not valid
        ("12345", "SE", None),
        ("+46 70", "SE", None),
        ("not a number", "SE", None),
        ("", "SE", None),
    ],
)
def test_normalise_number(raw: str, region: str, expected: str | None) -> None:
    assert normalise_number(raw, region) == expected


def test_settings_from_the_environment(settings_env: Callable[..., Settings]) -> None:
    loaded = TwilioSettings.from_settings(
        settings_env(
            TWILIO_ACCOUNT_SID=SID,
            TWILIO_AUTH_TOKEN=TOKEN,
            TWILIO_API_BASE="http://127.0.0.1:8026",
            SMS_DEFAULT_REGION="GB",
            TWILIO_TIMEOUT="5",
        )
    )
    assert loaded.account_sid == SID and loaded.auth_token.get_secret_value() == TOKEN
    assert (loaded.api_base, loaded.default_region) == ("http://127.0.0.1:8026", "GB")
    assert loaded.timeout == 5.0
    assert TOKEN not in repr(loaded)
    defaults = TwilioSettings.from_settings(
        settings_env(TWILIO_ACCOUNT_SID=SID, TWILIO_AUTH_TOKEN="t")
    )
    assert (defaults.api_base, defaults.default_region, defaults.timeout) == (None, "SE", 30.0)
    with pytest.raises(ValueError, match="TWILIO_AUTH_TOKEN"):
        TwilioSettings.from_settings(settings_env(TWILIO_ACCOUNT_SID=SID))


# --- send_sms ------------------------------------------------------------------------------------


async def test_send_renders_merge_tags_and_sends(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int], engine: Engine
) -> None:
    request = send_request(
        contacts["Karin"],
        "Hej [[customer.firstname]]! [[ourContact.name]], [[company.name]]",
        "Nordljus",
    )
    outcome = await send(sms, request)

    [message] = twilio.messages
    assert message["body"] == "Hej Karin! Anna Berg, Nordljus AB"
    assert message["to"] == KARIN
    assert message["from"] == "Nordljus"  # the step's alphanumeric sender, as written
    assert outcome.status is DeliveryStatus.sent
    assert outcome.provider_id == message["sid"] and str(message["sid"]).startswith("SM")
    # The number masked: the outcome is kept in the participant's history.
    assert (outcome.recipient, outcome.detail) == (mask_phone(KARIN), "1 segment, GSM-7")
    assert ledger_status(engine, request.delivery_key) == "sent"


async def test_send_uses_flow_sender_and_counts_segments(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    outcome = await send(sms, send_request(contacts["Karin"], "Hej 😀 " + "x" * 70))

    [message] = twilio.messages
    assert message["from"] == DEFAULT_SENDER
    assert message["num_segments"] == "2"
    assert outcome.detail == "2 segments, UCS-2"


async def test_a_settled_send_is_not_sent_again(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    request = send_request(contacts["Karin"], "Hej")
    first = await send(sms, request)
    again = await send(sms, request)

    assert len(twilio.messages) == 1
    assert again.already_settled and again.provider_id == first.provider_id


@pytest.mark.parametrize(
    ("code", "wording"),
    [(21211, "not a valid phone number"), (21610, "unsubscribed"), (21614, "not a valid mobile")],
)
async def test_rejected_number_fails_without_retry(
    sms: SmsActivities,
    twilio: TwilioApiServer,
    contacts: dict[str, int],
    engine: Engine,
    code: int,
    wording: str,
) -> None:
    twilio.reject_number(KARIN, code=code)
    request = send_request(contacts["Karin"], "Hej")

    outcome = await send(sms, request)  # returned, not raised: Temporal must not retry it
    assert outcome.status is DeliveryStatus.failed
    assert outcome.detail is not None and str(code) in outcome.detail and wording in outcome.detail
    assert ledger_status(engine, request.delivery_key) == "failed"

    again = await send(sms, request)
    assert again.already_settled and again.status is DeliveryStatus.failed
    assert twilio.attempts == 1 and twilio.messages == []


@pytest.mark.parametrize(("status", "code"), [(429, 20429), (500, 20500), (503, 20503)])
async def test_transient_error_releases_then_retry_sends_once(
    sms: SmsActivities,
    twilio: TwilioApiServer,
    contacts: dict[str, int],
    engine: Engine,
    status: int,
    code: int,
) -> None:
    twilio.fail_next(status=status, code=code)
    request = send_request(contacts["Karin"], "Hej")

    with pytest.raises(ApplicationError) as raised:
        await send(sms, request)
    assert not raised.value.non_retryable
    assert str(code) in str(raised.value)
    assert twilio.attempts == 1  # the twilio client did not retry on its own
    assert ledger_status(engine, request.delivery_key) == "pending"

    outcome = await send(sms, request)  # Temporal's retry
    assert outcome.status is DeliveryStatus.sent and not outcome.already_settled
    assert twilio.attempts == 2 and len(twilio.messages) == 1


async def test_wrong_credentials_are_retryable(
    engine: Engine, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    wrong = TwilioSettings(account_sid=SID, auth_token="wrong", api_base=twilio.url)
    request = send_request(contacts["Karin"], "Hej")
    with pytest.raises(ApplicationError, match="20003"):
        await send(SmsActivities(engine, wrong), request)
    assert ledger_status(engine, request.delivery_key) == "pending"


async def test_unreachable_twilio_releases(engine: Engine, contacts: dict[str, int]) -> None:
    server = TwilioApiServer(account_sid=SID, auth_token=TOKEN)
    server.start()
    closed = settings(server)
    server.stop()  # nothing listens on that port any more
    request = send_request(contacts["Karin"], "Hej")

    with pytest.raises(ApplicationError, match="unreachable"):
        await send(SmsActivities(engine, closed), request)
    assert ledger_status(engine, request.delivery_key) == "pending"


async def test_failure_after_handover_sends_nothing_on_retry(
    engine: Engine, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    handed_over: list[str] = []

    def crash(key: str) -> None:
        handed_over.append(key)
        raise RuntimeError("worker lost after Twilio accepted")

    request = send_request(contacts["Karin"], "Hej")
    with pytest.raises(RuntimeError):
        await send(SmsActivities(engine, settings(twilio), after_handover=crash), request)
    assert handed_over == [request.delivery_key]

    retry = await send(SmsActivities(engine, settings(twilio), after_handover=crash), request)
    assert retry.already_settled and retry.status is DeliveryStatus.sent
    assert len(twilio.messages) == 1 and twilio.attempts == 1
    assert retry.provider_id == twilio.messages[0]["sid"]


async def test_lost_answer_is_unconfirmed_and_never_resent(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    twilio.drop_next()  # Twilio accepts the message, the answer never arrives
    request = send_request(contacts["Karin"], "Hej")

    outcome = await send(sms, request)
    assert outcome.status is DeliveryStatus.unconfirmed
    again = await send(sms, request)
    assert again.status is DeliveryStatus.unconfirmed and again.already_settled
    assert len(twilio.messages) == 1 and twilio.attempts == 1


def died_mid_send(engine: Engine, request: SmsSend, ago: timedelta) -> None:
    """The ledger as a worker that died after its request may have gone out leaves it."""
    with session(engine) as db:
        db.add(
            Delivery(
                key=request.delivery_key,
                channel="sms",
                recipient=KARIN,
                status="sending",
                updated_at=datetime.now(UTC) - ago,
            )
        )


async def test_an_interrupted_send_that_twilio_has_is_settled_without_sending(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int], engine: Engine
) -> None:
    request = send_request(contacts["Karin"], "Hej")
    died_mid_send(engine, request, ago=timedelta(minutes=2))
    accepted, _ = twilio.create(SID, {"To": KARIN, "From": DEFAULT_SENDER, "Body": "Hej"})
    attempts = twilio.attempts

    outcome = await send(sms, request)
    assert outcome.status is DeliveryStatus.sent and outcome.provider_id == accepted["sid"]
    assert twilio.attempts == attempts and len(twilio.messages) == 1


async def test_an_interrupted_send_that_never_reached_twilio_is_sent_once(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int], engine: Engine
) -> None:
    request = send_request(contacts["Karin"], "Hej")
    died_mid_send(engine, request, ago=timedelta(minutes=2))
    # Another text to the same number is not this send.
    twilio.create(SID, {"To": KARIN, "From": DEFAULT_SENDER, "Body": "Hej då"})

    outcome = await send(sms, request)
    assert outcome.status is DeliveryStatus.sent and not outcome.already_settled
    assert [m["body"] for m in twilio.messages] == ["Hej då", "Hej"]
    again = await send(sms, request)
    assert again.already_settled and len(twilio.messages) == 2


async def test_an_interrupted_send_is_not_looked_up_while_its_request_may_be_in_flight(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int], engine: Engine
) -> None:
    request = send_request(contacts["Karin"], "Hej")
    died_mid_send(engine, request, ago=timedelta(seconds=1))

    with pytest.raises(ApplicationError) as raised:
        await send(sms, request)
    assert raised.value.type == "SendInProgress" and not raised.value.non_retryable
    assert twilio.attempts == 0 and ledger_status(engine, request.delivery_key) == "sending"


@pytest.mark.parametrize(
    ("name", "reason"), [("Nils", "no mobile number"), ("Olle", "invalid mobile number")]
)
async def test_no_usable_mobile_is_skipped(
    sms: SmsActivities,
    twilio: TwilioApiServer,
    contacts: dict[str, int],
    engine: Engine,
    name: str,
    reason: str,
) -> None:
    request = send_request(contacts[name], "Hej")
    outcome = await send(sms, request)

    assert (outcome.status, outcome.detail) == (DeliveryStatus.skipped, reason)
    assert ledger_status(engine, request.delivery_key) == "skipped"
    assert twilio.attempts == 0


async def test_unknown_merge_tag_fails_without_sending(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    outcome = await send(sms, send_request(contacts["Karin"], "Hej [[customer.shoesize]]"))
    assert outcome.status is DeliveryStatus.failed
    assert outcome.detail is not None and "customer.shoesize" in outcome.detail
    assert twilio.attempts == 0


async def test_missing_contact_is_not_retryable(sms: SmsActivities) -> None:
    with pytest.raises(ApplicationError) as raised:
        await send(sms, send_request(999_999, "Hej"))
    assert raised.value.non_retryable and raised.value.type == "MissingContact"


# --- notify_sms ----------------------------------------------------------------------------------


async def test_notify_our_contact_a_number_and_a_service_contact_without_mobile(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    step = NotifySms(
        id="notify",
        type="notify_sms",
        next="done",
        to=Recipients(
            our_contact=True,
            our_service_contact=True,
            addresses=["+44 7911 123456", "070 111 22 33"],
        ),
        text="[[customer.fullname]] at [[company.name]] joined the flow",
    )
    request = SmsNotify(
        delivery_key="flow-1/1/notify/1",
        flow_id="flow-1",
        contact_id=contacts["Karin"],
        step=step,
        default_sender="Flows",
    )
    outcomes: list[DeliveryOutcome] = await ActivityEnvironment().run(sms.notify_sms, request)

    # Anna's number is also listed as "070 111 22 33": the same E.164 number gets one SMS.
    # Numbers masked, in the key too: the outcomes are kept in the participant's history.
    summary = [(o.key, o.status, o.recipient) for o in outcomes]
    assert summary == [
        (f"flow-1/1/notify/1/{mask_phone(ANNA)}", DeliveryStatus.sent, mask_phone(ANNA)),
        ("flow-1/1/notify/1/our_service_contact", DeliveryStatus.skipped, "our service contact"),
        ("flow-1/1/notify/1/…3456", DeliveryStatus.sent, "…3456"),
    ]
    assert outcomes[1].detail == "our service contact has no mobile number"
    assert sorted(str(m["to"]) for m in twilio.messages) == sorted([ANNA, "+447911123456"])
    assert {m["body"] for m in twilio.messages} == {"Karin Svensson at Nordljus AB joined the flow"}
    assert {m["from"] for m in twilio.messages} == {"Flows"}

    # A retry of the whole activity sends nobody anything new.
    again: list[DeliveryOutcome] = await ActivityEnvironment().run(sms.notify_sms, request)
    assert all(o.already_settled for o in again) and len(twilio.messages) == 2


async def test_notify_retry_after_transient_error_sends_only_the_rest(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    step = NotifySms(
        id="notify",
        type="notify_sms",
        next="done",
        to=Recipients(our_contact=True, addresses=["+44 7911 123456"]),
        text="Hej",
        sender="+46 70 000 00 02",
    )
    request = SmsNotify(
        delivery_key="k",
        flow_id="flow-1",
        contact_id=contacts["Karin"],
        step=step,
        default_sender=None,
    )
    twilio.fail_next(status=500, code=20500, times=1)
    twilio.reject_number("nobody")  # unrelated rule: must not matter
    with pytest.raises(ApplicationError):
        await ActivityEnvironment().run(sms.notify_sms, request)
    assert twilio.messages == []

    outcomes: list[DeliveryOutcome] = await ActivityEnvironment().run(sms.notify_sms, request)
    assert [o.status for o in outcomes] == [DeliveryStatus.sent, DeliveryStatus.sent]
    assert [m["from"] for m in twilio.messages] == ["+46700000002"] * 2


# --- the Twilio peer -----------------------------------------------------------------------------


def test_peer_lists_messages_through_the_twilio_client(twilio: TwilioApiServer) -> None:
    request = urllib.request.Request(
        f"{twilio.url}/2010-04-01/Accounts/{SID}/Messages.json",
        data=b"To=%2B46701234567&From=Flows&Body=Hej",
        headers={"Authorization": "Basic " + b64encode(f"{SID}:{TOKEN}".encode()).decode()},
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 201
        created = json.load(answer)
    assert (created["status"], created["num_segments"]) == ("queued", "1")

    class Routed(TwilioHttpClient):  # type: ignore[misc]
        def request(self, method: str, url: str, *args: object, **kwargs: object) -> object:
            url = url.replace("https://api.twilio.com", twilio.url)
            return super().request(method, url, *args, **kwargs)

    client = Client(SID, TOKEN, http_client=Routed())
    listed = client.messages.list(to=KARIN)
    assert [m.sid for m in listed] == [created["sid"]]
    assert client.messages(created["sid"]).fetch().body == "Hej"


async def test_peer_outage_answers_429_until_it_ends(
    sms: SmsActivities, twilio: TwilioApiServer, contacts: dict[str, int]
) -> None:
    twilio.fail_for(2.0)
    request = send_request(contacts["Karin"], "Hej")
    with pytest.raises(ApplicationError, match="20429"):
        await send(sms, request)
    time.sleep(2.1)
    assert (await send(sms, request)).status is DeliveryStatus.sent
    assert twilio.attempts == 2 and len(twilio.messages) == 1


def test_peer_command_stores_messages_and_stops_on_sigterm(tmp_path: Path) -> None:
    store = tmp_path / "outbox" / "sms.jsonl"
    port = free_port()
    env = {**os.environ, "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "peers.twilio_api", "--port", str(port), "--store", str(store)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the peer did not start"
                time.sleep(0.05)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/2010-04-01/Accounts/{SID}/Messages.json",
            data=b"To=%2B46701234567&From=Flows&Body=Hej+%E2%82%AC",
            headers={"Authorization": "Basic " + b64encode(f"{SID}:{TOKEN}".encode()).decode()},
        )
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 201
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0

    [stored] = read_sms_outbox(store)
    assert (stored["to"], stored["body"]) == (KARIN, "Hej €")
    assert read_sms_outbox(tmp_path / "absent.jsonl") == []
