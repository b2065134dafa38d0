"""What an email is made of and how it leaves, against a real SMTP server on loopback: content
files and attachments only from the content folder, header values from contact data cleaned the
same way in every header, a long subject folded cleanly, and the SMTP password never in clear.

Messages are checked as the server received them: the raw bytes the test inbox (aiosmtpd, a
Maildir) stored, or what an aiosmtpd handler saw.
"""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import ValidationError
from sqlalchemy import Engine
from temporalio.exceptions import ApplicationError

from activities.email import EmailActivities, EmailSend, SmtpSettings
from control.flows import FlowRejected, deploy_flow, read_document
from models.crm import Company, Contact
from models.database import session
from models.flow import EmailSettings, SendEmail
from models.ledger import DeliveryOutcome, DeliveryStatus
from models.settings import Settings
from models.validation import FlowReport, check_flow
from testkit.peers import Inbox, self_signed_certificate
from testkit.servers import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = EmailSettings.model_validate({"from": {"address": "news@flows.example.com"}})


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """These tests make their own CRM rows."""
    return empty_engine


def add_contact(engine: Engine, first_name: str = "Anna", company: str = "Bröd & Salt AB") -> int:
    with session(engine) as db:
        firm = Company(name=company)
        db.add(firm)
        db.flush()
        contact = Contact(
            company_id=firm.id,
            first_name=first_name,
            last_name="Svensson",
            email="anna@brodsalt.example.com",
            consents=[{"purpose": "emarketing", "legal_basis": "consent", "source": "form"}],
        )
        db.add(contact)
        db.flush()
        assert contact.id is not None
        return contact.id


def email_step(**fields: Any) -> SendEmail:
    return SendEmail.model_validate(
        {"id": "mail", "type": "send_email", "next": "done", "subject": "Hej", **fields}
    )


def send_request(contact_id: int, step: SendEmail) -> EmailSend:
    return EmailSend(
        delivery_key=f"p-{contact_id}/mail/1",
        flow_id="spring",
        flow_name="Spring",
        contact_id=contact_id,
        step=step,
        settings=SETTINGS,
    )


async def send(engine: Engine, smtp: SmtpSettings, request: EmailSend) -> DeliveryOutcome:
    return await asyncio.to_thread(EmailActivities(engine, smtp).send_email, request)


def received(inbox: Inbox) -> list[bytes]:
    """Each message the inbox holds, as the bytes the server received (after the envelope lines
    the inbox puts first)."""
    box = mailbox.Maildir(inbox.maildir, create=False)
    return [box.get_bytes(key).split(b"\r\n", 2)[2] for key in sorted(box.keys())]


