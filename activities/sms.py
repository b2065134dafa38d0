"""The SMS steps: send_sms to the participant, notify_sms to our contact and named numbers.

Every recipient's send goes through the delivery ledger (models.ledger) so that Temporal's retries
never send an SMS twice: claim, hand over to Twilio, then settle or release. Only Temporal
retries: the twilio client's own retries are off, since a retried POST after a 5xx may duplicate.

Twilio's answers map onto the ledger like this:

* accepted → ``sent`` with the message SID;
* 429 / 20429, 5xx, 401, or no connection at all → ``release`` and raise (retryable: Twilio
  accepted nothing);
* any other 4xx (21211 invalid To, 21610 unsubscribed, 21614 not a mobile, …) → ``failed`` with the
  code, returned: sending again would get the same answer;
* the connection broke after the request went out (timeout, disconnect) → ``unconfirmed``,
  returned: Twilio may have the message, and a duplicate is worse than a missing one.

A worker that died after the request may have gone out leaves the key ``sending``. The retry
asks Twilio (its list of messages to that number) instead of guessing: a message with this text
accepted since then → ``sent`` with its SID; none → the request never arrived, and it is sent now.
It asks only once the earlier request's timeout has passed, when no answer can still be on its way.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from pydantic import BaseModel, ConfigDict, SecretStr
from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from activities.heartbeat import heartbeating
from activities.metrics import counts_messages
from activities.participants import ParticipantRecord, departed, enter_message_step
from models.crm import contact_facts
from models.database import session, utcnow
from models.flow import NotifySms, Recipients, SendSms
from models.frequency_caps import Capping, Channel
from models.ledger import (
    DeliveryOutcome,
    DeliveryStatus,
    claiming,
    interrupted,
    mark_sending,
    record_skip,
    release,
    reopen,
    settle,
)
from models.merge_tags import MergeTagError, render
from models.send_counts import claim_within_caps
from models.sending import NO_SENDING_SETTINGS, SendingSettings
from models.settings import Settings, get_settings
from models.sms import is_mobile, normalise_number, segments, too_long

CHANNEL: Channel = "sms"
NO_MOBILE = "no mobile number"
INVALID_MOBILE = "invalid mobile number"
NOT_MOBILE = "not a mobile number"  # a fixed-line, premium-rate, toll-free … number
# The skips that mean the contact cannot be reached by SMS (the step's exit_if_no_mobile).
UNREACHABLE = (NO_MOBILE, INVALID_MOBILE, NOT_MOBILE)
TWILIO_API = "https://api.twilio.com"

# Safe to send again: Twilio said it accepted nothing and the cause may pass.
RETRYABLE_CODES = frozenset({20429})
RETRYABLE_STATUSES = frozenset({401, 429})  # 401: our credentials, not the recipient
# Looking up an interrupted send: Twilio's clock and ours may differ a little, and its dates
# have whole seconds; the newest messages to one number are enough to find it.
CLOCK_SLACK = timedelta(seconds=60)
LOOKUP_LIMIT = 50


class TwilioSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    account_sid: str
    auth_token: SecretStr
    api_base: str | None = None  # e.g. http://127.0.0.1:8026 for peers.twilio_api
    default_region: str = "SE"  # for numbers written without a country code
    timeout: float = 30.0  # seconds per request; the twilio client has none by default

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> TwilioSettings:
        """TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_API_BASE, SMS_DEFAULT_REGION,
        TWILIO_TIMEOUT; raises ValueError without the credentials."""
        settings = settings or get_settings()
        sid, token = settings.twilio_account_sid, settings.twilio_auth_token
        missing = [
            name
            for name, value in (("TWILIO_ACCOUNT_SID", sid), ("TWILIO_AUTH_TOKEN", token))
            if value is None
        ]
        if sid is None or token is None:
            raise ValueError(f"SMS needs {' and '.join(missing)} in the environment")
        return cls(
            account_sid=sid,
            auth_token=token,
            api_base=settings.twilio_api_base,
            default_region=settings.sms_default_region,
            timeout=settings.twilio_timeout,
        )


class RoutedTwilioHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The twilio client's HTTP client, sending to ``api_base`` instead of api.twilio.com.

    It never retries: ``max_retries=None`` leaves out the aiohttp_retry wrapper entirely. (Its
    ``max_retries=0`` is not "off": with zero attempts the wrapper retries 5xx without end.)
    """

    def __init__(self, api_base: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout, max_retries=None)
        self.api_base = api_base.rstrip("/") if api_base else None

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        if self.api_base is not None and url.startswith(TWILIO_API):
            url = self.api_base + url.removeprefix(TWILIO_API)
        if auth is not None:  # as a header: aiohttp deprecates its BasicAuth, which twilio uses
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers = {**(headers or {}), "Authorization": f"Basic {token}"}
        return await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout if timeout is not None else self.timeout,
            allow_redirects=allow_redirects,
        )


