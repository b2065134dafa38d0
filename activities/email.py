"""Email steps (spec §3): send_email to the participant, notify_email to our own people.

Who may be emailed is decided in models.consent and the message is built in activities.mime;
this module holds the activities and their SMTP conversation.

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
import functools
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.policy import SMTP as SMTP_POLICY
from typing import TypeVar, cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import cancellation_deferred, heartbeating_in_background
from activities.metrics import counts_messages
from activities.mime import (
    MessageSettings,
    Outgoing,
    Unsendable,
    marketing_message,
    notification_message,
)
from activities.participants import ParticipantRecord, departed, enter_message_step
from models.consent import Refused, marketing_recipient, notification_recipient
from models.crm import Contact, contact_facts
from models.database import PROJECT_ROOT, session
from models.flow import EmailSettings, NotifyEmail, SendEmail
from models.frequency_caps import Capping, Channel
from models.ledger import (
    DeliveryOutcome,
    DeliveryStatus,
    claim,
    claiming,
    mark_sending,
    record_skip,
    release,
    settle,
    settle_in,
    settle_unsent,
)
from models.send_counts import claim_within_caps
from models.sending import NO_SENDING_SETTINGS, SendingSettings
from models.settings import Settings, get_settings
from models.tracking_links import TrackingLinks

CHANNEL: Channel = "email"
# A kept SMTP connection serves this many messages, and is not reused after this long idle
# (servers drop idle clients after a few minutes: RFC 5321 §4.5.3.2.7).
MESSAGES_PER_CONNECTION = 100
CONNECTION_IDLE_SECONDS = 30.0
T = TypeVar("T")
# RFC 5321 §4.5.2: a line of the message that starts with a dot gets one more.
_LEADING_DOT = re.compile(rb"(?m)^\.")
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_FINAL_DOT = b".\r\n"  # the line that makes the server take the message

# Called with the final dot's write once all but that dot is on its way: it writes the dot and
# returns True, or returns False without writing it (another attempt got there first).
PointOfNoReturn = Callable[[Callable[[], None]], bool]


def _unrecorded(final_dot: Callable[[], None]) -> bool:
    """The point of no return of a send kept out of the ledger: nothing to mark first."""
    final_dot()
    return True


@dataclass(frozen=True, kw_only=True)
class SmtpSettings(MessageSettings):
    """Where and how email leaves, plus (``MessageSettings``) the values every message carries."""

    host: str = "localhost"
    port: int = 8025
    starttls: bool = False  # True: require STARTTLS; False: never upgrade
    username: str | None = None  # AUTH only when set
    password: str | None = None
    auth_without_tls: bool = False  # True: AUTH may go over a connection without TLS
    ca_file: str | None = None  # CA bundle to trust, e.g. a self-signed test certificate
    tls_context: ssl.SSLContext | None = None  # overrides ca_file
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SmtpSettings:
        """The settings' SMTP values; raises ValueError when they would send the password
        without TLS (the worker then does not start)."""
        settings = settings or get_settings()
        password = settings.smtp_password
        if (
            settings.smtp_username is not None
            and not settings.smtp_starttls
            and not settings.smtp_auth_without_tls
        ):
            raise ValueError(
                "SMTP_USERNAME is set but SMTP_STARTTLS is not true: the password would go out "
                "in clear; set SMTP_STARTTLS=true, or SMTP_AUTH_WITHOUT_TLS=true for a relay "
                "that needs no TLS"
            )
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=password.get_secret_value() if password is not None else None,
            auth_without_tls=settings.smtp_auth_without_tls,
            ca_file=settings.smtp_ca_file,
            timeout=settings.smtp_timeout,
            envelope_from=settings.smtp_envelope_from,
            message_id_domain=settings.message_id_domain,
            list_unsubscribe_url=settings.list_unsubscribe_url,
            list_unsubscribe_mailto=settings.list_unsubscribe_mailto,
            subscription_url=settings.subscription_url,
            webversion_url=settings.webversion_url,
            content_root=settings.content_root or PROJECT_ROOT / "flows",
            tracking=TrackingLinks.from_settings(settings),
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
    # The step's entry record and its checks, when the participant leaves them to the send (one
    # transaction for both); absent in sends scheduled before, which were recorded apart.
    record: ParticipantRecord | None = None
    # The row the participant leaves with through the finish after this step: the send makes
    # that last record too. Absent unless the step goes on to a finish without hand-offs.
    departure: ParticipantRecord | None = None
    # The frequency caps this message counts toward, and what the flow does over one; None for
    # messages the caps never hold (transactional ones) and sends scheduled before caps existed.
    capping: Capping | None = None


class EmailNotify(BaseModel):
    delivery_key: str
    flow_id: str
    contact_id: int
    step: NotifyEmail
    sender: str  # "flows@example.com" or "Flows <flows@example.com>"
    record: ParticipantRecord | None = None  # the step's entry, to record and check first


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
        sending: SendingSettings = NO_SENDING_SETTINGS,
        after_handover: Callable[[str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._smtp = smtp
        self._caps = sending.caps(CHANNEL)
        self._ceiling = sending.rate_limits.of(CHANNEL)
        self._lines = SmtpLines(smtp)
        self._after_handover = after_handover

    @activity.defn
    @counts_messages
    def send_email(self, request: EmailSend) -> DeliveryOutcome:
        return self._send_email(request)

    @activity.defn
    @counts_messages
    def send_email_locally(self, request: EmailSend) -> DeliveryOutcome | None:
        """``send_email`` as a local activity of the participant's own worker: no activity task
        through the server. None, having done nothing, when the channel has a provider ceiling
        (``rate_limits.email``): the channel's task queue holds that, so the participant sends
        there instead."""
        if self._ceiling is not None:
            return None
        return self._send_email(request)

    def _send_email(self, request: EmailSend) -> DeliveryOutcome:
        # A worker that dies during the send is noticed within seconds; a live one blocked in the
        # database or starved of the GIL keeps beating from its own thread (a local activity
        # has no heartbeat: its workflow task times out instead).
        with heartbeating_in_background():
            key = request.delivery_key
            prepared = claiming(self._engine, key, lambda db: self._prepare(db, request))
            if isinstance(prepared, Outgoing):
                prepared = self._hand_over_claimed(key, prepared)
            return departed(self._engine, request.departure, prepared)

    def _prepare(self, db: Session, request: EmailSend) -> DeliveryOutcome | Outgoing:
        """In one transaction: record the step's entry and make the checks before it (when the
        request carries the record), read the contact, check and build the message, and claim
        the send (an ``Outgoing`` to hand over), or settle it without one (the outcome, maybe
        earlier)."""
        key = request.delivery_key
        if request.record is not None:
            left = enter_message_step(db, request.record, key, CHANNEL)
            if left is not None:
                return left
        contact = db.get(Contact, request.contact_id)
        facts = contact_facts(db, request.contact_id)
        if contact is None or facts is None:
            return settle_in(db, key, CHANNEL, "", DeliveryStatus.skipped, "contact not found")
        if request.settings is None:
            reason = "the flow has no email settings"
            return settle_in(db, key, CHANNEL, contact.email or "", DeliveryStatus.failed, reason)
        try:
            recipient = marketing_recipient(contact, facts, request.settings.subscription_type)
        except Refused as refusal:
            address = contact.email or ""
            return settle_in(db, key, CHANNEL, address, DeliveryStatus.skipped, str(refusal))
        try:
            outgoing = marketing_message(
                self._smtp,
                request.step,
                request.settings,
                delivery_key=key,
                contact_id=request.contact_id,
                flow_id=request.flow_id,
                contact=contact,
                facts=facts,
                recipient=recipient,
            )
        except Unsendable as problem:
            return settle_in(db, key, CHANNEL, recipient, DeliveryStatus.failed, str(problem))
        claimed = claim_within_caps(
            db,
            key,
            CHANNEL,
            outgoing.recipient,
            contact_id=request.contact_id,
            capping=request.capping,
            caps=self._caps,
            facts=facts,
        )
        return outgoing if claimed is None else claimed

    @activity.defn
    @counts_messages
    def notify_email(self, request: EmailNotify) -> list[DeliveryOutcome]:
        with session(self._engine) as db:
            if request.record is not None:
                key = request.delivery_key
                left = enter_message_step(db, request.record, key, CHANNEL, per_recipient=True)
                if left is not None:
                    return [left]
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
        try:
            recipient = notification_recipient(label, address)
        except Refused as refusal:
            return record_skip(self._engine, key, CHANNEL, address or "", str(refusal))
        if recipient in seen:
            reason = f"same address as {seen[recipient]}: sent once"
            return record_skip(self._engine, key, CHANNEL, recipient, reason)
        seen[recipient] = label
        try:
            outgoing = notification_message(
                self._smtp,
                request.step,
                delivery_key=key,
                contact_id=request.contact_id,
                flow_id=request.flow_id,
                sender=request.sender,
                facts=facts,
                recipient=recipient,
            )
        except Unsendable as problem:
            failed = DeliveryStatus.failed
            return settle_unsent(self._engine, key, CHANNEL, recipient, failed, str(problem))
        return self._deliver(key, outgoing)

    # --- the hand-over -----------------------------------------------------------------------

    def _deliver(self, key: str, outgoing: Outgoing) -> DeliveryOutcome:
        with heartbeating_in_background():
            claimed = claim(self._engine, key, CHANNEL, outgoing.recipient)
            if claimed is not None:
                return claimed  # handled by an earlier attempt: never send twice
            return self._hand_over_claimed(key, outgoing)

    def _hand_over_claimed(self, key: str, outgoing: Outgoing) -> DeliveryOutcome:
        # From the mark to the settled outcome no cancellation of this attempt (a timeout, an
        # ended flow) may cut in: landing after the mark and before the final dot, it would leave
        # the row `sending` with nothing handed over, and the retry would not send it. One that
        # arrives meanwhile is raised once the outcome is settled; the retry then finds it.
        with contextlib.ExitStack() as no_return:

            def point_of_no_return(final_dot: Callable[[], None]) -> bool:
                no_return.enter_context(cancellation_deferred())
                return mark_sending(self._engine, key, hand_over=final_dot)

            return self._settle(key, outgoing, point_of_no_return)

    def _settle(
        self, key: str, outgoing: Outgoing, point_of_no_return: PointOfNoReturn
    ) -> DeliveryOutcome:
        try:
            reply = self._lines.run(lambda line: _converse(line, outgoing, point_of_no_return))
        except _Superseded as superseded:
            # Retried later, this attempt finds the other one's outcome.
            raise ApplicationError(str(superseded), type="SendInProgress") from None
        except _Final as final:
            return settle(self._engine, key, final.status, detail=final.detail)
        except Unsendable as problem:
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


async def _converse(line: SmtpLine, outgoing: Outgoing, point_of_no_return: PointOfNoReturn) -> str:
    """One message over the thread's SMTP connection; returns the server's reply to DATA.

    ``point_of_no_return`` is called with the final dot's write once the whole message but that
    dot is on its way; False (the dot not written) stops there, and the server keeps nothing. A
    connection kept from an earlier message that turns out broken before the final dot is
    replaced by a fresh one and the message begun again: without the dot the server kept nothing
    of the first try."""
    payload = outgoing.message.as_bytes(policy=SMTP_POLICY)
    while True:
        client, reused = await _connection(line)
        try:
            await _up_to_the_final_dot(client, outgoing, payload)
        except _Transient as trouble:
            _hang_up(client)
            if reused and _broken(trouble.__cause__):
                continue  # the kept connection had died meanwhile: once more on a fresh one
            raise
        except BaseException:
            _hang_up(client)
            raise
        break
    try:
        response = await _the_final_dot(client, line.settings.timeout, point_of_no_return)
    except BaseException:
        _hang_up(client)  # without the dot the server drops an unfinished message
        raise
    # The transaction is complete: the next message of this thread may use the connection.
    line.keep(client, reused)
    return response


def _answered(
    error: aiosmtplib.SMTPResponseException,
    status: DeliveryStatus,
    deferred: str,
    final: str | None = None,
) -> _Final | _Transient:
    """What a refusal from the server means: a 5xx answer is final (``status``, with the answer
    or ``final`` as the detail), any other is worth another attempt later."""
    answer = f"{error.code} {error.message}"
    if error.code >= 500:
        return _Final(status, final or answer)
    return _Transient(f"{deferred}: {answer}")


async def _the_final_dot(
    client: aiosmtplib.SMTP, timeout: float, point_of_no_return: PointOfNoReturn
) -> str:
    protocol = client.protocol
    if protocol is None or not protocol.is_connected:
        # Lost before the final dot went out: the server has nothing.
        raise _Transient("connection lost before the end of DATA")
    try:
        marked = point_of_no_return(functools.partial(protocol.write, _FINAL_DOT))
    except aiosmtplib.SMTPException as error:  # the write, after the mark: as at the answer
        raise _Unconfirmed(f"connection lost at the end of DATA: {error!r}") from error
    if not marked:
        raise _Superseded("another attempt is handing this message over")
    try:
        response = await _answer_to_data(protocol, timeout)
    except aiosmtplib.SMTPResponseException as error:
        raise _answered(error, DeliveryStatus.failed, "message deferred") from error
    except (aiosmtplib.SMTPException, OSError) as error:
        raise _Unconfirmed(f"connection lost at the end of DATA: {error!r}") from error
    return f"{response.code} {response.message}"


async def _connection(line: SmtpLine) -> tuple[aiosmtplib.SMTP, bool]:
    """The thread's kept connection (True) or a new one, greeted and logged in (False)."""
    kept = line.take()
    if kept is not None:
        return kept, True
    smtp = line.settings
    client = aiosmtplib.SMTP(
        hostname=smtp.host,
        port=smtp.port,
        start_tls=smtp.starttls,
        tls_context=line.tls_context,
        timeout=smtp.timeout,
        local_hostname=_local_hostname(),
    )
    try:
        await client.connect()
        if smtp.username is not None:
            if not smtp.auth_without_tls and client.get_transport_info("sslcontext") is None:
                raise _Transient("SMTP AUTH refused: the connection has no TLS (SMTP_STARTTLS)")
            await client.login(smtp.username, smtp.password or "")
    except (aiosmtplib.SMTPException, OSError) as error:
        _hang_up(client)
        # Connection, TLS, AUTH or EHLO trouble is the setup's, not the message's.
        raise _Transient(f"SMTP server unavailable: {error!r}") from error
    except BaseException:
        _hang_up(client)
        raise
    return client, False


