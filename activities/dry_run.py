"""A dry run: one contact through a flow on Temporal's time-skipping test server, nothing performed.

The real ``ParticipantWorkflow`` runs against stand-ins of its activities, so waits, working days,
sending windows and branches behave exactly as in production while months pass in seconds:

* read-only activities (``READ_ONLY``: the split decision) are the real ones, on the real CRM;
* the message activities are stand-ins that make the real checks on the real contact (address,
  consent, subscription, mobile number, merge tags) and capture the message instead of sending
  it, so a participant without a mobile number leaves at an SMS step as it would for real; the
  participant's bookkeeping makes the checks before every step (former employee, exclusion
  list) and writes nothing;
* every other activity (participant bookkeeping, list changes, and CRM step kinds added later)
  reaches one dynamic stand-in that decodes and records its input with the real activity's types
  and returns a plausible value of the real return type. Nothing is written anywhere.

Events (a link clicked, a form submitted) can be planned at offsets after enrollment
(``--event link_clicked@2d,step=welcome``): the run skips time to each and signals it to the
participant as the events service would, so waits for an action and event-based splits take the
path the contact's behaviour decides. Child workflows a step starts (``run_script``) run too, their
activities captured like the participant's.

The timeline is read back from the histories: step entries (the ``FlowStep`` upserts), timers with
their summaries, events, captured calls, and the end, in the flow's time zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from temporalio import activity
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RawValue, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.email import EmailNotify, EmailSend, _marketing_recipient, _Refused
from activities.flows import FlowRejected, load_flow
from activities.participants import ParticipantRecord, _leave_reason
from activities.sms import CHANNEL as SMS
from activities.sms import INVALID_MOBILE, NO_MOBILE, SmsNotify, SmsSend, TwilioSettings
from models import schedule
from models import search_attributes as sa
from models.crm import Contact, contact_facts
from models.database import session
from models.engine import ParticipantStatus
from models.events import EventKind, FlowEvent
from models.flow import Flow, Recipients
from models.ledger import DeliveryOutcome, DeliveryStatus
from models.merge_tags import MergeTagError, render, render_header
from models.participant import Enrollment, ParticipantState, Standing
from models.personal_data import mask_email, mask_phone, short_name
from models.settings import get_settings
from models.sms import normalise_number, segments
from models.validation import check_flow
from worker import activities_for, build_worker
from workflows.participant import ParticipantWorkflow

# Activities that only read: the real ones run (on the real CRM) so decisions match production.
READ_ONLY = frozenset({"choose_split_branch", "prepare_script"})
EVENT_SIGNAL = "event"  # the participant workflow's signal for a FlowEvent
MESSAGE_ACTIVITIES = frozenset({"send_email", "send_sms", "notify_email", "notify_sms"})
# Captured, but not worth a line in the timeline.
BOOKKEEPING = frozenset({"record_participant"})
TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"
NOT_SENT = "captured, not sent"
WALL_LIMIT = 120.0  # seconds; a 90-day flow takes a few
# Links merge tags may name; the real URLs come from the worker's settings.
DRY_RUN_LINKS = {
    name: f"https://dry-run.invalid/{name}"
    for name in ("unsubscribe", "subscription", "webversion")
}


class UnknownContact(LookupError):
    pass


class DryRunStuck(RuntimeError):
    pass


class Captured(BaseModel):
    """One activity call the dry run answered instead of performing it."""

    activity: str
    activity_id: str
    workflow_id: str
    run_id: str
    at: datetime
    description: str
    input: Any = None
    result: Any = None


class TimelineEntry(BaseModel):
    at: datetime
    kind: typing.Literal["enrolled", "step", "wait", "event", "action", "end"]
    text: str
    step_id: str | None = None
    outcome: str = ""
    until: datetime | None = None  # waits: when the timer fires


class PlannedEvent(BaseModel):
    """An event to happen ``after`` enrollment: ``KIND@OFFSET[,key=value…]``, e.g.
    ``link_clicked@2d,step=welcome``, ``form_submitted@3h,form=1,data.topic=pricing``.
    Offsets take m, h, d or w. Keys: step (a send_email step of the flow), link, form,
    selection, project, sale, and data.NAME for form fields."""

    after: timedelta
    kind: EventKind
    step_id: str | None = None
    link: str | None = None
    form_id: int | None = None
    selection_id: int | None = None
    project_id: int | None = None
    sale_id: int | None = None
    data: dict[str, str] = {}

    @classmethod
    def parse(cls, spec: str) -> PlannedEvent:
        head, *pairs = spec.split(",")
        kind, at, offset = head.partition("@")
        units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        if not at or offset[-1:] not in units or not offset[:-1].isdigit():
            raise ValueError(f"{spec!r}: write KIND@OFFSET, e.g. link_clicked@2d")
        fields: dict[str, Any] = {"after": timedelta(**{units[offset[-1]]: int(offset[:-1])})}
        names = {"step": "step_id", "link": "link", "form": "form_id", "selection": "selection_id"}
        names |= {"project": "project_id", "sale": "sale_id"}
        data: dict[str, str] = {}
        for pair in pairs:
            key, equals, value = pair.partition("=")
            if key.startswith("data.") and equals:
                data[key.removeprefix("data.")] = value
            elif key in names and equals:
                fields[names[key]] = value
            else:
                raise ValueError(f"{spec!r}: unknown part {pair!r}")
        return cls.model_validate({**fields, "kind": kind, "data": data})

    def event(self, flow_id: str, contact_id: int, at: datetime) -> FlowEvent:
        tracked = self.kind in (EventKind.link_clicked, EventKind.email_opened)
        return FlowEvent(
            event_id=f"dry-run-{uuid.uuid4()}",
            kind=self.kind,
            contact_id=contact_id,
            occurred_at=at,
            flow_id=flow_id if tracked else None,
            **self.model_dump(exclude={"after", "kind"}),
        )


class DryRun(BaseModel):
    flow_id: str
    flow_name: str
    version: int
    time_zone: str
    contact_id: int
    contact: str  # as short as in summaries: "Karin S."
    started_at: datetime
    ended_at: datetime
    state: ParticipantState
    timeline: list[TimelineEntry]
    captured: list[Captured]
    wall_seconds: float


# --- capturing activities -----------------------------------------------------------------------


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _outcome(
    key: str, channel: str, recipient: str, status: DeliveryStatus, detail: str
) -> DeliveryOutcome:
    return DeliveryOutcome(
        key=key, channel=channel, recipient=recipient, status=status, detail=detail
    )


@dataclass
class Capture:
    """The stand-ins for one dry run, and what they captured."""

    engine: Engine
    sms_region: str = field(default_factory=lambda: get_settings().sms_default_region)
    calls: list[Captured] = field(default_factory=list)
    signatures: dict[str, tuple[list[Any], Any]] = field(default_factory=dict)

    def activities(self) -> list[Callable[..., Any]]:
        # The real set is the list of names to stand in for: a step kind added later is
        # captured, with its own input and result types, without a change here.
        real = activities_for(
            self.engine, twilio=TwilioSettings(account_sid="dry-run", auth_token="dry-run")
        )
        kept: list[Callable[..., Any]] = []
        for fn in real:
            definition = activity._Definition.must_from_callable(fn)
            if definition.name is None:  # a dynamic activity: nothing to stand in for
                continue
            arg_types = list(definition.arg_types or [])
            self.signatures[definition.name] = (arg_types, definition.ret_type)
            if definition.name in READ_ONLY:
                kept.append(fn)
        standing_in: list[Callable[..., Any]] = [
            self.record_participant,
            self.send_email,
            self.send_sms,
            self.notify_email,
            self.notify_sms,
            self.any_other,
        ]
        return [*kept, *standing_in]

    def _record(self, description: str, request: Any, result: Any) -> None:
        info = activity.info()
        self.calls.append(
            Captured(
                activity=info.activity_type,
                activity_id=info.activity_id,
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
            standing = Standing(leave_reason=_leave_reason(db, record))
        self._record("record participant (not written)", record, standing)
        return standing

    @activity.defn(name="send_email")
    async def send_email(self, request: EmailSend) -> DeliveryOutcome:
        key, step = request.delivery_key, request.step
        contact, facts = self._facts(request.contact_id)
        subject = step.subject
        with contextlib.suppress(ValueError):
            subject = render_header(step.subject, facts or {}, links=DRY_RUN_LINKS)
        if contact is None or facts is None:
            outcome = _outcome(key, "email", "", DeliveryStatus.skipped, "contact not found")
        elif request.settings is None:
            detail = "the flow has no email settings"
            outcome = _outcome(key, "email", "", DeliveryStatus.failed, detail)
        else:
            try:
                address = _marketing_recipient(contact, facts, request.settings.subscription_type)
                subject = render_header(step.subject, facts, links=DRY_RUN_LINKS)
                for body, html in ((step.html, True), (step.text, False)):
                    if body is not None:
                        render(body, facts, html=html, links=DRY_RUN_LINKS)
                outcome = _outcome(key, "email", address, DeliveryStatus.sent, NOT_SENT)
            except _Refused as refusal:
                outcome = _outcome(
                    key, "email", contact.email or "", DeliveryStatus.skipped, str(refusal)
                )
            except ValueError as error:  # MergeTagError, or a header with a line break
                outcome = _outcome(key, "email", "", DeliveryStatus.failed, str(error))
        to = mask_email(outcome.recipient) if outcome.recipient else "-"
        self._record(_message_text("email", repr(subject), to, outcome), request, outcome)
        return outcome

    @activity.defn(name="send_sms")
    async def send_sms(self, request: SmsSend) -> DeliveryOutcome:
        key, step = request.delivery_key, request.step
        _, facts = self._facts(request.contact_id)
        raw = facts.get("contact.mobile") if facts is not None else None
        mobile = raw.strip() if isinstance(raw, str) else ""
        number = normalise_number(mobile, self.sms_region) if mobile else None
        text = step.text
        sender = step.sender or request.default_sender
        if facts is None:
            outcome = _outcome(key, SMS, "", DeliveryStatus.skipped, "contact not found")
        elif not mobile:
            outcome = _outcome(key, SMS, "", DeliveryStatus.skipped, NO_MOBILE)
        elif number is None:
            outcome = _outcome(key, SMS, mobile, DeliveryStatus.skipped, INVALID_MOBILE)
        elif sender is None:
            detail = "no SMS sender: set the step's sender or the flow's SMS sender"
            outcome = _outcome(key, SMS, number, DeliveryStatus.failed, detail)
        else:
            try:
                text = render(step.text, facts)
                # The same detail as a real send: the participant's outcome reads the same.
                outcome = _outcome(key, SMS, number, DeliveryStatus.sent, str(segments(text)))
            except MergeTagError as error:
                detail = f"merge tags: {error}"
                outcome = _outcome(key, SMS, number, DeliveryStatus.failed, detail)
        to = mask_phone(outcome.recipient) if outcome.recipient else "-"
        shown = repr(text) if outcome.status is DeliveryStatus.sent else repr(step.label)
        self._record(_message_text("SMS", shown, to, outcome), request, outcome)
        return outcome

    @activity.defn(name="notify_email")
    async def notify_email(self, request: EmailNotify) -> list[DeliveryOutcome]:
        _, facts = self._facts(request.contact_id)
        outcomes = [
            _notified(request.delivery_key, "email", label, address)
            for label, address in _recipients(request.step.to, facts, "email")
        ]
        subject = request.step.subject
        with contextlib.suppress(ValueError):
            subject = render_header(subject, facts or {}, links=DRY_RUN_LINKS)
        to = ", ".join(_who(o, mask_email) for o in outcomes)
        self._record(f"notify by email {subject!r} to {to}", request, outcomes)
        return outcomes

    @activity.defn(name="notify_sms")
    async def notify_sms(self, request: SmsNotify) -> list[DeliveryOutcome]:
        _, facts = self._facts(request.contact_id)
        outcomes = [
            _notified(request.delivery_key, SMS, label, number)
            for label, number in _recipients(request.step.to, facts, "mobile")
        ]
        to = ", ".join(_who(o, mask_phone) for o in outcomes)
        self._record(f"notify by SMS {request.step.label!r} to {to}", request, outcomes)
        return outcomes


def _recipients(
    to: Recipients, facts: dict[str, object] | None, kind: str
) -> list[tuple[str, str | None]]:
    """(label, address or number) for each recipient a notify step names."""
    facts = facts or {}
    found: list[tuple[str, str | None]] = []
    for role in ("our_contact", "our_service_contact"):
        if getattr(to, role):
            value = facts.get(f"contact.{role}.{kind}")
            found.append((role.replace("_", " "), value if isinstance(value, str) else None))
    found += [(address, address) for address in to.addresses]
    return found


def _notified(key: str, channel: str, label: str, to: str | None) -> DeliveryOutcome:
    if not to:
        return _outcome(f"{key}/{label}", channel, "", DeliveryStatus.skipped, f"{label}: none")
    return _outcome(f"{key}/{label}", channel, to, DeliveryStatus.sent, NOT_SENT)


def _who(outcome: DeliveryOutcome, mask: Callable[[str], str]) -> str:
    if outcome.status is DeliveryStatus.sent:
        return mask(outcome.recipient)
    return f"nobody ({outcome.detail})"


def _message_text(channel: str, content: str, to: str, outcome: DeliveryOutcome) -> str:
    if outcome.status is DeliveryStatus.sent:
        return f"{channel} {content} to {to}"
    return f"{channel} {content} {outcome.status.value}: {outcome.detail}"


# --- running ------------------------------------------------------------------------------------


def _contact_name(engine: Engine, contact_id: int) -> str:
    with session(engine) as db:
        contact = db.get(Contact, contact_id)
        if contact is None:
            raise UnknownContact(f"no contact {contact_id}")
        return short_name(contact.first_name, contact.last_name)


async def dry_run(
    engine: Engine,
    flow_id: str,
    contact_id: int,
    *,
    version: int | None = None,
    start_at: datetime | None = None,
    events: Sequence[PlannedEvent] = (),
    env: WorkflowEnvironment | None = None,
) -> DryRun:
    """Run the flow for one contact on a time-skipping server and return its timeline.

    ``start_at``: enroll at this (future) instant rather than now; a naive one is a local time
    in the flow's time zone. ``events``: what the contact does, and when. ``env``: an already
    running time-skipping environment; by default one is started from the venv and stopped."""
    stored = load_flow(engine, flow_id, version)
    if start_at is not None and start_at.tzinfo is None:
        start_at = schedule.local_to_instant(start_at, stored.flow.time_zone)
    report = check_flow(stored.flow.model_dump(mode="json", by_alias=True))
    if not report.can_run:
        raise FlowRejected(report, f"flow {flow_id!r} is not ready to run")
    name = _contact_name(engine, contact_id)
    wall = time.monotonic()
    own = env is None
    if env is None:
        env = await WorkflowEnvironment.start_time_skipping(
            data_converter=pydantic_data_converter,
            test_server_existing_path=str(TEST_SERVER),
            # The test server is no production server: keep the SDK's warnings about that off
            # the timeline. (Made here, not at import: a runtime starts threads.)
            runtime=Runtime(
                telemetry=TelemetryConfig(
                    logging=LoggingConfig(
                        filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")
                    )
                )
            ),
        )
    try:
        await sa.register_search_attributes(env.client)
        if start_at is not None:
            ahead = start_at - await env.get_current_time()
            if ahead > timedelta(0):
                await env.sleep(ahead)
        capture = Capture(engine)
        task_queue = f"dry-run-{uuid.uuid4()}"
        async with build_worker(
            env.client, engine, task_queue=task_queue, activities=capture.activities()
        ):
            handle = await env.client.start_workflow(
                ParticipantWorkflow.run,
                Enrollment(flow=stored.flow, flow_version=stored.version, contact_id=contact_id),
                id=f"dry-run-{flow_id}-contact-{contact_id}-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.FLOW_ID, flow_id),
                        SearchAttributePair(sa.FLOW_VERSION, stored.version),
                        SearchAttributePair(sa.CONTACT_ID, contact_id),
                        SearchAttributePair(sa.PARTICIPANT_STATUS, ParticipantStatus.active.value),
                    ]
                ),
                static_summary=f"Dry run: {name} (contact {contact_id}) in {stored.flow.name!r}",
            )
            try:
                state: ParticipantState = await asyncio.wait_for(
                    _run(env, handle, flow_id, contact_id, events), WALL_LIMIT
                )
            except TimeoutError:
                # E.g. an activity failing without end: skipped time makes every retry instant.
                await handle.terminate("the dry run took too long")
                raise DryRunStuck(
                    f"the dry run did not finish within {WALL_LIMIT:.0f} s of wall time"
                ) from None
            history = await _history(env.client, handle.id, handle.result_run_id or "")
            await _children_done(env.client, history)
        timeline = build_timeline(stored.flow, history, state, capture.calls, env.client)
    finally:
        if own:
            await env.shutdown()
    return DryRun(
        flow_id=flow_id,
        flow_name=stored.flow.name,
        version=stored.version,
        time_zone=stored.flow.time_zone,
        contact_id=contact_id,
        contact=name,
        started_at=timeline[0].at,
        ended_at=timeline[-1].at,
        state=state,
        timeline=timeline,
        captured=capture.calls,
        wall_seconds=time.monotonic() - wall,
    )


async def _run(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[Any, ParticipantState],
    flow_id: str,
    contact_id: int,
    events: Sequence[PlannedEvent],
) -> ParticipantState:
    """Let the participant run, skipping time to each planned event and signalling it."""
    enrolled = await env.get_current_time()
    for planned in sorted(events, key=lambda e: e.after):
        ahead = enrolled + planned.after - await env.get_current_time()
        if ahead > timedelta(0):
            await env.sleep(ahead)
        event = planned.event(flow_id, contact_id, await env.get_current_time())
        try:
            await handle.signal(EVENT_SIGNAL, event)
        except RPCError:
            break  # the participant has left: later events find nobody either
    state: ParticipantState = await handle.result()
    return state


async def _children_done(client: Client, history: list[HistoryEvent]) -> None:
    """Wait for the child workflows the participant started (scripts), so that their captured
    calls are on the timeline; a child's failure is its own business."""
    for event in history:
        if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
            child = event.start_child_workflow_execution_initiated_event_attributes.workflow_id
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.get_workflow_handle(child).result(), WALL_LIMIT)


