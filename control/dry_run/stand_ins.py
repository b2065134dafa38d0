"""The activities of a dry run: the read-only ones for real, stand-ins for the rest.

* Read-only activities (``READ_ONLY``: the split decision, preparing a script, the contact's
  time zone) are the real ones, on the real CRM, so decisions match production.
* The message activities are stand-ins that make the real activities' checks on the real contact
  (address, consent, subscription, mobile number, sender, merge tags) with the same outcomes —
  the same skips, failures and final errors — and capture the message instead of sending it. The
  participant's bookkeeping makes the checks before every step (former employee, exclusion list)
  and writes nothing.
* Every other activity (list changes, CRM steps, scripts, and kinds added later) reaches one
  dynamic stand-in that decodes its input with the real activity's types and returns a plausible
  value of the real return type. Nothing is written anywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from email_validator import EmailNotValidError
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

import activities
from activities.contacts import ContactActivities
from activities.crm import CrmActivities
from activities.email import EmailNotify, EmailSend
from activities.experiments import ExperimentAnswer, ExperimentQuestion, planned_path
from activities.participants import ParticipantRecord, leave_reason
from activities.scripts import ScriptActivities
from activities.sms import CHANNEL as SMS
from activities.sms import (
    INVALID_MOBILE,
    NO_MOBILE,
    NOT_MOBILE,
    SmsNotify,
    SmsSend,
    compose,
    recipients,
)
from models.consent import Refused, marketing_recipient, valid_address
from models.crm import Contact, contact_facts
from models.database import session
from models.ledger import DeliveryOutcome, DeliveryStatus, masked
from models.merge_tags import render, render_header
from models.participant import Standing
from models.settings import get_settings
from models.sms import is_mobile, normalise_number, segments

# Activities that only read: the real ones run (on the real CRM) so decisions match production.
READ_ONLY = frozenset(
    {"choose_split_branch", "choose_form_data_branch", "prepare_script", "find_time_zone"}
)
MESSAGE_ACTIVITIES = frozenset({"send_email", "send_sms", "notify_email", "notify_sms"})
# Captured, but not worth a line in the timeline.
BOOKKEEPING = frozenset({"record_participant"})
EMAIL = "email"
NOT_SENT = "captured, not sent"
# Links merge tags may name; the real URLs come from the worker's settings.
DRY_RUN_LINKS = {
    name: f"https://dry-run.invalid/{name}"
    for name in ("unsubscribe", "subscription", "webversion")
}
Signature = tuple[list[Any], Any]  # an activity's argument types and return type


class Captured(BaseModel):
    """One activity call the dry run answered instead of performing it."""

    activity: str
    activity_id: str  # numbered apart for local activities: ``local`` tells them from the rest
    local: bool = False
    workflow_id: str
    run_id: str
    at: datetime
    description: str
    input: Any = None
    result: Any = None


def placeholder(tp: Any) -> Any:
    """A plausible value of type ``tp`` for a stand-in to return: None where allowed, a model's
    defaults, empty containers, "not performed (dry run)" for text."""
    if tp is None or tp is type(None) or tp is Any:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        return None if type(None) in members else placeholder(members[0])
    if tp is str:
        return "not performed (dry run)"
    if tp is bool:
        return False
    if tp in (int, float):
        return 0
    if origin in (list, set, tuple, Sequence) or tp in (list, set, tuple):
        return []
    if origin is dict or tp is dict:
        return {}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        try:
            return tp.model_validate({})
        except ValidationError:
            required = {
                name: placeholder(info.annotation)
                for name, info in tp.model_fields.items()
                if info.is_required()
            }
            return tp.model_validate(required)
    return None


def real_signatures() -> dict[str, Signature]:
    """Every activity the ``activities`` package defines, by name, with its argument and return
    types: what the dry run stands in for. A kind added later is captured, with its own types,
    without a change here."""
    found: dict[str, Signature] = {}
    for module_info in pkgutil.walk_packages(activities.__path__, f"{activities.__name__}."):
        module = importlib.import_module(module_info.name)
        for owner in list(vars(module).values()):
            if getattr(owner, "__module__", None) != module.__name__:
                continue
            members = vars(owner).values() if isinstance(owner, type) else [owner]
            for member in members:
                definition = (
                    activity._Definition.from_callable(member) if callable(member) else None
                )
                if definition is None or definition.name is None:  # None: a dynamic activity
                    continue
                found[definition.name] = (list(definition.arg_types or []), definition.ret_type)
    return found


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _missing_contact(contact_id: int) -> ApplicationError:
    # What the real SMS activities raise: the participant leaves with this reason.
    return ApplicationError(
        f"contact {contact_id} does not exist", type="MissingContact", non_retryable=True
    )


@dataclass
class Capture:
    """The stand-ins for one dry run, and what they captured."""

    engine: Engine
    sms_region: str = field(default_factory=lambda: get_settings().sms_default_region)
    calls: list[Captured] = field(default_factory=list)
    signatures: dict[str, Signature] = field(default_factory=real_signatures)
    # The delivery ledger's rule without the ledger: a key's first outcome is its outcome.
    settled: dict[str, DeliveryOutcome] = field(default_factory=dict)

    def activities(self) -> list[Callable[..., Any]]:
        crm, scripts = CrmActivities(self.engine), ScriptActivities(self.engine)
        contacts = ContactActivities(self.engine)
        readers: list[Callable[..., Any]] = [
            crm.choose_split_branch,
            crm.choose_form_data_branch,
            scripts.prepare_script,
            contacts.find_time_zone,
        ]
        standing_in: list[Callable[..., Any]] = [
            self.record_participant,
            self.send_email,
            self.send_email_locally,
            self.send_sms,
            self.send_sms_locally,
            self.notify_email,
            self.notify_sms,
            self.choose_experiment_path,
            self.any_other,
        ]
        return [*readers, *standing_in]

    def _outcome(
        self, key: str, channel: str, recipient: str, status: DeliveryStatus, detail: str
    ) -> DeliveryOutcome:
        earlier = self.settled.get(key)
        if earlier is not None:
            return earlier.model_copy(update={"already_settled": True})
        # Masked, as the real activities return it.
        outcome = masked(
            DeliveryOutcome(
                key=key, channel=channel, recipient=recipient, status=status, detail=detail
            )
        )
        self.settled[key] = outcome
        return outcome

    def _record(self, description: str, request: Any, result: Any) -> None:
        info = activity.info()
        self.calls.append(
            Captured(
                activity=info.activity_type,
                activity_id=info.activity_id,
                local=info.is_local,
                workflow_id=info.workflow_id or "",
                run_id=info.workflow_run_id or "",
                at=info.current_attempt_scheduled_time or info.scheduled_time,
                description=description,
                input=_jsonable(request),
                result=_jsonable(result),
            )
        )

    def _facts(self, contact_id: int) -> tuple[Contact | None, dict[str, object] | None]:
        with session(self.engine) as db:
            contact = db.get(Contact, contact_id)
            if contact is not None:
                db.expunge(contact)
            return contact, contact_facts(db, contact_id)

    @activity.defn(dynamic=True)
    async def any_other(self, args: Sequence[RawValue]) -> Any:
        name = activity.info().activity_type
        arg_types, ret_type = self.signatures.get(name, ([], None))
        converter = activity.payload_converter()
        decoded = [
            converter.from_payload(raw.payload, arg_types[i] if i < len(arg_types) else Any)
            for i, raw in enumerate(args)
        ]
        result = placeholder(ret_type)
        self._record(
            f"{name} (not performed)", decoded[0] if len(decoded) == 1 else decoded, result
        )
        return result

    @activity.defn(name="record_participant")
    async def record_participant(self, record: ParticipantRecord) -> Standing:
        """Writes nothing, but makes the checks before every step on the real CRM, so a former
        employee or an excluded contact leaves here as it would for real."""
        with session(self.engine) as db:
            standing = Standing(leave_reason=leave_reason(db, record))
        self._record("record participant (not written)", record, standing)
        return standing

    @activity.defn(name="choose_experiment_path")
    async def choose_experiment_path(self, question: ExperimentQuestion) -> ExperimentAnswer:
        """The contact's path by its share (or a winner decided before), recorded nowhere."""
        with session(self.engine) as db:
            reason = None if question.record is None else leave_reason(db, question.record)
            answer = (
                ExperimentAnswer(leave_reason=reason)
                if reason is not None
                else planned_path(db, question)
            )
        self._record(f"experiment: {answer.outcome or reason}", question, answer)
        return answer

    def _left_at_entry(
        self, record: ParticipantRecord | None, key: str, channel: str, what: str
    ) -> DeliveryOutcome | None:
        """A message step's entry checks, which the real send makes (and records) first: the
        outcome that makes the participant leave without a send, or None."""
        if record is None or key in self.settled:
            return None
        with session(self.engine) as db:
            reason = leave_reason(db, record)
        if reason is None:
            return None
        outcome = DeliveryOutcome.left(key, channel, reason)
        self._record(f"{what} not sent: {reason}", record, outcome)
        return outcome

    @activity.defn(name="send_email")
    async def send_email(self, request: EmailSend) -> DeliveryOutcome:
        key, step = request.delivery_key, request.step
        left = self._left_at_entry(request.record, key, EMAIL, f"email {step.subject!r}")
        if left is not None:
            return left
        contact, facts = self._facts(request.contact_id)
        subject = step.subject
        with contextlib.suppress(ValueError):
            subject = render_header(step.subject, facts or {}, links=DRY_RUN_LINKS)
        if contact is None or facts is None:
            outcome = self._outcome(key, EMAIL, "", DeliveryStatus.skipped, "contact not found")
        elif request.settings is None:
            detail = "the flow has no email settings"
            outcome = self._outcome(key, EMAIL, contact.email or "", DeliveryStatus.failed, detail)
        else:
            try:
                address = marketing_recipient(contact, facts, request.settings.subscription_type)
            except Refused as refusal:
                status, detail = DeliveryStatus.skipped, str(refusal)
                outcome = self._outcome(key, EMAIL, contact.email or "", status, detail)
            else:
                try:
                    subject = render_header(step.subject, facts, links=DRY_RUN_LINKS)
                    for body, html in ((step.html, True), (step.text, False)):
                        if body is not None:
                            render(body, facts, html=html, links=DRY_RUN_LINKS)
                    outcome = self._outcome(key, EMAIL, address, DeliveryStatus.sent, NOT_SENT)
                except ValueError as error:  # MergeTagError, or a header with a line break
                    outcome = self._outcome(key, EMAIL, address, DeliveryStatus.failed, str(error))
        to = outcome.recipient or "-"
        self._record(_message_text("email", repr(subject), to, outcome), request, outcome)
        return outcome

    @activity.defn(name="send_email_locally")
    async def send_email_locally(self, request: EmailSend) -> DeliveryOutcome | None:
        """Declines, as a worker whose channel has a rate limit does: the step then sends on the
        channel's queue, through ``send_email`` above, which the timeline shows. Where a
        message would be sent from is not what a dry run is about; what is sent is."""
        del request
        return None

    @activity.defn(name="send_sms_locally")
    async def send_sms_locally(self, request: SmsSend) -> DeliveryOutcome | None:
        """Declines, as ``send_email_locally`` does: the step sends through ``send_sms``."""
        del request
        return None

    @activity.defn(name="send_sms")
    async def send_sms(self, request: SmsSend) -> DeliveryOutcome:
        key, step = request.delivery_key, request.step
        left = self._left_at_entry(request.record, key, SMS, f"SMS {step.label!r}")
        if left is not None:
            return left
        _, facts = self._facts(request.contact_id)
        if facts is None:
            error = _missing_contact(request.contact_id)
            self._record(f"SMS {step.label!r} failed: {error.message}", request, None)
            raise error
        raw = facts.get("contact.mobile")
        mobile = raw.strip() if isinstance(raw, str) else ""
        number = normalise_number(mobile, self.sms_region) if mobile else None
        sender = step.sender or request.default_sender
        text, problem = compose(step.text, facts, sender)
        if not mobile:
            outcome = self._outcome(key, SMS, "", DeliveryStatus.skipped, NO_MOBILE)
        elif number is None:
            outcome = self._outcome(key, SMS, mobile, DeliveryStatus.skipped, INVALID_MOBILE)
        elif not is_mobile(number):
            outcome = self._outcome(key, SMS, number, DeliveryStatus.skipped, NOT_MOBILE)
        elif problem is not None:
            outcome = self._outcome(key, SMS, number, DeliveryStatus.failed, problem)
        else:
            # The same detail as a real send: the participant's outcome reads the same.
            outcome = self._outcome(key, SMS, number, DeliveryStatus.sent, str(segments(text)))
        to = outcome.recipient or "-"
        shown = repr(text) if outcome.status is DeliveryStatus.sent else repr(step.label)
        self._record(_message_text("SMS", shown, to, outcome), request, outcome)
        return outcome

    @activity.defn(name="notify_email")
    async def notify_email(self, request: EmailNotify) -> list[DeliveryOutcome]:
        _, facts = self._facts(request.contact_id)
        to = request.step.to
        # The real activity's recipients, labels and keys, in its order.
        targets: list[tuple[str, str | None]] = []
        for role, wanted in (
            ("our_contact", to.our_contact),
            ("our_service_contact", to.our_service_contact),
        ):
            if wanted:
                value = (facts or {}).get(f"contact.{role}.email")
                targets.append((role, value if isinstance(value, str) and value else None))
        targets += [(address, address) for address in to.addresses]
        subject = request.step.subject
        with contextlib.suppress(ValueError):
            subject = render_header(subject, facts or {}, links=DRY_RUN_LINKS)
        outcomes: list[DeliveryOutcome] = []
        seen: dict[str, str] = {}  # address -> label that already got it
        for label, address in targets:
            key = f"{request.delivery_key}/{label}"
            outcomes.append(self._notified_by_email(request, facts, key, label, address, seen))
        shown = ", ".join(_who(o) for o in outcomes) or "nobody"
        self._record(f"notify by email {subject!r} to {shown}", request, outcomes)
        return outcomes

    def _notified_by_email(
        self,
        request: EmailNotify,
        facts: dict[str, object] | None,
        key: str,
        label: str,
        address: str | None,
        seen: dict[str, str],
    ) -> DeliveryOutcome:
        skipped = DeliveryStatus.skipped
        if facts is None:
            return self._outcome(key, EMAIL, address or "", skipped, "contact not found")
        if not address:
            return self._outcome(key, EMAIL, "", skipped, f"{label}: no email address")
        try:
            recipient = valid_address(address)
        except EmailNotValidError as error:
            reason = f"{label}: invalid email address {address!r}: {error}"
            return self._outcome(key, EMAIL, address, skipped, reason)
        if recipient in seen:
            reason = f"same address as {seen[recipient]}: sent once"
            return self._outcome(key, EMAIL, recipient, skipped, reason)
        seen[recipient] = label
        try:
            render_header(request.step.subject, facts, links=DRY_RUN_LINKS)
            render(request.step.text, facts, links=DRY_RUN_LINKS)
        except ValueError as error:  # MergeTagError, or a header with a line break
            return self._outcome(key, EMAIL, recipient, DeliveryStatus.failed, str(error))
        return self._outcome(key, EMAIL, recipient, DeliveryStatus.sent, NOT_SENT)

    @activity.defn(name="notify_sms")
    async def notify_sms(self, request: SmsNotify) -> list[DeliveryOutcome]:
        _, facts = self._facts(request.contact_id)
        if facts is None:
            error = _missing_contact(request.contact_id)
            self._record(
                f"notify by SMS {request.step.label!r} failed: {error.message}", request, None
            )
            raise error
        sender = request.step.sender or request.default_sender
        text, problem = compose(request.step.text, facts, sender)
        outcomes: list[DeliveryOutcome] = []
        sent_to: set[str] = set()
        for label, raw in recipients(request.step.to, facts):
            skipped = DeliveryStatus.skipped
            if raw is None:
                slot = label.replace(" ", "_")
                key, reason = f"{request.delivery_key}/{slot}", f"{label} has no mobile number"
                outcomes.append(self._outcome(key, SMS, label, skipped, reason))
                continue
            number = normalise_number(raw, self.sms_region)
            if number is None:
                key, reason = f"{request.delivery_key}/{raw}", f"{label}: invalid mobile number"
                outcomes.append(self._outcome(key, SMS, raw, skipped, reason))
                continue
            if not is_mobile(number):
                key, reason = f"{request.delivery_key}/{number}", f"{label}: {NOT_MOBILE}"
                outcomes.append(self._outcome(key, SMS, number, skipped, reason))
                continue
            if number in sent_to:
                continue
            sent_to.add(number)
            key = f"{request.delivery_key}/{number}"
            if problem is not None:
                outcomes.append(self._outcome(key, SMS, number, DeliveryStatus.failed, problem))
            else:
                detail = str(segments(text))
                outcomes.append(self._outcome(key, SMS, number, DeliveryStatus.sent, detail))
        to = ", ".join(_who(o) for o in outcomes) or "nobody"
        self._record(f"notify by SMS {request.step.label!r} to {to}", request, outcomes)
        return outcomes


def _who(outcome: DeliveryOutcome) -> str:
    if outcome.status is DeliveryStatus.sent:
        return outcome.recipient  # masked
    return f"nobody ({outcome.detail})"


def _message_text(channel: str, content: str, to: str, outcome: DeliveryOutcome) -> str:
    if outcome.status is DeliveryStatus.sent:
        return f"{channel} {content} to {to}"
    return f"{channel} {content} {outcome.status.value}: {outcome.detail}"