async def _up_to_the_final_dot(client: aiosmtplib.SMTP, outgoing: Outgoing, payload: bytes) -> None:
    """MAIL, RCPT, DATA and the message, all but the line that ends it."""
    try:
        await client.mail(outgoing.envelope_from)
        await client.rcpt(outgoing.recipient)
    except aiosmtplib.SMTPRecipientRefused as error:
        raise _answered(error, DeliveryStatus.bounced, "recipient deferred") from error
    except aiosmtplib.SMTPSenderRefused as error:
        raise _answered(
            error, DeliveryStatus.failed, "sender deferred", final=f"sender refused: {error}"
        ) from error
    except (aiosmtplib.SMTPException, OSError) as error:
        raise _Transient(f"SMTP server unavailable: {error!r}") from error
    except ValueError as error:  # e.g. an address the server's encoding cannot carry
        raise Unsendable(f"cannot hand over: {error}") from None

    try:
        await _send_message_data(client, payload)
    except aiosmtplib.SMTPResponseException as error:
        raise _answered(error, DeliveryStatus.failed, "message deferred") from error
    except (aiosmtplib.SMTPException, OSError) as error:
        # Without the final dot the server keeps nothing.
        raise _Transient(f"connection lost before the end of DATA: {error!r}") from error


@dataclass(eq=False)
class SmtpLine:
    """One worker thread's way out: an event loop that lives as long as the thread (no loop to
    make and tear down per send) and the SMTP connection kept open from its last message."""

    settings: SmtpSettings
    tls_context: ssl.SSLContext | None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    client: aiosmtplib.SMTP | None = None
    messages: int = 0  # accepted over the kept connection
    idle_since: float = 0.0

    def take(self) -> aiosmtplib.SMTP | None:
        """The kept connection, unless it is closed, old or idle long enough for the server to
        have dropped it; the caller owns it until it ``keep``s it again."""
        client, self.client = self.client, None
        if client is None:
            return None
        if (
            not client.is_connected
            or self.messages >= MESSAGES_PER_CONNECTION
            or time.monotonic() - self.idle_since > CONNECTION_IDLE_SECONDS
        ):
            _hang_up(client)
            return None
        return client

    def keep(self, client: aiosmtplib.SMTP, reused: bool) -> None:
        """Keep a connection whose last transaction is complete (the server answered the dot)."""
        self.client = client
        self.messages = self.messages + 1 if reused else 1
        self.idle_since = time.monotonic()

    def close(self, unfinished: asyncio.Task[object]) -> None:
        unfinished.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            self.loop.run_until_complete(unfinished)
        if self.client is not None:
            _hang_up(self.client)
        self.loop.close()