def parsed(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def where(report: FlowReport) -> set[tuple[str, str | None, str]]:
    return {(p.level, p.step, p.field) for p in report.problems}


def flow_document(**step_fields: Any) -> dict[str, Any]:
    return {
        "id": "spring",
        "name": "Spring",
        "email": {"from": {"address": "news@flows.example.com"}},
        "start": "mail",
        "steps": [
            {"id": "mail", "type": "send_email", "next": "done", "subject": "Hej", **step_fields},
            {"id": "done", "type": "finish"},
        ],
    }


# --- content files and attachments: the content folder and nothing else -----------------------


@pytest.fixture
def content(tmp_path: Path) -> Path:
    """A content folder with a body and a price list, and, beside it, a file that is not content
    (and a link to it from inside the folder)."""
    folder = tmp_path / "content"
    (folder / "files").mkdir(parents=True)
    (folder / "spring.html").write_text("<h1>Spring, [[customer.firstname]]!</h1>", "utf-8")
    (folder / "files" / "prices.pdf").write_bytes(b"%PDF-1.4 prices\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the machine's own file\n", "utf-8")
    (folder / "files" / "link.pdf").symlink_to(secret)
    return folder


OUTSIDE = [
    pytest.param({"content_file": "/etc/passwd"}, "content_file", id="absolute content_file"),
    pytest.param(
        {"text": "Hej", "attachments": [{"path": "../../../../etc/shadow"}]},
        "attachments.0.path",
        id="attachment climbing out",
    ),
    pytest.param(
        {"text": "Hej", "attachments": [{"path": "files/../../secret.txt"}]},
        "attachments.0.path",
        id="attachment climbing out midway",
    ),
    pytest.param(
        {"text": "Hej", "attachments": [{"path": "files/link.pdf"}]},
        "attachments.0.path",
        id="attachment linked to a file outside",
    ),
]


@pytest.mark.parametrize(("fields", "field_name"), OUTSIDE)
def test_validate_refuses_a_file_outside_the_content_folder(
    content: Path, fields: dict[str, Any], field_name: str
) -> None:
    report = check_flow(flow_document(**fields), content_folder=content)
    assert ("error", "mail", field_name) in where(report)
    assert not report.can_save
    [problem] = [p for p in report.problems if p.field == field_name]
    assert "outside the content folder" in problem.message


def test_a_path_that_cannot_be_in_any_content_folder_is_refused_without_one() -> None:
    # What deploy and enrollment see without a folder at hand: the path alone says enough.
    for fields, field_name in (
        ({"content_file": "/etc/passwd"}, "content_file"),
        ({"text": "x", "attachments": [{"path": "../../../../etc/shadow"}]}, "attachments.0.path"),
        ({"text": "x", "attachments": [{"path": "C:\\Windows\\win.ini"}]}, "attachments.0.path"),
    ):
        report = check_flow(flow_document(**fields))
        assert ("error", "mail", field_name) in where(report), fields


def test_a_missing_file_can_be_saved_but_not_run(content: Path) -> None:
    document = flow_document(text="x", attachments=[{"path": "files/later.pdf"}])
    report = check_flow(document, content_folder=content)
    assert where(report) == {("not_ready", "mail", "attachments.0.path")}
    assert report.can_save and not report.can_run
    document["steps"][0]["attachments"] = [{"path": "files/prices.pdf"}]
    assert check_flow(document, content_folder=content).can_run


def test_a_flow_file_gets_its_content_file_from_the_content_folder_only(
    content: Path, tmp_path: Path
) -> None:
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow_document(content_file="/etc/passwd")), "utf-8")
    document = read_document(path, content)
    [mail, _] = document["steps"]
    assert "html" not in mail and mail["content_file"] == "/etc/passwd"  # not read, not inlined
    report = check_flow(document, content_folder=content)
    assert not report.can_save
    assert ("error", "mail", "content_file") in where(report)

    path.write_text(json.dumps(flow_document(content_file="spring.html")), "utf-8")
    [mail, _] = read_document(path, content)["steps"]
    assert mail["html"] == "<h1>Spring, [[customer.firstname]]!</h1>" and "content_file" not in mail


def test_deploy_refuses_a_flow_that_would_email_a_file_of_the_machine(
    engine: Engine, content: Path, tmp_path: Path, settings_env: Callable[..., Settings]
) -> None:
    settings_env(CONTENT_ROOT=str(content))
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow_document(content_file="/etc/passwd")), "utf-8")
    with pytest.raises(FlowRejected, match="outside the content folder"):
        deploy_flow(engine, read_document(path))


@pytest.mark.parametrize(("fields", "field_name"), OUTSIDE)
async def test_a_send_never_reads_a_file_outside_the_content_folder(
    engine: Engine, smtp_inbox: Inbox, content: Path, fields: dict[str, Any], field_name: str
) -> None:
    # Files and links may change after validation: the send checks again.
    smtp = replace(smtp_inbox.settings, content_root=content)
    contact_id = add_contact(engine)
    outcome = await send(engine, smtp, send_request(contact_id, email_step(**fields)))
    assert outcome.status is DeliveryStatus.failed
    assert outcome.detail is not None and "outside the content folder" in outcome.detail
    assert received(smtp_inbox) == []


async def test_a_send_reads_content_files_and_attachments_from_the_content_folder(
    engine: Engine, smtp_inbox: Inbox, content: Path
) -> None:
    smtp = replace(smtp_inbox.settings, content_root=content)
    step = email_step(content_file="spring.html", attachments=[{"path": "files/prices.pdf"}])
    outcome = await send(engine, smtp, send_request(add_contact(engine), step))
    assert outcome.status is DeliveryStatus.sent
    [raw] = received(smtp_inbox)
    message = parsed(raw)
    html = message.get_body(preferencelist=("html",))
    assert html is not None and "<h1>Spring, Anna!</h1>" in str(html.get_content())
    [attachment] = message.iter_attachments()
    assert attachment.get_content() == b"%PDF-1.4 prices\n"


# --- headers: author's values on one line, contact data cleaned, subjects folded cleanly -------