async def _history(client: Client, workflow_id: str, first_run: str) -> list[HistoryEvent]:
    """Every event of the participant, following continue-as-new from run to run."""
    events: list[HistoryEvent] = []
    run_id: str | None = first_run
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        run = [event async for event in handle.fetch_history_events()]
        events += run
        run_id = None
        if run and run[-1].HasField("workflow_execution_continued_as_new_event_attributes"):
            attributes = run[-1].workflow_execution_continued_as_new_event_attributes
            run_id = attributes.new_execution_run_id
    return events


# --- the timeline -------------------------------------------------------------------------------


def _summary(event: HistoryEvent, client: Client) -> str:
    if not event.user_metadata.HasField("summary"):
        return ""
    text: str = client.data_converter.payload_converter.from_payload(
        event.user_metadata.summary, str
    )
    return text


def _call_text(call: Captured, summary: str = "") -> str:
    if call.description.endswith("(not performed)") and summary:
        return f"{summary} ({call.activity}, not performed)"
    return call.description


def _event_text(event: FlowEvent) -> str:
    where = [
        f"{name} {value}"
        for name, value in (
            ("step", event.step_id),
            ("link", event.link),
            ("form", event.form_id),
            ("selection", event.selection_id),
            ("project", event.project_id),
            ("sale", event.sale_id),
        )
        if value is not None
    ]
    where += [f"{name}={value!r}" for name, value in event.data.items()]
    return f"⚡ {event.kind.value}" + (f" ({', '.join(where)})" if where else "")