class SmtpLines:
    """An ``SmtpLine`` per worker thread, so a connection is never shared by two sends."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        self._tls_context = settings.ssl_context()
        self._local = threading.local()

    def run(self, conversation: Callable[[SmtpLine], Coroutine[object, None, T]]) -> T:
        line: SmtpLine | None = getattr(self._local, "line", None)
        if line is None:
            line = self._local.line = SmtpLine(self._settings, self._tls_context)
        task = line.loop.create_task(conversation(line))
        try:
            return line.loop.run_until_complete(task)
        finally:
            if not task.done():
                # An exception raised into this thread (the activity's cancellation) stopped the
                # loop mid-conversation: end that one, and begin the next on a new line.
                self._local.line = None
                line.close(cast("asyncio.Task[object]", task))


def _hang_up(client: aiosmtplib.SMTP) -> None:
    """Drop a connection without a word: one in mid-DATA must not get anything that could pass
    for the end of the message, and the server discards an unfinished transaction."""
    client.close()


def _broken(error: BaseException | None) -> bool:
    """Trouble that says the connection is gone rather than anything about the message."""
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return error.code == aiosmtplib.SMTPStatus.domain_unavailable  # 421: closing
    return isinstance(
        error, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)
    )


@functools.cache
def _local_hostname() -> str:
    # What aiosmtplib would look up (a DNS query) for every new connection.
    return socket.getfqdn()


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


async def _answer_to_data(protocol: SMTPProtocol, timeout: float) -> aiosmtplib.SMTPResponse:
    """The server's answer to the final dot, which made it take the message."""
    response = await protocol.read_response(timeout=timeout)
    if response.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


def _fact_text(facts: dict[str, object] | None, name: str) -> str | None:
    value = (facts or {}).get(name)
    return value if isinstance(value, str) and value else None


def send_outside_ledger(settings: SmtpSettings, outgoing: Outgoing) -> str:
    """Hand one message over without the ledger (a test send, which no participant makes): the
    server's reply to it. A refusal or an unreachable server raises ``Unsendable``."""
    try:
        return SmtpLines(settings).run(lambda line: _converse(line, outgoing, _unrecorded))
    except (_Final, _Transient, _Unconfirmed) as failure:
        raise Unsendable(str(failure)) from None
