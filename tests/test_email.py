"""Email: merge-tag rendering, the email activities against a real SMTP server, the dev inbox.

The server is aiosmtpd on loopback requiring STARTTLS (a self-signed certificate made with
openssl for this test run) and AUTH; its handler records what it accepted and can refuse RCPT
with a scripted reply. The activities are called directly in a thread, as the worker would.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import Connection, Engine, event
from sqlmodel import select
from temporalio.exceptions import ApplicationError

import activities.email as email_activities
import activities.mime as mime
from activities.email import EmailActivities, EmailNotify, EmailSend, SmtpSettings
from activities.mime import message_id
from activities.participants import ParticipantRecord
from models.crm import Associate, Company, Contact
from models.database import PROJECT_ROOT, session, utcnow
from models.engine import Delivery, Participant
from models.flow import EmailSettings, NotifyEmail, SendEmail
from models.ledger import DeliveryOutcome, DeliveryStatus, claim, mark_sending, settle
from models.merge_tags import MergeTagError, render, render_header
from models.participant import ParticipantState
from models.settings import Settings
from testkit.peers import running_inbox, self_signed_certificate
from testkit.servers import free_port

USER, PASSWORD = "flows", "s3cret"
KEY = "participant-1/step-mail/1"


# --- render ------------------------------------------------------------------------------------

FACTS: dict[str, object] = {
    "contact.first_name": "Anna",
    "contact.last_name": None,
    "company.name": "Bröd & Salt <AB>",
}


def test_render_prints_values_and_none_as_empty() -> None:
    text = "Hej [[customer.firstname]] [[ customer.lastname ]]på [[company.name]]!"
    assert render(text, FACTS) == "Hej Anna på Bröd & Salt <AB>!"


def test_render_conditionals() -> None:
    text = "[[IF:customer.firstname]]Hej [[customer.firstname]][[ELSE]]Hej du[[ENDIF]]"
    assert render(text, FACTS) == "Hej Anna"
    assert render(text, {**FACTS, "contact.first_name": ""}) == "Hej du"
    negated = "[[IF:!customer.lastname]]no last name[[ENDIF]][[IF: !company.name ]]x[[ENDIF]]"
    assert render(negated, FACTS) == "no last name"


def test_render_escapes_values_not_markup_in_html() -> None:
    rendered = render("<p>[[company.name]]</p>", FACTS, html=True)
    assert rendered == "<p>Bröd &amp; Salt &lt;AB&gt;</p>"


def test_render_leaves_text_outside_tags_inert() -> None:
    text = "{{ 7*7 }} {% if true %}x{% endif %} {# c #} [[ 1 + [2] ]] [[# c #]"
    assert render(text, FACTS) == text
    assert render(text, FACTS, html=True) == text


def test_render_never_evaluates_a_value() -> None:
    facts = {**FACTS, "contact.first_name": "[[company.name]] {{7*7}} [[% if 1 %]]"}
    assert render("[[customer.firstname]]", facts) == "[[company.name]] {{7*7}} [[% if 1 %]]"


@pytest.mark.parametrize(
    "text",
    [
        "[[customer.shoesize]]",
        "[[IF:customer.shoesize]]x[[ENDIF]]",
        "[[IF:customer.firstname]]never closed",
        "[[ENDIF]]",
        "[[% endraw %]]",
        "[[customer.firstname.__class__]]",
    ],
)
def test_render_rejects_unknown_or_malformed_tags(text: str) -> None:
    with pytest.raises(MergeTagError):
        render(text, FACTS)


def test_render_links() -> None:
    links = {"unsubscribe": "https://x.example/u?c=1&f=2"}
    assert render("[[link.unsubscribe]]", FACTS, links=links) == links["unsubscribe"]
    html = render('<a href="[[link.unsubscribe]]">', FACTS, html=True, links=links)
    assert html == '<a href="https://x.example/u?c=1&amp;f=2">'
    with pytest.raises(MergeTagError, match=r"no link for \[\[link.webversion\]\]"):
        render("[[link.webversion]]", FACTS, links=links)


def test_render_header_cleans_line_breaks_out_of_values_and_refuses_them_in_the_template() -> None:
    assert render_header("Hi [[customer.firstname]]", FACTS) == "Hi Anna"
    for value, cleaned in (
        ("Anna\r\nBcc: x@example.com", "Anna Bcc: x@example.com"),
        ("Anna\nX", "Anna X"),
        ("Anna\r", "Anna"),
        ("An\tna\x00\u2028X", "An na X"),
    ):
        facts: dict[str, object] = {"contact.first_name": value}
        assert render_header("Hi [[customer.firstname]]!", facts) == f"Hi {cleaned}!"
    with pytest.raises(ValueError, match="line break"):
        render_header("Hi\r\nBcc: x@example.com [[customer.firstname]]", FACTS)


# --- a real SMTP server ------------------------------------------------------------------------


@dataclass
class Accepted:
    message: EmailMessage
    mail_from: str
    rcpt_tos: list[str]
    tls: bool
    authenticated: bool


@dataclass
class RecordingHandler:
    accepted: list[Accepted] = field(default_factory=list)
    rcpt_attempts: int = 0
    rcpt_reply: str | None = None  # e.g. "550 5.1.1 no such user"; None accepts
    connections: list[Any] = field(default_factory=list)  # the server side of each, in order

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt_attempts += 1
        if not self.connections or self.connections[-1] is not server:
            self.connections.append(server)
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = BytesParser(policy=default_policy).parsebytes(envelope.content)
        assert isinstance(message, EmailMessage)
        self.accepted.append(
            Accepted(
                message=message,
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                tls=session.ssl is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 2.0.0 queued"


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    if (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    ):
        return AuthResult(success=True)
    return AuthResult(success=False, handled=False)  # handled=True would hang the client


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_server(certificate: tuple[Path, Path]) -> Iterator[tuple[RecordingHandler, int]]:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticate,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def content_root(tmp_path: Path) -> Path:
    root = tmp_path / "content"
    (root / "files").mkdir(parents=True)
    (root / "files" / "prices.pdf").write_bytes(b"%PDF-1.4 fake price list\n")
    (root / "spring.html").write_text("<h1>Spring, [[customer.firstname]]!</h1>", "utf-8")
    return root


@pytest.fixture
def smtp(
    smtp_server: tuple[RecordingHandler, int], certificate: tuple[Path, Path], content_root: Path
) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1",
        port=smtp_server[1],
        starttls=True,
        username=USER,
        password=PASSWORD,
        ca_file=str(certificate[0]),
        timeout=10,
        message_id_domain="mail.flows.example.com",
        list_unsubscribe_url="https://flows.example.com/unsubscribe?c={contact_id}&f={flow_id}",
        list_unsubscribe_mailto="unsubscribe@flows.example.com",
        content_root=content_root,
    )


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """These tests make their own CRM rows."""
    return empty_engine


@pytest.fixture
def contact_id(engine: Engine) -> int:
    with session(engine) as db:
        seller = Associate(name="Olle Säljare", email="olle@ourco.example.com")
        service = Associate(name="Siv Service", email="siv@ourco.example.com")
        db.add_all([seller, service])
        db.flush()
        company = Company(name="Bröd & Salt AB", our_contact_id=seller.id)
        db.add(company)
        db.flush()
        contact = Contact(
            company_id=company.id,
            first_name="Anna",
            last_name="Svensson",
            email="anna@brodsalt.example.com",
            our_contact_id=seller.id,
            our_service_contact_id=service.id,
            subscriptions=["newsletter"],
            consents=[{"purpose": "emarketing", "legal_basis": "consent", "source": "form"}],
        )
        db.add(contact)
        db.flush()
        assert contact.id is not None
        return contact.id


def _update_contact(engine: Engine, contact_id: int, **changes: Any) -> None:
    with session(engine) as db:
        contact = db.get(Contact, contact_id)
        assert contact is not None
        for name, value in changes.items():
            setattr(contact, name, value)
        db.add(contact)


SETTINGS = EmailSettings.model_validate(
    {
        "subscription_type": "newsletter",
        "from": {"kind": "our_contact", "address": "news@flows.example.com", "name": "Flows"},
        "reply_to": {"kind": "our_service_contact", "address": "support@flows.example.com"},
    }
)


def _step(**changes: Any) -> SendEmail:
    fields: dict[str, Any] = {
        "id": "step-mail",
        "type": "send_email",
        "next": "end",
        "subject": "Hej [[customer.firstname]] från [[company.name]]",
        "html": '<p>Hej [[customer.firstname]]</p><a href="[[link.unsubscribe]]">Avregistrera</a>',
        "text": "Hej [[customer.firstname]]\nAvregistrera: [[link.unsubscribe]]",
        "attachments": [{"path": "files/prices.pdf", "filename": "Prislista.pdf"}],
    }
    fields.update(changes)
    return SendEmail.model_validate(fields)


def _send(
    contact_id: int,
    step: SendEmail | None = None,
    settings: EmailSettings | None = SETTINGS,
    key: str = KEY,
) -> EmailSend:
    return EmailSend(
        delivery_key=key,
        flow_id="spring-campaign",
        flow_name="Spring campaign",
        contact_id=contact_id,
        step=step or _step(),
        settings=settings,
    )


def _text(part: MIMEPart | None) -> str:
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # as it came over the wire


def _ledger(engine: Engine, key: str = KEY) -> Delivery:
    with session(engine) as db:
        return db.exec(select(Delivery).where(Delivery.key == key)).one()


async def test_send_email_delivers_the_rendered_message(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, _ = smtp_server
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))

    expected_id = message_id(KEY, "mail.flows.example.com")
    assert outcome.status is DeliveryStatus.sent
    assert outcome.provider_id == expected_id
    assert outcome.recipient == "a…@brodsalt.example.com"  # masked: it is kept in the history
    [accepted] = handler.accepted
    assert accepted.tls and accepted.authenticated
    assert accepted.mail_from == "olle@ourco.example.com"
    assert accepted.rcpt_tos == ["anna@brodsalt.example.com"]

    message = accepted.message
    assert message["From"] == "Olle Säljare <olle@ourco.example.com>"
    assert message["Reply-To"] == "Siv Service <siv@ourco.example.com>"
    assert message["To"] == "Anna Svensson <anna@brodsalt.example.com>"
    assert message["Subject"] == "Hej Anna från Bröd & Salt AB"
    assert message["Message-ID"] == expected_id
    assert (
        expected_id == f"<{hashlib.sha256(KEY.encode()).hexdigest()[:32]}@mail.flows.example.com>"
    )
    unsubscribe = f"https://flows.example.com/unsubscribe?c={contact_id}&f=spring-campaign"
    assert message["List-Unsubscribe"] == f"<mailto:unsubscribe@flows.example.com>, <{unsubscribe}>"

    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert _text(plain) == f"Hej Anna\nAvregistrera: {unsubscribe}\n"
    assert _text(html) == (
        f'<p>Hej Anna</p><a href="{unsubscribe.replace("&", "&amp;")}">Avregistrera</a>\n'
    )
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == "Prislista.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake price list\n"

    row = _ledger(engine)
    assert (row.status, row.provider_id) == ("sent", expected_id)

    again = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))
    assert again.status is DeliveryStatus.sent and again.already_settled
    assert len(handler.accepted) == 1


@pytest.mark.parametrize(
    ("sender", "reply_to", "expected_from", "expected_reply_to"),
    [
        (
            {"address": "news@flows.example.com", "name": "Flows"},
            {"kind": "same_as_from"},
            "Flows <news@flows.example.com>",
            "Flows <news@flows.example.com>",
        ),
        (
            {"kind": "our_service_contact", "address": "news@flows.example.com"},
            {"kind": "none"},
            "Siv Service <siv@ourco.example.com>",
            None,
        ),
        (
            {"kind": "our_contact", "address": "news@flows.example.com"},
            {"kind": "address", "address": "replies@flows.example.com"},
            "news@flows.example.com",
            "replies@flows.example.com",
        ),
    ],
)
async def test_from_and_reply_to_follow_the_settings(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    sender: dict[str, str],
    reply_to: dict[str, str],
    expected_from: str,
    expected_reply_to: str | None,
) -> None:
    if expected_from == "news@flows.example.com":  # our contact unset: the fallback address is used
        _update_contact(engine, contact_id, our_contact_id=None)
    settings = EmailSettings.model_validate({"from": sender, "reply_to": reply_to})
    request = _send(contact_id, _step(html=None, attachments=[]), settings)
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, request)

    assert outcome.status is DeliveryStatus.sent
    [accepted] = smtp_server[0].accepted
    assert accepted.message["From"] == expected_from
    assert accepted.message["Reply-To"] == expected_reply_to
    assert accepted.message.get_content_type() == "text/plain"


async def test_html_body_from_the_content_file(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    step = _step(html=None, text=None, attachments=[], content_file="spring.html")
    outcome = await asyncio.to_thread(
        EmailActivities(engine, smtp).send_email, _send(contact_id, step)
    )
    assert outcome.status is DeliveryStatus.sent
    [accepted] = smtp_server[0].accepted
    assert accepted.message.get_content_type() == "text/html"
    assert _text(accepted.message) == "<h1>Spring, Anna!</h1>\n"


async def test_hard_bounce_is_final(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, _ = smtp_server
    handler.rcpt_reply = "550 5.1.1 no such user"
    activities = EmailActivities(engine, smtp)

    outcome = await asyncio.to_thread(activities.send_email, _send(contact_id))
    assert outcome.status is DeliveryStatus.bounced
    assert outcome.detail is not None and "550" in outcome.detail
    again = await asyncio.to_thread(activities.send_email, _send(contact_id))
    assert again.status is DeliveryStatus.bounced and again.already_settled
    assert handler.rcpt_attempts == 1  # the retry never reached the server
    assert handler.accepted == []


async def test_soft_bounce_releases_and_the_retry_delivers_once(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, _ = smtp_server
    handler.rcpt_reply = "451 4.3.0 try again later"
    activities = EmailActivities(engine, smtp)

    with pytest.raises(ApplicationError) as raised:
        await asyncio.to_thread(activities.send_email, _send(contact_id))
    assert not raised.value.non_retryable
    assert "451" in str(raised.value)
    assert _ledger(engine).status == "pending"

    handler.rcpt_reply = None  # the server recovers
    outcome = await asyncio.to_thread(activities.send_email, _send(contact_id))
    assert outcome.status is DeliveryStatus.sent and not outcome.already_settled
    assert len(handler.accepted) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"port": 1},  # nothing listens: connection refused
        {"starttls": False, "auth_without_tls": True},  # the server requires STARTTLS for AUTH
        {"password": "wrong"},
    ],
)
async def test_connection_trouble_releases_and_raises(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    change: dict[str, Any],
) -> None:
    activities = EmailActivities(engine, replace(smtp, **change))
    with pytest.raises(ApplicationError, match="unavailable"):
        await asyncio.to_thread(activities.send_email, _send(contact_id))
    assert _ledger(engine).status == "pending"
    assert smtp_server[0].accepted == []


async def test_failure_after_handover_does_not_send_twice(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, _ = smtp_server
    crashes = ["worker lost before reporting completion"]

    def crash_once(key: str) -> None:
        if crashes:
            raise RuntimeError(crashes.pop())

    activities = EmailActivities(engine, smtp, after_handover=crash_once)
    with pytest.raises(RuntimeError, match="worker lost"):
        await asyncio.to_thread(activities.send_email, _send(contact_id))
    assert _ledger(engine).status == "sent"

    retry = await asyncio.to_thread(activities.send_email, _send(contact_id))  # Temporal's retry
    assert retry.status is DeliveryStatus.sent and retry.already_settled
    assert retry.provider_id == message_id(KEY, "mail.flows.example.com")
    assert len(handler.accepted) == 1


async def test_lines_starting_with_a_dot_arrive_as_written(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    # The message goes out in two writes around the ledger's point of no return; dot-stuffing
    # must still make a line that is just "." part of the text, not the end of the message.
    text = ".\n.. two dots\n.net is a framework\nlast line"
    step = _step(text=text, html=None, attachments=[])
    await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id, step))
    [accepted] = smtp_server[0].accepted
    assert _text(accepted.message.get_body(preferencelist=("plain",))) == text + "\n"


def _sends(activities: EmailActivities, *requests: EmailSend) -> list[DeliveryOutcome]:
    """Send one after another on one thread, as one worker thread takes activity after activity."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return [thread.submit(activities.send_email, request).result() for request in requests]