def build_timeline(
    flow: Flow,
    events: list[HistoryEvent],
    state: ParticipantState,
    captured: list[Captured],
    client: Client,
) -> list[TimelineEntry]:
    """The participant's story from its history: step entries, timers, captured calls, the end."""
    by_activity = {(c.run_id, c.activity_id): c for c in captured}
    steps = {step.id: step for step in flow.steps}
    converter = client.data_converter.payload_converter
    entries: list[TimelineEntry] = []
    step_entries: list[TimelineEntry] = []
    run_id = ""
    for event in events:
        at = event.event_time.ToDatetime(tzinfo=UTC)
        if event.HasField("workflow_execution_started_event_attributes"):
            run_id = event.workflow_execution_started_event_attributes.original_execution_run_id
            if not entries:
                entries.append(TimelineEntry(at=at, kind="enrolled", text="enrolled"))
        elif event.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            payload = fields.indexed_fields.get(sa.FLOW_STEP.name)
            if payload is not None:
                step_id: str = converter.from_payload(payload, str)
                step = steps.get(step_id)
                text = f"{step.label} ({step.type})" if step is not None else step_id
                entry = TimelineEntry(at=at, kind="step", text=text, step_id=step_id)
                entries.append(entry)
                step_entries.append(entry)
        elif event.HasField("timer_started_event_attributes"):
            timeout = event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            text = _summary(event, client) or "wait"
            entries.append(TimelineEntry(at=at, kind="wait", text=text, until=at + timeout))
        elif event.HasField("workflow_execution_signaled_event_attributes"):
            signal = event.workflow_execution_signaled_event_attributes
            if signal.signal_name == EVENT_SIGNAL and signal.input.payloads:
                received = converter.from_payload(signal.input.payloads[0], FlowEvent)
                entries.append(TimelineEntry(at=at, kind="event", text=_event_text(received)))
        elif event.HasField("start_child_workflow_execution_initiated_event_attributes"):
            child = event.start_child_workflow_execution_initiated_event_attributes
            summary = _summary(event, client) or f"workflow {child.workflow_type.name}"
            text = f"starts {summary} ({child.workflow_id})"
            entries.append(TimelineEntry(at=at, kind="action", text=text))
            # The child's own captured calls (a script's), in order.
            entries += [
                TimelineEntry(at=c.at, kind="action", text=f"  {_call_text(c)}")
                for c in captured
                if c.workflow_id == child.workflow_id and c.activity not in READ_ONLY
            ]
        elif event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            call = by_activity.get((run_id, attributes.activity_id))
            if attributes.activity_type.name in READ_ONLY or call is None:
                continue
            text = _call_text(call, _summary(event, client))
            entries.append(TimelineEntry(at=call.at, kind="action", text=text))
    # The trail keeps the newest visits: line them up with the last step entries.
    if state.trail:
        for entry, visit in zip(step_entries[-len(state.trail) :], state.trail, strict=False):
            entry.outcome = visit.outcome
    end = state.finished_at or (entries[-1].at if entries else datetime.now(UTC))
    verdict = state.status.value
    if state.drop_out_reason:
        verdict += f": {state.drop_out_reason}"
    entries.append(TimelineEntry(at=end, kind="end", text=verdict))
    return entries


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d" * bool(days), f"{hours} h" * bool(hours), f"{minutes} min" * bool(minutes)]
    return " ".join(part for part in parts if part) or "0 min"