@pytest.mark.parametrize(
    ("email", "step_fields", "expected"),
    [
        (
            {"from": {"address": "news@flows.example.com", "name": "x\r\nBcc: all@example.com"}},
            {},
            (None, "email.from.name"),
        ),
        (
            {"from": {"address": "x\r\nBcc: all@example.com"}},
            {},
            (None, "email.from.address"),
        ),
        (
            {
                "from": {"address": "news@flows.example.com"},
                "reply_to": {"kind": "address", "address": "r@example.com\nBcc: all@example.com"},
            },
            {},
            (None, "email.reply_to.address"),
        ),
        (
            {"from": {"address": "news@flows.example.com"}},
            {"subject": "Hej\r\nBcc: all@example.com"},
            ("mail", "subject"),
        ),
    ],
)
def test_validate_refuses_a_header_value_on_more_than_one_line(
    email: dict[str, Any], step_fields: dict[str, Any], expected: tuple[str | None, str]
) -> None:
    document = {**flow_document(text="Hej", **step_fields), "email": email}
    report = check_flow(document)
    assert ("error", *expected) in where(report)
    assert not report.can_save


async def test_a_line_break_in_contact_data_is_cleaned_out_of_every_header(
    engine: Engine, smtp_inbox: Inbox
) -> None:
    # The same name in the To header and in the subject: cleaned alike, and the mail goes out.
    name = "Anna\r\nBcc: victim@elsewhere.example"
    contact_id = add_contact(engine, first_name=name, company="Bröd\nSalt")
    step = email_step(subject="Hej [[customer.firstname]] på [[company.name]]", text="Hej")
    outcome = await send(engine, smtp_inbox.settings, send_request(contact_id, step))
    assert outcome.status is DeliveryStatus.sent, outcome.detail

    [raw] = received(smtp_inbox)
    message = parsed(raw)
    assert message["Subject"] == "Hej Anna Bcc: victim@elsewhere.example på Bröd Salt"
    assert message["To"].addresses[0].display_name == "Anna Bcc: victim@elsewhere.example Svensson"
    assert message["Bcc"] is None
    assert not any(line.lower().startswith(b"bcc:") for line in header_lines(raw))


async def test_an_encoded_line_break_in_contact_data_adds_no_header(
    engine: Engine, smtp_inbox: Inbox
) -> None:
    # An RFC 2047 encoded word holding CR LF: decoded while the header is parsed, it would turn
    # into a real line break, and a header of its own.
    name = "=?utf-8?q?Anna=0D=0ABcc:_victim@elsewhere.example?="
    contact_id = add_contact(engine, first_name=name)
    step = email_step(subject="Hej [[customer.firstname]]", text="Hej")
    outcome = await send(engine, smtp_inbox.settings, send_request(contact_id, step))
    assert outcome.status is DeliveryStatus.sent, outcome.detail

    [raw] = received(smtp_inbox)
    message = parsed(raw)
    assert message["Bcc"] is None
    assert not any(line.lower().startswith(b"bcc:") for line in header_lines(raw))
    assert message["Subject"] == f"Hej {name}"  # arrives as written, not decoded
    assert "\n" not in message["To"] and "\r" not in message["To"]


@pytest.mark.parametrize(
    ("subject", "rendered"),
    [
        (
            "News for [[customer.firstname]] & co: our spring offers at "
            "https://shop.example.com/spring",
            "News for Anna & co: our spring offers at https://shop.example.com/spring",
        ),
        (
            "News for [[customer.firstname]] (and [[company.name]]): spring prices, offers, "
            "events and the programme of our webinar on durable flows",
            "News for Anna (and Bröd & Salt AB): spring prices, offers, events and the "
            "programme of our webinar on durable flows",
        ),
    ],
)
async def test_a_long_subject_is_folded_without_a_leading_blank(
    engine: Engine, smtp_inbox: Inbox, subject: str, rendered: str
) -> None:
    step = email_step(subject=subject, text="Hej")
    outcome = await send(engine, smtp_inbox.settings, send_request(add_contact(engine), step))
    assert outcome.status is DeliveryStatus.sent

    [raw] = received(smtp_inbox)
    lines = header_lines(raw)
    start = next(i for i, line in enumerate(lines) if line.startswith(b"Subject:"))
    assert lines[start].startswith(b"Subject: ") and lines[start][9:10] not in (b"", b" ")
    assert all(len(line) <= 78 for line in lines[start:] if line.startswith((b"Subject", b" ")))
    assert parsed(raw)["Subject"] == rendered


# --- settings: unknown booleans are errors, AUTH never in clear --------------------------------


BOOLEAN_SETTINGS = [
    name.upper() for name, f in Settings.model_fields.items() if f.annotation is bool
]


