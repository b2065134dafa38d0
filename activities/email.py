"""Email steps (spec §3): send_email to the participant, notify_email to our own people.

Every hand-over to the SMTP server follows the delivery ledger's protocol (models.ledger): claim,
hand over, then settle or release. What each kind of trouble becomes:

- a check refuses the contact (no address, no consent, …) → a ``skipped`` outcome, returned;
- the message cannot be built (unknown merge tag, a CR/LF in the rendered subject, a missing or
  oversized attachment, no email settings) → a ``failed`` outcome, returned. Retrying cannot fix
  it, and the participant should move on with the reason on record, as after a bounce;
- a 5xx reply to RCPT → ``bounced``; a 5xx reply to MAIL or DATA → ``failed`` (both final);
- a 4xx reply, or connection/TLS/AUTH trouble before the end of DATA → ``release`` and raise, so
  Temporal retries with backoff (the server accepted nothing);
- the connection lost after the final dot of DATA → ``unconfirmed``: the server may hold the
  message and a duplicate is worse than an unconfirmed send (the ledger's at-most-once rule).

The point of no return (``mark_sending``) is between the message and the line with the final dot,
the line that makes the server take it: a worker killed before it has handed over nothing (the
server drops an unfinished message) and the retry sends; one killed after it leaves the key
``sending``, which the retry reads as ``unconfirmed`` — and the server has the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, parseaddr
from pathlib import Path
from urllib.parse import quote

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel
from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating
from activities.metrics import counts_messages
from models.crm import Contact, contact_facts
from models.database import PROJECT_ROOT, session
from models.flow import EmailSettings, NotifyEmail, ReplyTo, SendEmail, Sender
from models.ledger import (
    DeliveryOutcome,
    DeliveryStatus,
    claim,
    mark_sending,
    record_skip,
    release,
    settle,
)
from models.merge_tags import MergeTagError, render, render_header
from models.tracking_links import (
    Claims,
    TrackingLinks,
    rewrite_html,
    rewrite_text,
    with_open_pixel,
)

CHANNEL = "email"
MARKETING_PURPOSE = "emarketing"  # the consent purpose that allows marketing email
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024  # spec §3: at most 25 MB in total
# RFC 5321 §4.5.2: a line of the message that starts with a dot gets one more.
_LEADING_DOT = re.compile(rb"(?m)^\.")
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")

_ASSOCIATE_FACTS = {
    "our_contact": "contact.our_contact",
    "our_service_contact": "contact.our_service_contact",
}
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how email leaves, plus the values every message carries."""

    host: str = "localhost"
    port: int = 8025
    starttls: bool = False  # True: require STARTTLS; False: never upgrade
    username: str | None = None  # AUTH only when set
    password: str | None = None
    ca_file: str | None = None  # CA bundle to trust, e.g. a self-signed test certificate
    tls_context: ssl.SSLContext | None = None  # overrides ca_file
    timeout: float = 30.0
    envelope_from: str | None = None  # MAIL FROM (bounce address); default: the From address
    message_id_domain: str = "flows.local"
    # {contact_id} and {flow_id} in these URLs are replaced per message.
    list_unsubscribe_url: str | None = None
    list_unsubscribe_mailto: str | None = None
    subscription_url: str | None = None
    webversion_url: str | None = None
    content_root: Path = field(default_factory=lambda: PROJECT_ROOT / "flows")
    tracking: TrackingLinks | None = None  # set: links are tracked and opens may be

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpSettings:
        env = os.environ if environ is None else environ
        return cls(
            host=env.get("SMTP_HOST") or "localhost",
            port=int(env.get("SMTP_PORT") or 8025),
            starttls=env.get("SMTP_STARTTLS", "").strip().lower() in _TRUE,
            username=env.get("SMTP_USERNAME") or None,
            password=env.get("SMTP_PASSWORD") or None,
            ca_file=env.get("SMTP_CA_FILE") or None,
            timeout=float(env.get("SMTP_TIMEOUT") or 30),
            envelope_from=env.get("SMTP_ENVELOPE_FROM") or None,
            message_id_domain=env.get("MESSAGE_ID_DOMAIN") or "flows.local",
            list_unsubscribe_url=env.get("LIST_UNSUBSCRIBE_URL") or None,
            list_unsubscribe_mailto=env.get("LIST_UNSUBSCRIBE_MAILTO") or None,
            subscription_url=env.get("SUBSCRIPTION_URL") or None,
            webversion_url=env.get("WEBVERSION_URL") or None,
            content_root=Path(env.get("CONTENT_ROOT") or PROJECT_ROOT / "flows"),
            tracking=TrackingLinks.from_env(env),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_context is not None:
            return self.tls_context
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=self.ca_file)
        return None  # aiosmtplib's default: the system's CAs


