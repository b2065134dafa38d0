"""What an email is made of and how it leaves, against a real SMTP server on loopback: content
files and attachments only from the content folder, header values from contact data cleaned the
same way in every header, a long subject folded cleanly, and the SMTP password never in clear.

Messages are checked as the server received them: the raw bytes the test inbox (aiosmtpd, a
Maildir) stored, or what an aiosmtpd handler saw.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import ValidationError
from sqlalchemy import Engine
from temporalio.exceptions import ApplicationError

from activities.email import EmailActivities, EmailSend, SmtpSettings
from models.crm import Company, Contact
from models.database import session
from models.flow import EmailSettings, SendEmail
from models.ledger import DeliveryOutcome, DeliveryStatus
from models.settings import Settings
from testkit.peers import self_signed_certificate
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