class SmsSend(BaseModel):
    delivery_key: str
    flow_id: str
    contact_id: int
    step: SendSms
    default_sender: str | None  # the flow's SMS sender, used when the step names none
    # The step's entry record and its checks, when the participant leaves them to the send (one
    # transaction with reading the contact); absent in sends scheduled before, recorded apart.
    record: ParticipantRecord | None = None
    # The row the participant leaves with through the finish after this step, to record last.
    departure: ParticipantRecord | None = None
    # The frequency caps this message counts toward, and what the flow does over one; None for
    # messages the caps never hold (transactional ones) and sends scheduled before caps existed.
    capping: Capping | None = None


class SmsNotify(BaseModel):
    delivery_key: str  # each recipient's send is keyed f"{delivery_key}/{number}"
    flow_id: str
    contact_id: int
    step: NotifySms
    default_sender: str | None
    record: ParticipantRecord | None = None  # the step's entry, to record and check first


class _Accepted(BaseModel):
    sid: str


@dataclass(frozen=True)
class _Counted:
    """A send to the contact itself, and the caps it asks for (None: it counts toward none)."""

    contact_id: int
    capping: Capping | None


class SmsActivities:
    """``after_handover(key)`` runs once Twilio accepted a send and the ledger recorded it."""

    def __init__(
        self,
        engine: Engine,
        twilio: TwilioSettings | None,
        after_handover: Callable[[str], None] | None = None,
        *,
        sending: SendingSettings = NO_SENDING_SETTINGS,
    ) -> None:
        self._engine = engine
        self._configured = twilio
        self._caps = sending.caps(CHANNEL)
        self._ceiling = sending.rate_limits.of(CHANNEL)
        self._after_handover = after_handover

    @property
    def _twilio(self) -> TwilioSettings:
        # Unconfigured SMS retries (visibly, in the UI) rather than dropping participants: once
        # the worker restarts with credentials, waiting sends go out.
        if self._configured is None:
            raise ApplicationError(
                "SMS is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
                type="SmsNotConfigured",
            )
        return self._configured

    @activity.defn
    @counts_messages
    async def send_sms(self, request: SmsSend) -> DeliveryOutcome:
        """Send the step's text to the participant; a missing, invalid or non-mobile number is
        a skip.

        The workflow decides from ``step.exit_if_no_mobile`` whether a skipped participant leaves
        (it offers no ``departure`` then).
        """
        return await self._send_and_depart(request)

    @activity.defn
    @counts_messages
    async def send_sms_locally(self, request: SmsSend) -> DeliveryOutcome | None:
        """``send_sms`` as a local activity of the participant's own worker. None, having done
        nothing, when the channel has a provider ceiling (``rate_limits.sms``): the participant
        sends on the channel's task queue, which holds it."""
        if self._ceiling is not None:
            return None
        return await self._send_and_depart(request)

    async def _send_and_depart(self, request: SmsSend) -> DeliveryOutcome:
        outcome = await self._send(request)
        return await asyncio.to_thread(departed, self._engine, request.departure, outcome)

    async def _send(self, request: SmsSend) -> DeliveryOutcome:
        key = request.delivery_key
        if request.record is None:
            facts = await self._facts(request.contact_id)
        else:
            entered = await self._entered(request.record, key)
            if isinstance(entered, DeliveryOutcome):
                return entered
            facts = entered
        mobile = _text(facts.get("contact.mobile"))
        if mobile is None:
            return await self._skip(key, "", NO_MOBILE)
        number = normalise_number(mobile, self._twilio.default_region)
        if number is None:
            return await self._skip(key, mobile, INVALID_MOBILE)
        if not is_mobile(number):
            return await self._skip(key, number, NOT_MOBILE)
        sender = request.step.sender or request.default_sender
        capped = _Counted(request.contact_id, request.capping)
        return await self._deliver(key, number, sender, request.step.text, facts, capped)

    @activity.defn
    @counts_messages
    async def notify_sms(self, request: SmsNotify) -> list[DeliveryOutcome]:
        """Send the step's text to each recipient; one without a usable number is a skip."""
        if request.record is None:
            facts = await self._facts(request.contact_id)
        else:
            entered = await self._entered(request.record, request.delivery_key, per_recipient=True)
            if isinstance(entered, DeliveryOutcome):
                return [entered]
            facts = entered
        sender = request.step.sender or request.default_sender
        outcomes: list[DeliveryOutcome] = []
        sent_to: set[str] = set()
        for label, raw in recipients(request.step.to, facts):
            if raw is None:
                slot = label.replace(" ", "_")  # no number to key on: the role is stable instead
                reason = f"{label} has no mobile number"
                outcomes.append(await self._skip(f"{request.delivery_key}/{slot}", label, reason))
                continue
            number = normalise_number(raw, self._twilio.default_region)
            if number is None:
                key = f"{request.delivery_key}/{raw}"
                outcomes.append(await self._skip(key, raw, f"{label}: invalid mobile number"))
                continue
            if not is_mobile(number):
                key = f"{request.delivery_key}/{number}"
                outcomes.append(await self._skip(key, number, f"{label}: {NOT_MOBILE}"))
                continue
            if number in sent_to:  # e.g. our contact is also our service contact
                continue
            sent_to.add(number)
            key = f"{request.delivery_key}/{number}"
            outcomes.append(await self._deliver(key, number, sender, request.step.text, facts))
        return outcomes

    # --- one recipient ----------------------------------------------------------------------------

    async def _deliver(
        self,
        key: str,
        to: str,
        sender: str | None,
        template: str,
        facts: dict[str, object],
        counted: _Counted | None = None,
    ) -> DeliveryOutcome:
        async with heartbeating():  # a worker that dies here is noticed within seconds
            return await self._deliver_once(key, to, sender, template, facts, counted)

    async def _deliver_once(
        self,
        key: str,
        to: str,
        sender: str | None,
        template: str,
        facts: dict[str, object],
        counted: _Counted | None,
    ) -> DeliveryOutcome:
        # Everything that can fail without sending is worked out before the claim, so that an
        # unexpected error cannot leave the key in "sending" (which the next attempt would read
        # as "maybe sent" and never send).
        text, problem = compose(template, facts, sender)
        length = segments(text)

        if problem is None and sender is not None:
            since = await asyncio.to_thread(interrupted, self._engine, key)
            if since is not None:
                found = await self._reconcile(key, since, to, text, length.segments)
                if found is not None:
                    return found
        # Only a text that can go out counts toward the caps (or is held back by them).
        capping = counted.capping if counted is not None and problem is None else None
        contact_id = counted.contact_id if counted is not None else 0

        def claim() -> DeliveryOutcome | None:
            return claiming(
                self._engine,
                key,
                lambda db: claim_within_caps(
                    db,
                    key,
                    CHANNEL,
                    to,
                    contact_id=contact_id,
                    capping=capping,
                    caps=self._caps,
                    facts=facts,
                ),
            )

        claimed = await asyncio.to_thread(claim)
        if claimed is not None:
            return claimed  # settled by an earlier attempt: send nothing
        if problem is not None or sender is None:
            return await self._settle(key, DeliveryStatus.failed, detail=problem)

        if not await asyncio.to_thread(mark_sending, self._engine, key):
            raise ApplicationError("another attempt is sending this SMS", type="SendInProgress")
        try:
            accepted = await self._hand_over(to, _sender(sender, self._twilio.default_region), text)
        except TwilioException as error:
            status, code = _status(error), _code(error)
            detail = f"Twilio {status or '-'} {code or '-'}: {_message(error)}"
            if status is None or _retryable(status, code):
                await asyncio.to_thread(release, self._engine, key, detail)
                raise ApplicationError(detail, type="SmsNotHandedOver") from error
            return await self._settle(key, DeliveryStatus.failed, detail=detail)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            detail = f"Twilio unreachable: {error}"
            await asyncio.to_thread(release, self._engine, key, detail)
            raise ApplicationError(detail, type="SmsNotHandedOver") from error
        except (aiohttp.ClientError, TimeoutError) as error:
            detail = f"no answer from Twilio after sending ({type(error).__name__}): not resent"
            return await self._settle(key, DeliveryStatus.unconfirmed, detail=detail)

        outcome = await self._settle(
            key, DeliveryStatus.sent, provider_id=accepted.sid, detail=str(length)
        )
        if self._after_handover is not None:
            self._after_handover(key)
        return outcome

    async def _reconcile(
        self, key: str, since: datetime, to: str, text: str, parts: int
    ) -> DeliveryOutcome | None:
        """An earlier attempt stopped after its request may have gone out (at ``since``): settle
        the send as Twilio has it, or reopen it (None) when Twilio never got it."""
        if utcnow() < since + timedelta(seconds=self._twilio.timeout + 5):
            # That request may still be on its way: ask once it can no longer arrive.
            raise ApplicationError(
                "an earlier attempt may still be sending this SMS", type="SendInProgress"
            )
        try:
            sid = await self._find(to, text, since)
        except (TwilioException, aiohttp.ClientError, TimeoutError) as error:
            raise ApplicationError(
                f"cannot ask Twilio about an interrupted send: {error}", type="SmsNotHandedOver"
            ) from error
        if sid is not None:
            detail = f"{parts}; found at Twilio after the sending attempt was interrupted"
            return await self._settle(key, DeliveryStatus.sent, provider_id=sid, detail=detail)
        note = "not at Twilio after an interrupted attempt: sent again"
        if not await asyncio.to_thread(reopen, self._engine, key, since, note):
            raise ApplicationError("another attempt is sending this SMS", type="SendInProgress")
        return None

    async def _find(self, to: str, text: str, since: datetime) -> str | None:
        """The SID of a message with this text that Twilio accepted for ``to`` since ``since``."""
        http = RoutedTwilioHttpClient(self._twilio.api_base, self._twilio.timeout)
        try:
            client = Client(
                self._twilio.account_sid,
                self._twilio.auth_token.get_secret_value(),
                http_client=http,
            )
            # Newest first. Not filtered by From: a messaging service picks its own number.
            messages = await client.messages.list_async(to=to, limit=LOOKUP_LIMIT)
        finally:
            await http.close()
        earliest = since - CLOCK_SLACK
        for message in messages:
            created = message.date_created
            if message.body == text and (created is None or created >= earliest):
                return str(message.sid)
        return None

    async def send_outside_ledger(self, to: str, sender: str, text: str) -> str:
        """A test send, which no participant makes: the provider's id for it."""
        return (await self._hand_over(to, sender, text)).sid

    async def _hand_over(self, to: str, sender: str, text: str) -> _Accepted:
        # A client per call: its aiohttp session belongs to the running event loop.
        http = RoutedTwilioHttpClient(self._twilio.api_base, self._twilio.timeout)
        try:
            client = Client(
                self._twilio.account_sid,
                self._twilio.auth_token.get_secret_value(),
                http_client=http,
            )
            message = await client.messages.create_async(to=to, from_=sender, body=text)
            return _Accepted(sid=message.sid)
        finally:
            await http.close()

    async def _settle(
        self,
        key: str,
        status: DeliveryStatus,
        provider_id: str | None = None,
        detail: str | None = None,
    ) -> DeliveryOutcome:
        return await asyncio.to_thread(settle, self._engine, key, status, provider_id, detail)

    async def _skip(self, key: str, recipient: str, reason: str) -> DeliveryOutcome:
        return await asyncio.to_thread(record_skip, self._engine, key, CHANNEL, recipient, reason)

    async def _entered(
        self, record: ParticipantRecord, key: str, *, per_recipient: bool = False
    ) -> dict[str, object] | DeliveryOutcome:
        """The step's entry recorded and checked, and the contact read, in one transaction: the
        contact's facts, or the outcome that makes the participant leave without a send."""

        def enter() -> dict[str, object] | DeliveryOutcome | None:
            with session(self._engine) as db:
                left = enter_message_step(db, record, key, CHANNEL, per_recipient=per_recipient)
                return left if left is not None else contact_facts(db, record.state.contact_id)

        entered = await asyncio.to_thread(enter)
        if entered is None:
            raise _missing_contact(record.state.contact_id)
        return entered

    async def _facts(self, contact_id: int) -> dict[str, object]:
        def load() -> dict[str, object] | None:
            with session(self._engine) as db:
                return contact_facts(db, contact_id)

        facts = await asyncio.to_thread(load)
        if facts is None:
            raise _missing_contact(contact_id)
        return facts