@pytest.mark.parametrize("variable", BOOLEAN_SETTINGS)
def test_an_unknown_boolean_value_is_an_error(
    settings_env: Callable[..., Settings], variable: str
) -> None:
    for meaning_on in ("true", "1", "yes", "on"):
        assert getattr(settings_env(**{variable: meaning_on}), variable.lower()) is True
    with pytest.raises(ValidationError, match=variable.lower()):
        settings_env(**{variable: "required"})


def test_the_worker_does_not_start_with_an_unknown_boolean_value() -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SMTP_STARTTLS": "required"}
    process = subprocess.run(
        [sys.executable, "worker.py"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode != 0
    assert "smtp_starttls" in process.stderr


def test_auth_without_tls_is_an_error_at_start(settings_env: Callable[..., Settings]) -> None:
    credentials = {"SMTP_USERNAME": "flows", "SMTP_PASSWORD": "s3cret"}
    with pytest.raises(ValueError, match="SMTP_AUTH_WITHOUT_TLS"):
        SmtpSettings.from_settings(settings_env(**credentials))
    with_tls = SmtpSettings.from_settings(settings_env(**credentials, SMTP_STARTTLS="true"))
    assert with_tls.starttls and not with_tls.auth_without_tls
    allowed = SmtpSettings.from_settings(settings_env(**credentials, SMTP_AUTH_WITHOUT_TLS="true"))
    assert allowed.auth_without_tls and not allowed.starttls
    assert SmtpSettings.from_settings(settings_env()).username is None  # no AUTH: no TLS needed


USER, PASSWORD = "flows", "s3cret"


@dataclass
class LoggingIn:
    """An aiosmtpd handler and authenticator: whether each AUTH came over TLS, and the mail."""

    logins: list[bool] = field(default_factory=list)  # True: over TLS
    accepted: list[bytes] = field(default_factory=list)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        self.logins.append(session.ssl is not None)
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=True) if ok else AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append(envelope.content)
        return "250 OK"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def smtp_server(certificate: tuple[Path, Path] | None) -> Iterator[tuple[LoggingIn, int]]:
    """A server that takes AUTH with or without TLS; it offers STARTTLS (without requiring it)
    when given a certificate."""
    handler = LoggingIn()
    tls: ssl.SSLContext | None = None
    if certificate is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*certificate)
    port = free_port()
    controller = Controller(
        handler,
        hostname=LOOPBACK,
        port=port,
        tls_context=tls,
        require_starttls=False,
        auth_require_tls=False,
        authenticator=handler,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def offering_starttls(certificate: tuple[Path, Path]) -> Iterator[tuple[LoggingIn, int]]:
    yield from smtp_server(certificate)


@pytest.fixture
def without_starttls() -> Iterator[tuple[LoggingIn, int]]:
    yield from smtp_server(None)


def logging_in(port: int, certificate: tuple[Path, Path], **changes: Any) -> SmtpSettings:
    settings = SmtpSettings(
        host=LOOPBACK,
        port=port,
        username=USER,
        password=PASSWORD,
        ca_file=str(certificate[0]),
        timeout=10,
    )
    return replace(settings, **changes)


async def test_the_password_never_goes_out_in_clear_to_a_server_offering_starttls(
    engine: Engine, offering_starttls: tuple[LoggingIn, int], certificate: tuple[Path, Path]
) -> None:
    handler, port = offering_starttls
    request = send_request(add_contact(engine), email_step(text="Hej"))
    in_clear = logging_in(port, certificate, starttls=False)
    with pytest.raises(ApplicationError, match="no TLS"):
        await send(engine, in_clear, request)  # released: sent once TLS is configured
    assert handler.logins == [] and handler.accepted == []

    outcome = await send(engine, logging_in(port, certificate, starttls=True), request)
    assert outcome.status is DeliveryStatus.sent
    assert handler.logins == [True] and len(handler.accepted) == 1


async def test_a_server_without_starttls_gets_no_password(
    engine: Engine, without_starttls: tuple[LoggingIn, int], certificate: tuple[Path, Path]
) -> None:
    handler, port = without_starttls
    request = send_request(add_contact(engine), email_step(text="Hej"))
    for changes in ({"starttls": True}, {"starttls": False}):
        with pytest.raises(ApplicationError):
            await send(engine, logging_in(port, certificate, **changes), request)
    assert handler.logins == [] and handler.accepted == []

    # Only where the setting says so (a relay on this host) does AUTH go without TLS.
    allowed = logging_in(port, certificate, starttls=False, auth_without_tls=True)
    outcome = await send(engine, allowed, request)
    assert outcome.status is DeliveryStatus.sent
    assert handler.logins == [False] and len(handler.accepted) == 1