async def test_messages_of_one_worker_thread_share_a_connection(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, _ = smtp_server
    keys = [f"{KEY}-{visit}" for visit in range(3)]
    outcomes = await asyncio.to_thread(
        _sends, EmailActivities(engine, smtp), *(_send(contact_id, key=key) for key in keys)
    )
    assert [outcome.status for outcome in outcomes] == [DeliveryStatus.sent] * 3
    assert [accepted.message["Message-ID"] for accepted in handler.accepted] == [
        message_id(key, "mail.flows.example.com") for key in keys
    ]
    assert len(handler.connections) == 1
    assert all(accepted.tls and accepted.authenticated for accepted in handler.accepted)


async def test_a_kept_connection_the_server_dropped_is_replaced_without_a_duplicate(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    # The server hangs up on the idle connection between two messages: the second message,
    # begun on it, fails before its final dot and goes out once over a fresh connection.
    handler, _ = smtp_server
    activities = EmailActivities(engine, smtp)
    with ThreadPoolExecutor(max_workers=1) as thread:
        first = await asyncio.wrap_future(thread.submit(activities.send_email, _send(contact_id)))
        [server] = handler.connections
        server.loop.call_soon_threadsafe(server.transport.close)
        await asyncio.sleep(0.2)
        request = _send(contact_id, key=f"{KEY}-again")
        second = await asyncio.wrap_future(thread.submit(activities.send_email, request))
    assert (first.status, second.status) == (DeliveryStatus.sent, DeliveryStatus.sent)
    assert not second.already_settled
    assert len(handler.accepted) == 2 and len(handler.connections) == 2
    assert _ledger(engine, f"{KEY}-again").status == "sent"


async def test_a_send_stopped_before_its_final_dot_leaves_no_connection_behind(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An attempt superseded at its point of no return drops its connection in mid-DATA; the
    # thread's next message opens a new one, and the server holds only that one message.
    handler, _ = smtp_server
    real_mark = mark_sending
    superseded = [True]

    def other_attempt_first(
        engine: Engine, key: str, hand_over: Callable[[], None] | None = None
    ) -> bool:
        if superseded:
            superseded.clear()
            assert real_mark(engine, key)  # the other attempt, a moment earlier
        return real_mark(engine, key, hand_over)

    monkeypatch.setattr(email_activities, "mark_sending", other_attempt_first)
    activities = EmailActivities(engine, smtp)
    with ThreadPoolExecutor(max_workers=1) as thread:
        with pytest.raises(ApplicationError, match="handing this message over"):
            await asyncio.wrap_future(thread.submit(activities.send_email, _send(contact_id)))
        request = _send(contact_id, key=f"{KEY}-next")
        outcome = await asyncio.wrap_future(thread.submit(activities.send_email, request))
    assert outcome.status is DeliveryStatus.sent
    assert [accepted.message["Message-ID"] for accepted in handler.accepted] == [
        message_id(f"{KEY}-next", "mail.flows.example.com")
    ]
    assert len(handler.connections) == 2


async def test_a_claim_that_never_reached_the_point_of_no_return_is_sent_by_the_retry(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    # A worker that died while connecting leaves the key claimed ("pending"): nothing went out.
    assert claim(engine, KEY, "email", "anna@brodsalt.example.com") is None
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))
    assert outcome.status is DeliveryStatus.sent and not outcome.already_settled
    assert len(smtp_server[0].accepted) == 1


async def test_send_interrupted_past_the_point_of_no_return_is_unconfirmed(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    # A worker that died after the final dot of DATA went out leaves the key "sending".
    assert claim(engine, KEY, "email", "anna@brodsalt.example.com") is None
    assert mark_sending(engine, KEY)
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))
    assert outcome.status is DeliveryStatus.unconfirmed
    assert smtp_server[0].rcpt_attempts == 0


async def test_the_server_gets_the_final_dot_only_once_the_send_is_marked(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the ledger holds when the message arrives: a kill before that point left nothing
    # with the server, one after it finds the send marked.
    handler, _ = smtp_server
    accept = handler.handle_DATA
    seen: list[str] = []

    async def checked(server: Any, smtp_session: Any, envelope: Any) -> str:
        seen.append((await asyncio.to_thread(_ledger, engine, KEY)).status)
        return await accept(server, smtp_session, envelope)

    monkeypatch.setattr(handler, "handle_DATA", checked)
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))
    assert outcome.status is DeliveryStatus.sent
    assert seen == [DeliveryStatus.sending]


