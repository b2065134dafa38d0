"""A message step as one contact would get it, built by the send activities' own code
(``activities.mime.marketing_message``, ``activities.sms.compose``): shown without sending
(preview), or sent to an address of the marketer's choosing marked as a test (test send), outside
the delivery ledger, the statistics and the frequency caps (nothing is written anywhere)."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage

from pydantic import BaseModel, Field
from sqlalchemy import Engine

from activities.email import SmtpSettings, send_outside_ledger
from activities.mime import Outgoing, Unsendable, marketing_message, message_links
from activities.sms import SmsActivities, TwilioSettings, compose
from models.consent import Refused, marketing_recipient
from models.crm import Contact, contact_facts
from models.database import session
from models.flow import Flow, SendEmail, SendSms
from models.merge_tags import MERGE_TAGS, tags_in
from models.sms import normalise_number, segments

TEST_PREFIX = "[TEST] "
TEST_HEADER = "X-Flows-Test"  # "true" on every test send: filters and the inbox can tell


class PreviewError(Exception):
    """The step, contact or settings do not allow a preview; the message says why."""


class EmailPreview(BaseModel):
    step_id: str
    contact_id: int
    to: str
    sender: str
    reply_to: str | None
    subject: str
    text: str | None
    html: str | None
    would_skip: str | None = Field(description="Why a real send would skip this contact")
    merge_tags: dict[str, str] = Field(description="Each merge tag the step uses, and its value")


class SmsPreview(BaseModel):
    step_id: str
    contact_id: int
    to: str | None
    sender: str | None
    text: str
    characters: int
    encoding: str
    segments: int
    would_skip: str | None
    merge_tags: dict[str, str]


def _tag_values(
    texts: list[str | None], facts: dict[str, object], links: dict[str, str]
) -> dict[str, str]:
    values: dict[str, str] = {}
    for tag in (tag for text in texts if text for tag in tags_in(text)):
        if tag not in MERGE_TAGS or tag in values:
            continue  # conditionals, and tags seen before
        fact = MERGE_TAGS[tag]
        value = facts.get(fact) if fact is not None else links.get(tag.removeprefix("link."))
        values[tag] = "" if value is None else str(value)
    return values


def _contact(engine: Engine, contact_id: int) -> tuple[Contact, dict[str, object]]:
    with session(engine) as db:
        contact = db.get(Contact, contact_id)
        facts = contact_facts(db, contact_id)
        if contact is None or facts is None:
            raise PreviewError(f"no contact {contact_id}")
        db.expunge(contact)
    return contact, facts


def _message_step(flow: Flow, step_id: str) -> SendEmail | SendSms:
    try:
        step = flow.step(step_id)
    except KeyError:
        raise PreviewError(f"flow {flow.id!r} has no step {step_id!r}") from None
    if not isinstance(step, SendEmail | SendSms):
        raise PreviewError(f"step {step_id!r} is a {step.type}, not a message step")
    return step


def _email(
    engine: Engine,
    flow: Flow,
    step: SendEmail,
    contact_id: int,
    settings: SmtpSettings,
    to: str | None,
) -> tuple[Outgoing, str | None, dict[str, str]]:
    """The step's message for the contact (to ``to`` when given), why a real send would skip
    the contact, and the merge tags' values."""
    if flow.email is None:
        raise PreviewError(f"flow {flow.id!r} has no email settings")
    contact, facts = _contact(engine, contact_id)
    skip = None
    try:
        recipient = marketing_recipient(contact, facts, flow.email.subscription_type)
    except Refused as refusal:
        skip, recipient = str(refusal), contact.email or "no-address@invalid"
    try:
        outgoing = marketing_message(
            settings,
            step,
            flow.email,
            delivery_key=f"preview/{uuid.uuid4()}",
            contact_id=contact_id,
            flow_id=flow.id,
            contact=contact,
            facts=facts,
            recipient=to or recipient,
        )
    except Unsendable as problem:
        raise PreviewError(f"the message cannot be built: {problem}") from None
    links = message_links(settings, contact_id, flow.id)
    tags = _tag_values([step.subject, step.html, step.text], facts, links)
    return outgoing, skip, tags


def _part(message: EmailMessage, subtype: str) -> str | None:
    body = message.get_body((subtype,))
    return None if body is None else str(body.get_content())


def preview(
    engine: Engine, flow: Flow, step_id: str, contact_id: int, settings: SmtpSettings
) -> EmailPreview | SmsPreview:
    step = _message_step(flow, step_id)
    if isinstance(step, SendSms):
        return _sms_preview(engine, flow, step, contact_id, settings)
    outgoing, skip, tags = _email(engine, flow, step, contact_id, settings, None)
    message = outgoing.message
    return EmailPreview(
        step_id=step.id,
        contact_id=contact_id,
        to=str(message["To"]),
        sender=str(message["From"]),
        reply_to=None if message["Reply-To"] is None else str(message["Reply-To"]),
        subject=str(message["Subject"]),
        text=_part(message, "plain"),
        html=_part(message, "html"),
        would_skip=skip,
        merge_tags=tags,
    )


def _sms_preview(
    engine: Engine, flow: Flow, step: SendSms, contact_id: int, settings: SmtpSettings
) -> SmsPreview:
    _, facts = _contact(engine, contact_id)
    sender = step.sender or flow.sms_sender
    text, problem = compose(step.text, facts, sender)
    mobile = facts.get("contact.mobile")
    to = normalise_number(mobile) if isinstance(mobile, str) and mobile else None
    length = segments(text)
    return SmsPreview(
        step_id=step.id,
        contact_id=contact_id,
        to=to,
        sender=sender,
        text=text,
        characters=length.characters,
        encoding=length.encoding,
        segments=length.segments,
        would_skip=problem or (None if to else "no mobile number"),
        merge_tags=_tag_values([step.text], facts, message_links(settings, contact_id, flow.id)),
    )


async def send_as_test(
    engine: Engine,
    flow: Flow,
    step_id: str,
    contact_id: int,
    to: str,
    settings: SmtpSettings,
    twilio: TwilioSettings | None = None,
) -> str:
    """Send the step's message as the contact would get it to ``to``, marked as a test (the
    subject's prefix and a header for email, the prefix for SMS): the server's or provider's
    answer. Nothing is recorded."""
    step = _message_step(flow, step_id)
    if isinstance(step, SendSms):
        if twilio is None:
            raise PreviewError("SMS needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        _, facts = _contact(engine, contact_id)
        text, problem = compose(step.text, facts, step.sender or flow.sms_sender)
        if problem is not None:
            raise PreviewError(problem)
        sender = step.sender or flow.sms_sender or ""
        return await SmsActivities(engine, twilio).send_outside_ledger(
            to, sender, TEST_PREFIX + text
        )
    outgoing, _, _ = _email(engine, flow, step, contact_id, settings, to)
    message = outgoing.message
    subject = str(message["Subject"])
    message.replace_header("Subject", TEST_PREFIX + subject)
    message[TEST_HEADER] = "true"
    try:
        return await asyncio.to_thread(send_outside_ledger, settings, outgoing)
    except Unsendable as problem:
        raise PreviewError(f"not sent: {problem}") from None