class EmailSend(BaseModel):
    delivery_key: str
    flow_id: str
    flow_name: str
    contact_id: int
    step: SendEmail
    settings: EmailSettings | None


class EmailNotify(BaseModel):
    delivery_key: str
    flow_id: str
    contact_id: int
    step: NotifyEmail
    sender: str  # "flows@example.com" or "Flows <flows@example.com>"


def message_id(delivery_key: str, domain: str) -> str:
    """The same send always carries the same Message-ID, so duplicates are recognisable."""
    digest = hashlib.sha256(delivery_key.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


class Refused(Exception):
    """A check refused the contact: the send is skipped."""


class _Unsendable(Exception):
    """The message cannot be built or handed over; retrying would not help."""


class _Final(Exception):
    """The server gave a final answer (5xx) for this message."""

    def __init__(self, status: DeliveryStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Transient(Exception):
    """Nothing was accepted and a later attempt may succeed."""


class _Unconfirmed(Exception):
    """The connection broke while the message was being handed over."""


class _Superseded(Exception):
    """Another attempt passed the point of no return for this send first."""


@dataclass(frozen=True)
class _Outgoing:
    message: EmailMessage
    envelope_from: str
    recipient: str


def valid_address(address: str) -> str:
    return validate_email(address, check_deliverability=False).normalized


def _one_line(text: str | None) -> str:
    # Display names come from CRM data: collapse any line breaks rather than refuse the send.
    return " ".join((text or "").split())


def _associate_address(facts: dict[str, object], kind: str) -> Address | None:
    prefix = _ASSOCIATE_FACTS[kind]
    email, name = facts.get(f"{prefix}.email"), facts.get(f"{prefix}.name")
    if not isinstance(email, str) or not email:
        return None
    try:
        return Address(display_name=_one_line(str(name or "")), addr_spec=valid_address(email))
    except (EmailNotValidError, ValueError):
        return None  # a broken associate address falls back like a missing one


def _from_address(sender: Sender, facts: dict[str, object]) -> Address:
    if sender.kind != "address":
        associate = _associate_address(facts, sender.kind)
        if associate is not None:
            return associate
    assert sender.address is not None  # Sender's validator requires it
    return Address(display_name=_one_line(sender.name), addr_spec=sender.address)


def _reply_to(reply_to: ReplyTo, sender: Address, facts: dict[str, object]) -> Address | None:
    if reply_to.kind == "none":
        return None
    if reply_to.kind == "same_as_from":
        return sender
    if reply_to.kind != "address":
        associate = _associate_address(facts, reply_to.kind)
        if associate is not None:
            return associate
    assert reply_to.address is not None  # ReplyTo's validator requires it
    return Address(addr_spec=reply_to.address)


def marketing_recipient(
    contact: Contact, facts: dict[str, object], subscription_type: str | None
) -> str:
    """The contact's address if marketing email may go to it; raises Refused otherwise."""
    if contact.retired:
        raise Refused("former employee (retired)")
    if contact.no_mailings:
        raise Refused("marked no mailings")
    if not contact.email:
        raise Refused("no email address")
    try:
        address = valid_address(contact.email)
    except EmailNotValidError as error:
        raise Refused(f"invalid email address {contact.email!r}: {error}") from None
    consents = facts.get("contact.consents")
    if not isinstance(consents, list) or MARKETING_PURPOSE not in consents:
        raise Refused(f"no consent for {MARKETING_PURPOSE}")
    subscriptions = facts.get("contact.subscriptions")
    if subscription_type is not None and (
        not isinstance(subscriptions, list) or subscription_type not in subscriptions
    ):
        raise Refused(f"not subscribed to {subscription_type!r}")
    return address


class EmailActivities:
    """The email activities; sync, so the worker runs them in its thread pool.

    ``after_handover`` is a test hook: it is called with the delivery key after the server
    accepted a message *and* the ledger recorded it as sent. An exception raised there fails the
    activity the way a lost completion report would; the retry then finds the ``sent`` row and
    sends nothing. (Calling it before ``settle`` would leave the row ``sending``, which the next
    claim turns into ``unconfirmed``: still one delivery, but a wrong ledger.)
    """

    def __init__(
        self,
        engine: Engine,
        smtp: SmtpSettings,
        *,
        after_handover: Callable[[str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._smtp = smtp
        self._tls_context = smtp.ssl_context()
        self._after_handover = after_handover

    @activity.defn
    @counts_messages
    def send_email(self, request: EmailSend) -> DeliveryOutcome:
        key = request.delivery_key
        with session(self._engine) as db:
            contact = db.get(Contact, request.contact_id)
            facts = contact_facts(db, request.contact_id)
        if contact is None or facts is None:
            return record_skip(self._engine, key, CHANNEL, "", "contact not found")
        if request.settings is None:
            return self._record_failure(key, contact.email or "", "the flow has no email settings")
        try:
            recipient = marketing_recipient(contact, facts, request.settings.subscription_type)
        except Refused as refusal:
            return record_skip(self._engine, key, CHANNEL, contact.email or "", str(refusal))
        try:
            outgoing = self._marketing_message(request, request.settings, facts, contact, recipient)
        except _Unsendable as problem:
            return self._record_failure(key, recipient, str(problem))
        return self._deliver(key, outgoing)

    @activity.defn
    @counts_messages
    def notify_email(self, request: EmailNotify) -> list[DeliveryOutcome]:
        with session(self._engine) as db:
            facts = contact_facts(db, request.contact_id)
        targets: list[tuple[str, str | None]] = []  # (recipient label, address)
        if request.step.to.our_contact:
            targets.append(("our_contact", _fact_text(facts, "contact.our_contact.email")))
        if request.step.to.our_service_contact:
            address = _fact_text(facts, "contact.our_service_contact.email")
            targets.append(("our_service_contact", address))
        targets.extend((address, address) for address in request.step.to.addresses)

        outcomes: list[DeliveryOutcome] = []
        seen: dict[str, str] = {}  # address -> label that already got it
        for label, address in targets:
            # The label, not the address, keys the send: a retry after our contact changed
            # must find the earlier outcome, not mail the new one too.
            key = f"{request.delivery_key}/{label}"
            outcomes.append(self._notify_one(request, facts, key, label, address, seen))
        return outcomes

    # --- building messages -------------------------------------------------------------------

    def _links(self, contact_id: int, flow_id: str) -> dict[str, str]:
        urls = {
            "unsubscribe": self._smtp.list_unsubscribe_url,
            "subscription": self._smtp.subscription_url,
            "webversion": self._smtp.webversion_url,
        }
        return {
            name: _fill_url(url, contact_id, flow_id)
            for name, url in urls.items()
            if url is not None
        }

    def _list_unsubscribe(self, contact_id: int, flow_id: str) -> str | None:
        targets: list[str] = []
        if self._smtp.list_unsubscribe_mailto:
            mailto = self._smtp.list_unsubscribe_mailto
            targets.append(mailto if mailto.startswith("mailto:") else f"mailto:{mailto}")
        if self._smtp.list_unsubscribe_url:
            targets.append(_fill_url(self._smtp.list_unsubscribe_url, contact_id, flow_id))
        return ", ".join(f"<{target}>" for target in targets) or None

    def _content_path(self, relative: str) -> Path:
        root = self._smtp.content_root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise _Unsendable(f"{relative!r} is outside the content folder")
        if not path.is_file():
            raise _Unsendable(f"{relative!r} not found in {root}")
        return path

    def _marketing_message(
        self,
        request: EmailSend,
        settings: EmailSettings,
        facts: dict[str, object],
        contact: Contact,
        recipient: str,
    ) -> _Outgoing:
        step = request.step
        links = self._links(request.contact_id, request.flow_id)
        html_source = step.html
        if html_source is None and step.content_file is not None:
            path = self._content_path(step.content_file)
            try:
                html_source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise _Unsendable(f"cannot read {step.content_file!r}: {error}") from None
        try:
            subject = render_header(step.subject, facts, links=links)
            html = (
                None if html_source is None else render(html_source, facts, html=True, links=links)
            )
            text = None if step.text is None else render(step.text, facts, links=links)
        except MergeTagError as error:
            raise _Unsendable(str(error)) from None
        if self._smtp.tracking is not None:
            html, text = _tracked(self._smtp.tracking, request, html, text, set(links.values()))

        try:
            sender = _from_address(settings.sender, facts)
            message = EmailMessage()
            message["From"] = sender
            message["To"] = Address(display_name=_one_line(contact.full_name), addr_spec=recipient)
            reply_to = _reply_to(settings.reply_to, sender, facts)
            if reply_to is not None:
                message["Reply-To"] = reply_to
            message["Subject"] = subject
            message["Date"] = formatdate(usegmt=True)
            message["Message-ID"] = message_id(request.delivery_key, self._smtp.message_id_domain)
            list_unsubscribe = self._list_unsubscribe(request.contact_id, request.flow_id)
            if list_unsubscribe is not None:
                message["List-Unsubscribe"] = list_unsubscribe
        except ValueError as error:  # an unusable address or header value
            raise _Unsendable(f"bad header: {error}") from None

        if text is not None:
            message.set_content(text)
            if html is not None:
                message.add_alternative(html, subtype="html")
        elif html is not None:
            message.set_content(html, subtype="html")

        total = 0
        for attachment in step.attachments:
            path = self._content_path(attachment.path)
            total += path.stat().st_size
            if total > MAX_ATTACHMENT_BYTES:  # checked at validation too; files may have grown
                raise _Unsendable(f"attachments exceed {MAX_ATTACHMENT_BYTES // 2**20} MB in total")
            filename = attachment.filename or path.name
            mime_type, _ = mimetypes.guess_type(filename)
            maintype, subtype = (mime_type or "application/octet-stream").split("/", 1)
            try:
                data = path.read_bytes()
            except OSError as error:
                raise _Unsendable(f"cannot read {attachment.path!r}: {error}") from None
            message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
        envelope_from = self._smtp.envelope_from or sender.addr_spec
        return _Outgoing(message=message, envelope_from=envelope_from, recipient=recipient)

    def _notify_one(
        self,
        request: EmailNotify,
        facts: dict[str, object] | None,
        key: str,
        label: str,
        address: str | None,
        seen: dict[str, str],
    ) -> DeliveryOutcome:
        if facts is None:
            return record_skip(self._engine, key, CHANNEL, address or "", "contact not found")
        if not address:
            return record_skip(self._engine, key, CHANNEL, "", f"{label}: no email address")
        try:
            recipient = valid_address(address)
        except EmailNotValidError as error:
            reason = f"{label}: invalid email address {address!r}: {error}"
            return record_skip(self._engine, key, CHANNEL, address, reason)
        if recipient in seen:
            reason = f"same address as {seen[recipient]}: sent once"
            return record_skip(self._engine, key, CHANNEL, recipient, reason)
        seen[recipient] = label

        links = self._links(request.contact_id, request.flow_id)
        try:
            subject = render_header(request.step.subject, facts, links=links)
            text = render(request.step.text, facts, links=links)
            message = EmailMessage()
            message["From"] = request.sender
            message["To"] = recipient
            message["Subject"] = subject
            message["Date"] = formatdate(usegmt=True)
            message["Message-ID"] = message_id(key, self._smtp.message_id_domain)
            message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
            message.set_content(text)
        except ValueError as error:  # MergeTagError, or an unusable header value
            return self._record_failure(key, recipient, str(error))
        envelope_from = self._smtp.envelope_from or parseaddr(request.sender)[1]
        return self._deliver(key, _Outgoing(message, envelope_from, recipient))

    # --- the hand-over -----------------------------------------------------------------------

    def _record_failure(self, key: str, recipient: str, reason: str) -> DeliveryOutcome:
        claimed = claim(self._engine, key, CHANNEL, recipient)
        if claimed is not None:
            return claimed
        return settle(self._engine, key, DeliveryStatus.failed, detail=reason)

    def _deliver(self, key: str, outgoing: _Outgoing) -> DeliveryOutcome:
        claimed = claim(self._engine, key, CHANNEL, outgoing.recipient)
        if claimed is not None:
            return claimed  # handled by an earlier attempt: never send twice
        try:
            reply = asyncio.run(self._hand_over(outgoing, lambda: mark_sending(self._engine, key)))
        except _Superseded as superseded:
            # Retried later, this attempt finds the other one's outcome.
            raise ApplicationError(str(superseded), type="SendInProgress") from None
        except _Final as final:
            return settle(self._engine, key, final.status, detail=final.detail)
        except _Unsendable as problem:
            return settle(self._engine, key, DeliveryStatus.failed, detail=str(problem))
        except _Unconfirmed as lost:
            return settle(self._engine, key, DeliveryStatus.unconfirmed, detail=str(lost))
        except _Transient as trouble:
            release(self._engine, key, str(trouble))
            raise ApplicationError(str(trouble), type="SmtpUnavailable") from trouble
        outcome = settle(
            self._engine,
            key,
            DeliveryStatus.sent,
            provider_id=str(outgoing.message["Message-ID"]),
            detail=reply,
        )
        if self._after_handover is not None:
            self._after_handover(key)
        return outcome

    async def _hand_over(self, outgoing: _Outgoing, point_of_no_return: Callable[[], bool]) -> str:
        """One SMTP conversation for one message; returns the server's reply to DATA.

        ``point_of_no_return()`` is called once the whole message but its final dot is on its
        way; False stops there, and the server, never sent the dot, keeps nothing."""
        async with heartbeating():  # a worker that dies here is noticed within seconds
            return await self._converse(outgoing, point_of_no_return)

    async def _converse(self, outgoing: _Outgoing, point_of_no_return: Callable[[], bool]) -> str:
        smtp = self._smtp
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            start_tls=smtp.starttls,
            tls_context=self._tls_context,
            timeout=smtp.timeout,
        )
        payload = outgoing.message.as_bytes(policy=SMTP_POLICY)
        try:
            try:
                await client.connect()
                if smtp.username is not None:
                    await client.login(smtp.username, smtp.password or "")
                await client.mail(outgoing.envelope_from)
                await client.rcpt(outgoing.recipient)
            except aiosmtplib.SMTPRecipientRefused as error:
                if error.code >= 500:
                    raise _Final(DeliveryStatus.bounced, f"{error.code} {error.message}") from None
                raise _Transient(f"recipient deferred: {error.code} {error.message}") from error
            except aiosmtplib.SMTPSenderRefused as error:
                if error.code >= 500:
                    raise _Final(DeliveryStatus.failed, f"sender refused: {error}") from None
                raise _Transient(f"sender deferred: {error.code} {error.message}") from error
            except (aiosmtplib.SMTPException, OSError) as error:
                # Connection, TLS, AUTH or EHLO trouble is the setup's, not the message's.
                raise _Transient(f"SMTP server unavailable: {error!r}") from error
            except ValueError as error:  # e.g. an address the server's encoding cannot carry
                raise _Unsendable(f"cannot hand over: {error}") from None

            try:
                await _send_message_data(client, payload)
            except aiosmtplib.SMTPResponseException as error:
                if error.code >= 500:
                    raise _Final(DeliveryStatus.failed, f"{error.code} {error.message}") from None
                raise _Transient(f"message deferred: {error.code} {error.message}") from error
            except (aiosmtplib.SMTPException, OSError) as error:
                # Without the final dot the server keeps nothing.
                raise _Transient(f"connection lost before the end of DATA: {error!r}") from error

            if not point_of_no_return():
                raise _Superseded("another attempt is handing this message over")
            protocol = client.protocol
            if protocol is None or not protocol.is_connected:
                # Lost before the final dot went out: the server has nothing.
                raise _Transient("connection lost before the end of DATA")
            try:
                response = await _end_message_data(protocol, smtp.timeout)
            except aiosmtplib.SMTPResponseException as error:
                if error.code >= 500:
                    raise _Final(DeliveryStatus.failed, f"{error.code} {error.message}") from None
                raise _Transient(f"message deferred: {error.code} {error.message}") from error
            except (aiosmtplib.SMTPException, OSError) as error:
                raise _Unconfirmed(f"connection lost at the end of DATA: {error!r}") from error
            return f"{response.code} {response.message}"
        finally:
            if client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()
            client.close()


async def _send_message_data(client: aiosmtplib.SMTP, payload: bytes) -> None:
    """DATA, then the message without the line that ends it (aiosmtplib's ``data`` sends both
    at once: the ledger's point of no return has to sit between them)."""
    start = await client.execute_command(b"DATA")
    if start.code != aiosmtplib.SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol = client.protocol
    if protocol is None or protocol.transport is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost")
    body = _LEADING_DOT.sub(b"..", _LINE_ENDS.sub(b"\r\n", payload))
    protocol.write(body if body.endswith(b"\r\n") else body + b"\r\n")
    # Everything but the dot out of our process before the point of no return, so that the dot
    # is all that a kill after it could hold back.
    transport = protocol.transport
    assert isinstance(transport, asyncio.WriteTransport)
    deadline = time.monotonic() + client.timeout if client.timeout else None
    while transport.get_write_buffer_size() > 0:
        if transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost during DATA")
        if deadline is not None and time.monotonic() > deadline:
            raise aiosmtplib.SMTPTimeoutError("timed out sending the message")
        await asyncio.sleep(0.001)


async def _end_message_data(protocol: SMTPProtocol, timeout: float) -> aiosmtplib.SMTPResponse:
    """The final dot, which makes the server take the message, and its answer."""
    protocol.write(b".\r\n")
    response = await protocol.read_response(timeout=timeout)
    if response.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


def _tracked(
    tracking: TrackingLinks,
    request: EmailSend,
    html: str | None,
    text: str | None,
    untracked: set[str],
) -> tuple[str | None, str | None]:
    """The bodies with every link sent through the tracking service (spec §5), and the open
    pixel when the step tracks opens. Unsubscribe and subscription links stay untracked."""
    claims = Claims(
        contact_id=request.contact_id,
        flow_id=request.flow_id,
        step_id=request.step.id,
        delivery_key=request.delivery_key,
    )

    def click_url(url: str) -> str:
        return tracking.click_url(replace(claims, url=url))

    if html is not None:
        html = rewrite_html(html, click_url, untracked=untracked)
        if request.step.track_opens:
            html = with_open_pixel(html, tracking.open_url(claims))
    if text is not None:
        text = rewrite_text(text, click_url, untracked=untracked)
    return html, text


def _fact_text(facts: dict[str, object] | None, name: str) -> str | None:
    value = (facts or {}).get(name)
    return value if isinstance(value, str) and value else None


def _fill_url(url: str, contact_id: int, flow_id: str) -> str:
    # Plain replacement, not str.format: a URL's own braces must not be interpreted.
    return url.replace("{contact_id}", quote(str(contact_id))).replace("{flow_id}", quote(flow_id))