def test_the_hand_over_runs_once_the_mark_is_on_record_and_only_then(engine: Engine) -> None:
    # The final dot goes out the moment the mark is committed (another connection sees it
    # `sending`), and not at all for an attempt that comes second.
    assert claim(engine, KEY, "email", "anna@brodsalt.example.com") is None
    seen: list[str] = []

    def final_dot() -> None:
        seen.append(_ledger(engine, KEY).status)

    assert mark_sending(engine, KEY, final_dot)
    assert not mark_sending(engine, KEY, final_dot)
    assert seen == [DeliveryStatus.sending]


def test_on_sqlite_the_mark_is_the_commit_that_waits_for_the_disk(engine: Engine) -> None:
    # A power cut may take back the claim or the outcome (synchronous=NORMAL), never the mark:
    # a retry after it must find `sending` and not send again.
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL syncs every commit")
    synced: list[int] = []

    @event.listens_for(engine, "commit")
    def before_commit(connection: Connection) -> None:
        raw = connection.connection.driver_connection
        assert raw is not None
        synced.append(raw.execute("PRAGMA synchronous").fetchone()[0])

    assert claim(engine, KEY, "email", "anna@brodsalt.example.com") is None
    assert mark_sending(engine, KEY)
    settle(engine, KEY, DeliveryStatus.sent)
    full, normal = 2, 1
    assert synced == [normal, full, normal]


