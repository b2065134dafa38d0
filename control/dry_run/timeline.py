"""The story of a dry run, read back from the participant's histories and its state: step
entries (the state's trail: a participant no longer upserts ``FlowStep`` at every step), timers
with their summaries, events, captured calls, and the end, in the flow's time zone."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from control.dry_run.stand_ins import BOOKKEEPING, MESSAGE_ACTIVITIES, READ_ONLY, Captured
from control.enrollment import EVENT_SIGNAL
from control.histories import local_activity
from models import schedule
from models import search_attributes as sa
from models.events import FlowEvent
from models.flow import Flow
from models.participant import ParticipantState


class TimelineEntry(BaseModel):
    at: datetime
    kind: typing.Literal["enrolled", "step", "wait", "event", "action", "end"]
    text: str
    step_id: str | None = None
    outcome: str = ""
    until: datetime | None = None  # waits: when the timer fires


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


def _summary(event: HistoryEvent, client: Client) -> str:
    if not event.user_metadata.HasField("summary"):
        return ""
    text: str = client.data_converter.payload_converter.from_payload(
        event.user_metadata.summary, str
    )
    return text


def _activity_called(event: HistoryEvent) -> tuple[bool, str] | None:
    """(local, activity id) of the activity an event calls: a scheduled activity, or a local
    one's marker (a step's CRM change made in the participant's worker); None for other events.
    Local and scheduled activities are numbered apart."""
    if event.HasField("activity_task_scheduled_event_attributes"):
        return False, event.activity_task_scheduled_event_attributes.activity_id
    local = local_activity(event)
    return None if local is None else (True, str(local["activity_id"]))


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
    by_activity = {(c.run_id, c.local, c.activity_id): c for c in captured}
    steps = {step.id: step for step in flow.steps}
    converter = client.data_converter.payload_converter
    entries: list[TimelineEntry] = []
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
                entries.append(TimelineEntry(at=at, kind="step", text=text, step_id=step_id))
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
        elif (called := _activity_called(event)) is not None:
            call = by_activity.get((run_id, *called))
            if call is None or call.activity in READ_ONLY | BOOKKEEPING:
                continue
            text = _call_text(call, _summary(event, client))
            entries.append(TimelineEntry(at=call.at, kind="action", text=text))
    # The trail keeps the newest visits (when each step was entered, and how it ended); older
    # ones, in a long run, are told by the FlowStep upserts of the participants that made them.
    if state.trail:
        first = state.trail[0].entered_at
        entries = [e for e in entries if e.kind != "step" or e.at < first]
        for visit in state.trail:
            step = steps.get(visit.step)
            text = f"{step.label} ({step.type})" if step is not None else visit.step
            entries.append(
                TimelineEntry(
                    at=visit.entered_at,
                    kind="step",
                    text=text,
                    step_id=visit.step,
                    outcome=visit.outcome,
                )
            )
        # A step is told before what happened in it at the same moment.
        entries.sort(key=lambda e: (e.at, e.kind not in ("enrolled", "step")))
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
    ]
    if run.state.recipient_zone is not None:
        lines.append(
            "The sending window and waits until a date read the contact's clock: "
            f"{run.state.recipient_zone.describe()}."
        )
    lines.append("")

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