def _missing_contact(contact_id: int) -> ApplicationError:
    # Non-retryable: retrying cannot make a deleted contact reappear.
    return ApplicationError(
        f"contact {contact_id} does not exist", type="MissingContact", non_retryable=True
    )


def compose(template: str, facts: dict[str, object], sender: str | None) -> tuple[str, str | None]:
    """The text to send, and what keeps it from going out (None: nothing does): merge tags that
    do not render, a text that merge tags made too long, or no sender. Retrying fixes none."""
    problem: str | None = None
    text = ""
    try:
        text = render(template, facts)
    except MergeTagError as error:
        problem = f"merge tags: {error}"
    else:
        length = too_long(text)
        if length is not None:
            problem = f"the rendered text is {length}"
    if sender is None:
        problem = "no SMS sender: set the step's sender or the flow's SMS sender"
    return text, problem


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def recipients(to: Recipients, facts: dict[str, object]) -> list[tuple[str, str | None]]:
    """(label, raw number or None) for each recipient the step names, in a stable order."""
    found: list[tuple[str, str | None]] = []
    if to.our_contact:
        found.append(("our contact", _text(facts.get("contact.our_contact.mobile"))))
    if to.our_service_contact:
        found.append(
            ("our service contact", _text(facts.get("contact.our_service_contact.mobile")))
        )
    found.extend((number, _text(number)) for number in to.addresses)
    return found


def _sender(sender: str, region: str) -> str:
    # A phone number goes out in E.164; anything else is an alphanumeric sender id, as written.
    return normalise_number(sender, region) or sender


def _status(error: TwilioException) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def _code(error: TwilioException) -> int | None:
    code = getattr(error, "code", None)
    return code if isinstance(code, int) else None


def _message(error: TwilioException) -> str:
    # TwilioRestException.msg reads "Unable to create record: <Twilio's message>": keep the latter.
    for name in ("msg", "detail", "title"):
        value = getattr(error, name, None)
        if isinstance(value, str) and value:
            return value.removeprefix("Unable to create record: ")
    return str(error)


def _retryable(status: int, code: int | None) -> bool:
    return status >= 500 or status in RETRYABLE_STATUSES or code in RETRYABLE_CODES