async def test_of_two_attempts_at_once_only_the_first_past_the_point_of_no_return_sends(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def other_attempt_first(
        engine: Engine, key: str, hand_over: Callable[[], None] | None = None
    ) -> bool:
        assert mark_sending(engine, key)  # the other attempt, a moment earlier
        return mark_sending(engine, key, hand_over)

    monkeypatch.setattr(email_activities, "mark_sending", other_attempt_first)
    with pytest.raises(ApplicationError) as raised:
        await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))
    assert raised.value.type == "SendInProgress"
    # This attempt stopped before the final dot: the server kept nothing of it.
    assert smtp_server[0].rcpt_attempts == 1 and smtp_server[0].accepted == []
    assert _ledger(engine).status == "sending"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"email": None}, "no email address"),
        ({"email": "anna(at)brodsalt"}, "invalid email address"),
        ({"no_mailings": True}, "no mailings"),
        ({"retired": True}, "former employee"),
        ({"consents": []}, "no consent for emarketing"),
        ({"consents": [{"purpose": "sms"}]}, "no consent for emarketing"),
        ({"subscriptions": ["events"]}, "not subscribed to 'newsletter'"),
    ],
)
async def test_checks_skip_with_a_reason(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    changes: dict[str, Any],
    reason: str,
) -> None:
    _update_contact(engine, contact_id, **changes)
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))
    assert outcome.status is DeliveryStatus.skipped
    assert outcome.detail is not None and reason in outcome.detail
    assert _ledger(engine).status == "skipped"
    assert smtp_server[0].rcpt_attempts == 0