def render_timeline(run: DryRun) -> str:
    """The timeline as text: each step as it is entered, what happened there, and the outcome
    where it says more than the lines above (a branch taken, no response). A time is printed
    when it differs from the line above."""
    zone = run.time_zone
    sends = sum(1 for c in run.captured if c.activity in MESSAGE_ACTIVITIES)
    changes = sum(
        1 for c in run.captured if c.activity not in MESSAGE_ACTIVITIES | BOOKKEEPING | READ_ONLY
    )
    lines = [
        f"Dry run of {run.flow_name!r} ({run.flow_id} v{run.version}) for {run.contact} "
        f"(contact {run.contact_id})",
        f"Times in {zone}. Nothing was sent and nothing changed: {sends} message(s) and "
        f"{changes} other change(s) were captured.",
        "",
    ]

    def local(instant: datetime) -> str:
        return schedule.describe_instant(instant, zone).removesuffix(f" {zone}")

    width = max(len(local(entry.at)) for entry in run.timeline)
    previous = ""
    pending = ""  # the outcome of the step being told, printed when its block ends

    def stamp(instant: datetime) -> str:
        nonlocal previous
        text = local(instant)
        shown, previous = (text if text != previous else ""), text
        return f"  {shown:<{width}}  "

    for entry in run.timeline:
        if entry.kind in ("step", "end") and pending:
            lines.append(f"  {'':<{width}}      → {pending}")
            pending = ""
        if entry.kind == "enrolled":
            lines.append(f"{stamp(entry.at)}enrolled")
        elif entry.kind == "step":
            lines.append(f"{stamp(entry.at)}▶ {entry.text}")
            # Sends and changes speak in their captured lines, waits in their timer lines.
            quiet = ("waited until", "finished", "email", "sms", "not performed", "script")
            if entry.outcome and not entry.outcome.startswith(quiet):
                pending = entry.outcome
        elif entry.kind == "wait" and entry.until is not None:
            duration = _duration(entry.until - entry.at)
            lines.append(f"{stamp(entry.at)}    ⏸ {entry.text} ({duration})")
        elif entry.kind in ("event", "action"):
            lines.append(f"{stamp(entry.at)}    {entry.text}")
        elif entry.kind == "end":
            lines.append(f"{stamp(entry.at)}■ {entry.text}")
    span = _duration(run.ended_at - run.started_at)
    lines += ["", f"{span} of flow time simulated in {run.wall_seconds:.1f} s."]
    return "\n".join(lines)