async def test_unknown_contact_is_skipped(engine: Engine, smtp: SmtpSettings) -> None:
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(999))
    assert (outcome.status, outcome.detail) == (DeliveryStatus.skipped, "contact not found")


async def test_merge_tags_in_values_are_printed_literally(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    sly = "[[company.name]] {{7*7}} <b>"
    _update_contact(engine, contact_id, first_name=sly)
    step = _step(
        subject="Hej [[customer.firstname]]",
        html="<p>[[customer.firstname]]</p>",
        text="[[customer.firstname]]",
        attachments=[],
    )
    outcome = await asyncio.to_thread(
        EmailActivities(engine, smtp).send_email, _send(contact_id, step)
    )
    assert outcome.status is DeliveryStatus.sent
    [accepted] = smtp_server[0].accepted
    plain = accepted.message.get_body(preferencelist=("plain",))
    html = accepted.message.get_body(preferencelist=("html",))
    assert accepted.message["Subject"] == f"Hej {sly}"
    assert _text(plain) == f"{sly}\n"
    assert _text(html) == "<p>[[company.name]] {{7*7}} &lt;b&gt;</p>\n"


@pytest.mark.parametrize(
    ("step_changes", "detail"),
    [
        ({"subject": "Till\r\nBcc: victim@elsewhere.example.com"}, "line break"),
        ({"subject": "Hej", "attachments": [{"path": "files/missing.pdf"}]}, "not found"),
        ({"subject": "Hej", "attachments": [{"path": "../t.db"}]}, "outside the content folder"),
        ({"subject": "Hej", "text": "[[customer.shoesize]]"}, "unknown merge tag"),
    ],
)
async def test_unsendable_content_is_a_failed_outcome(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    step_changes: dict[str, Any],
    detail: str,
) -> None:
    with session(engine) as db:
        company = db.exec(select(Company)).one()
        company.name = "Bröd\r\nBcc: victim@elsewhere.example.com"
        db.add(company)
    step = _step(**step_changes)
    outcome = await asyncio.to_thread(
        EmailActivities(engine, smtp).send_email, _send(contact_id, step)
    )
    assert outcome.status is DeliveryStatus.failed
    assert outcome.detail is not None and detail in outcome.detail
    assert _ledger(engine).status == "failed"
    assert smtp_server[0].rcpt_attempts == 0


async def test_attachments_over_the_limit_fail(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mime, "MAX_ATTACHMENT_BYTES", 10)
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, _send(contact_id))
    assert outcome.status is DeliveryStatus.failed
    assert outcome.detail is not None and "attachments exceed" in outcome.detail
    assert smtp_server[0].rcpt_attempts == 0


async def test_missing_email_settings_fail(
    engine: Engine, contact_id: int, smtp: SmtpSettings
) -> None:
    outcome = await asyncio.to_thread(
        EmailActivities(engine, smtp).send_email, _send(contact_id, settings=None)
    )
    assert outcome.status is DeliveryStatus.failed


# --- notify_email ------------------------------------------------------------------------------


async def test_notify_email_one_send_per_recipient(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, _ = smtp_server
    # Internal mail needs no consent; the service contact is unset here.
    _update_contact(engine, contact_id, consents=[], our_service_contact_id=None)
    step = NotifyEmail.model_validate(
        {
            "id": "tell-seller",
            "type": "notify_email",
            "next": "end",
            "to": {
                "our_contact": True,
                "our_service_contact": True,
                "addresses": ["boss@ourco.example.com", "not an address", "olle@ourco.example.com"],
            },
            "subject": "[[customer.fullname]] at [[company.name]] opened the offer",
            "text": "Call [[customer.firstname]] at [[IF:customer.cellphone]][[customer.cellphone]]"
            "[[ELSE]]no number[[ENDIF]].",
        }
    )
    request = EmailNotify(
        delivery_key="participant-1/tell-seller/1",
        flow_id="spring-campaign",
        contact_id=contact_id,
        step=step,
        sender="Flows <flows@flows.example.com>",
    )
    activities = EmailActivities(engine, smtp)
    outcomes = await asyncio.to_thread(activities.notify_email, request)

    # The keys name the role or the address (masked in the outcomes, kept in the history).
    assert [(o.key.rsplit("/", 1)[1], o.status) for o in outcomes] == [
        ("our_contact", DeliveryStatus.sent),
        ("our_service_contact", DeliveryStatus.skipped),
        ("b…@ourco.example.com", DeliveryStatus.sent),
        ("not an address", DeliveryStatus.skipped),
        ("o…@ourco.example.com", DeliveryStatus.skipped),  # the same person as our contact
    ]
    assert [a.rcpt_tos for a in handler.accepted] == [
        ["olle@ourco.example.com"],
        ["boss@ourco.example.com"],
    ]
    first = handler.accepted[0].message
    assert first["From"] == "Flows <flows@flows.example.com>"
    assert first["Subject"] == "Anna Svensson at Bröd & Salt AB opened the offer"
    assert _text(first) == "Call Anna at no number.\n"
    assert first["Auto-Submitted"] == "auto-generated"
    assert first["Message-ID"] == message_id(outcomes[0].key, "mail.flows.example.com")
    assert first["List-Unsubscribe"] is None

    again = await asyncio.to_thread(activities.notify_email, request)
    assert all(o.already_settled for o in again)
    assert len(handler.accepted) == 2


# --- settings and the dev inbox ----------------------------------------------------------------


def test_smtp_settings_from_the_environment(
    tmp_path: Path, settings_env: Callable[..., Settings]
) -> None:
    defaults = SmtpSettings.from_settings(settings_env())
    assert (defaults.port, defaults.timeout, defaults.tracking) == (8025, 30.0, None)
    assert defaults.content_root == PROJECT_ROOT / "flows"
    settings = SmtpSettings.from_settings(
        settings_env(
            SMTP_HOST="mail.example.com",
            SMTP_PORT="587",
            SMTP_STARTTLS="true",
            SMTP_USERNAME="u",
            SMTP_PASSWORD="p",
            SMTP_TIMEOUT="5",
            SMTP_ENVELOPE_FROM="bounces@example.com",
            MESSAGE_ID_DOMAIN="m.example.com",
            LIST_UNSUBSCRIBE_URL="https://u.example.com/{contact_id}",
            SUBSCRIPTION_URL="https://u.example.com/s/{contact_id}",
            WEBVERSION_URL="https://u.example.com/w/{flow_id}",
            CONTENT_ROOT=str(tmp_path),
            TRACKING_BASE_URL="https://t.example.com",
            TRACKING_SECRET="s" * 16,
        )
    )
    assert (settings.host, settings.port, settings.starttls) == ("mail.example.com", 587, True)
    assert (settings.username, settings.password) == ("u", "p")
    assert (settings.timeout, settings.envelope_from) == (5.0, "bounces@example.com")
    assert settings.message_id_domain == "m.example.com"
    assert settings.subscription_url == "https://u.example.com/s/{contact_id}"
    assert settings.webversion_url == "https://u.example.com/w/{flow_id}"
    assert settings.content_root == tmp_path
    assert settings.tracking is not None and settings.tracking.base_url == "https://t.example.com"


async def test_dev_inbox_stores_what_the_activity_sends(
    engine: Engine, contact_id: int, content_root: Path, tmp_path: Path
) -> None:
    with running_inbox(tmp_path / "outbox") as inbox:
        assert inbox.messages() == []
        smtp = replace(
            inbox.settings,
            content_root=content_root,
            list_unsubscribe_url="https://flows.example.com/u/{contact_id}",
        )
        outcome = await asyncio.to_thread(
            EmailActivities(engine, smtp).send_email, _send(contact_id)
        )
    assert outcome.status is DeliveryStatus.sent
    [stored] = inbox.messages()
    assert stored.sender == "Olle Säljare <olle@ourco.example.com>"
    assert stored.recipients == "Anna Svensson <anna@brodsalt.example.com>"
    assert stored.subject == "Hej Anna från Bröd & Salt AB"
    assert stored.date.tzinfo is not None


def _entry(contact_id: int) -> ParticipantRecord:
    state = ParticipantState(
        participant_id="run-1",
        flow_id="spring-campaign",
        flow_version=1,
        contact_id=contact_id,
        current_step="step-mail",
        enrolled_at=utcnow(),
    )
    return ParticipantRecord(state=state)


async def test_the_send_records_the_steps_entry_in_its_transaction(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    request = _send(contact_id).model_copy(update={"record": _entry(contact_id)})
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, request)
    assert (outcome.status, outcome.leave_reason) == (DeliveryStatus.sent, None)
    with session(engine) as db:
        row = db.get(Participant, "run-1")
    assert row is not None and (row.status, row.current_step) == ("Active", "step-mail")


async def test_a_failed_entry_check_sends_and_claims_nothing(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    _update_contact(engine, contact_id, retired=True)
    request = _send(contact_id).model_copy(update={"record": _entry(contact_id)})
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, request)
    assert (outcome.status, outcome.leave_reason) == (DeliveryStatus.skipped, "former employee")
    assert smtp_server[0].rcpt_attempts == 0
    with session(engine) as db:
        assert db.exec(select(Delivery)).all() == []
        assert db.get(Participant, "run-1") is not None  # the entry is recorded all the same


async def test_a_retry_of_a_claimed_send_goes_on_whatever_the_checks_say_now(
    engine: Engine,
    contact_id: int,
    smtp: SmtpSettings,
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    """The checks belong to the step's entry: an earlier attempt that claimed the send passed
    them, so a retry never disowns a message that may have gone out."""
    # The first attempt claimed and sent it, and its completion was lost.
    assert claim(engine, KEY, "email", "anna@brodsalt.example.com") is None
    settle(engine, KEY, DeliveryStatus.sent, provider_id="<first@attempt>", detail="250 OK")
    _update_contact(engine, contact_id, retired=True)  # then the contact retired
    request = _send(contact_id).model_copy(update={"record": _entry(contact_id)})
    outcome = await asyncio.to_thread(EmailActivities(engine, smtp).send_email, request)
    assert (outcome.status, outcome.already_settled, outcome.leave_reason) == (
        DeliveryStatus.sent,
        True,
        None,
    )
    assert smtp_server[0].rcpt_attempts == 0
