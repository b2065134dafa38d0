"""Events in (spec §5): record an event once, then let it reach everyone it concerns.

Every way in — the tracking service's clicks, opens and forms, its ``POST /events`` for CRM
changes from outside, ``starter.py event`` and flow steps through the ``emit_event`` activity —
ends in ``ingest``:

1. the event is recorded in ``crm_events``, once per ``event_id``;
2. a form's or tracked link's own actions are carried out, once per event
   (``control.own_actions``), and the CRM changes they make are announced as events of their own
   (its scripts and reply emails run in workflows of their own, started once by ids from it);
3. it is signalled (``event``) to every active participant of its contact, without its form
   data (``FlowEvent.reference``: participants read a submission's fields from the table);
4. every running or paused flow whose triggers it matches enrolls the contact through the flow's
   own rules, with the event as the start signal (signal-with-start), so the new participant
   knows what brought it in before its first step;
5. the row is marked delivered.

Steps 2 to 5 run under a claim on the row (``delivering_since``), taken in one UPDATE that only
an undelivered, unclaimed row allows: of two ingests of one event at once (the tracking service's,
the worker's sweep, a retried activity) one delivers and the other does nothing. A delivery that
fails gives its claim back; one whose process died leaves it to expire (``CLAIM_EXPIRES``). So a
second ingest of the same event id does nothing once the first was delivered or while it is
being delivered, and if the first was cut short (the Temporal server unreachable, or a flow step
that recorded the row in its own transaction) the next ingest delivers it.

``sweep`` is that next ingest for what nobody retries: the clicks, opens and forms recorded while
the engine could not be reached. The worker runs it every ``SWEEP_SECONDS``
(``sweep_forever``), the tracking service runs it too; each such event is delivered once. Only a
process dying in the middle of a delivery makes it at least once (participants ignore an event id
they have already seen, and starting a participant is idempotent by workflow id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from control.enrollment import EVENT_SIGNAL, enroll
from control.flows import FlowRejected
from control.own_actions import carry_out
from models.database import session
from models.engine import (
    CrmEvent,
    FlowRecord,
    FlowStatus,
    FlowVersion,
    Participant,
    ParticipantStatus,
)
from models.engine import (
    record_event as record_in,
)
from models.events import EventKind, FlowEvent, IngestReport
from models.flow import Flow, Trigger
from workflows.reply import ReplyWorkflow
from workflows.script import ScriptWorkflow

log = logging.getLogger("ingest")

# A claim older than this belongs to a delivery that died: another may take the event.
CLAIM_EXPIRES = timedelta(minutes=2)
# What ``sweep`` delivers: the tracking service's kinds. Other undelivered rows are someone
# else's: a flow step's record of an addition to a list is never announced, its other changes are
# announced by its emit_event activity (retried by Temporal), and POST /events callers retry.
SWEPT_KINDS = (EventKind.link_clicked, EventKind.email_opened, EventKind.form_submitted)
SWEEP_HORIZON = timedelta(days=7)  # older undelivered events are left alone
SWEEP_BATCH = 100
SWEEP_SECONDS = 30.0  # the worker's sweeps

# Triggers stay on while a flow is paused (spec §8): its new participants queue.
TRIGGERING_STATUSES = (FlowStatus.running.value, FlowStatus.paused.value)
_IMPORT_BLIND = frozenset({EventKind.contact_created, EventKind.contact_updated})


def record_event(engine: Engine, event: FlowEvent) -> bool:
    """Store the event; True if it is new, False if its id was recorded before."""
    try:
        with session(engine) as db:
            record_in(db, event)
    except IntegrityError:
        return False  # the unique event_id: recorded already
    return True


def _claim(engine: Engine, event_id: str) -> bool:
    """Take the event's delivery: True unless it is delivered, or claimed by a delivery that
    may still be running."""
    now = datetime.now(UTC)
    claim = (
        update(CrmEvent)
        .where(
            col(CrmEvent.event_id) == event_id,
            col(CrmEvent.delivered_at).is_(None),
            or_(
                col(CrmEvent.delivering_since).is_(None),
                col(CrmEvent.delivering_since) < now - CLAIM_EXPIRES,
            ),
        )
        .values(delivering_since=now)
    )
    with session(engine) as db:
        return db.exec(claim).rowcount == 1


def _release(engine: Engine, event_id: str) -> None:
    """Give a claim back: the delivery failed, and the next ingest or sweep tries again."""
    release = (
        update(CrmEvent)
        .where(col(CrmEvent.event_id) == event_id, col(CrmEvent.delivered_at).is_(None))
        .values(delivering_since=None)
    )
    with session(engine) as db:
        db.exec(release)


def _mark_delivered(engine: Engine, event_id: str) -> None:
    with session(engine) as db:
        row = db.exec(select(CrmEvent).where(CrmEvent.event_id == event_id)).one()
        row.delivered_at = datetime.now(UTC)
        db.add(row)


def _active_participants(engine: Engine, contact_id: int) -> list[str]:
    with session(engine) as db:
        rows = db.exec(
            select(Participant.workflow_id)
            .where(
                Participant.contact_id == contact_id,
                Participant.status == ParticipantStatus.active.value,
            )
            .distinct()
        ).all()
    return sorted(rows)


def _triggering_flows(engine: Engine) -> list[Flow]:
    """The latest version of every flow whose triggers are on."""
    with session(engine) as db:
        rows = db.exec(
            select(FlowVersion)
            .join(FlowRecord, col(FlowRecord.id) == col(FlowVersion.flow_id))
            .where(
                col(FlowRecord.status).in_(TRIGGERING_STATUSES),
                col(FlowVersion.version) == col(FlowRecord.latest_version),
            )
            .order_by(col(FlowVersion.flow_id))
        ).all()
    return [Flow.model_validate(row.definition) for row in rows if row.definition.get("triggers")]


def triggered_by(trigger: Trigger, event: FlowEvent) -> bool:
    """Whether an event fires a trigger: same kind, and the same form, link, selection or
    project when the trigger names one. Created/updated by import or bulk update fires none."""
    if trigger.kind.value != event.kind.value:
        return False
    if event.kind in _IMPORT_BLIND and event.by_import:
        return False
    wanted = {
        "form_id": trigger.form_id,
        "link": trigger.link,
        "selection_id": trigger.selection_id,
        "project_id": trigger.project_id,
    }
    return all(value is None or getattr(event, name) == value for name, value in wanted.items())


async def _signal(client: Client, workflow_id: str, event: FlowEvent) -> bool:
    try:
        # The reference: a form's data stays in crm_events, out of the participant's history.
        await client.get_workflow_handle(workflow_id).signal(EVENT_SIGNAL, event.reference())
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            return False  # the participant closed since its row was read: nothing to tell
        raise
    return True


async def deliver(
    client: Client, engine: Engine, event: FlowEvent, *, task_queue: str
) -> IngestReport:
    """Steps 3 and 4 of ``ingest``: signal the contact's participants, fire matching triggers."""
    report = IngestReport(event_id=event.event_id, new=False, delivered=True)
    workflow_ids = await asyncio.to_thread(_active_participants, engine, event.contact_id)
    reached = await asyncio.gather(*(_signal(client, w, event) for w in workflow_ids))
    report.signalled = [w for w, ok in zip(workflow_ids, reached, strict=True) if ok]

    for flow in await asyncio.to_thread(_triggering_flows, engine):
        if not any(triggered_by(trigger, event) for trigger in flow.triggers):
            continue
        try:
            enrollment = await enroll(
                client, engine, flow.id, [event.contact_id], task_queue=task_queue, event=event
            )
        except FlowRejected as rejected:
            report.refused[flow.id] = str(rejected).splitlines()[0]
            continue
        if event.contact_id in enrollment.enrolled:
            report.enrolled.append(flow.id)
        else:
            report.refused[flow.id] = enrollment.refused.get(event.contact_id, "refused")
    return report


W = TypeVar("W")  # a workflow class
A = TypeVar("A")  # its run method's argument


async def _start_once(
    client: Client,
    run: Callable[[W, A], Awaitable[object]],
    arg: A,
    workflow_id: str,
    task_queue: str,
) -> None:
    # A script's or reply's workflow id comes from the event: a second run of the event's
    # actions starts nothing (and a reply's ledger key sends nothing twice).
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            run,
            arg,
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )


async def carry_out_actions(
    client: Client, engine: Engine, event: FlowEvent, *, task_queue: str
) -> list[str]:
    """Step 2 of ``ingest``: the own actions of the form or link the event names, once per
    event (``control.own_actions``), their scripts started and their changes announced."""
    if event.kind not in (EventKind.form_submitted, EventKind.link_clicked):
        return []
    done = await asyncio.to_thread(carry_out, engine, event)
    if done is None:
        return []
    scripts = (
        _start_once(client, ScriptWorkflow.run, s, f"script-{s.run_key}", task_queue)
        for s in done.scripts
    )
    replies = (
        _start_once(client, ReplyWorkflow.run, r, f"reply-{r.delivery_key}", task_queue)
        for r in done.replies
    )
    await asyncio.gather(*scripts, *replies)
    for change in done.changes:
        await ingest(client, engine, change, task_queue=task_queue)
    return [f"{done.source}: {outcome}" for outcome in done.outcomes]


async def ingest(
    client: Client, engine: Engine, event: FlowEvent, *, task_queue: str
) -> IngestReport:
    """Record the event once and deliver it (see the module's docstring)."""
    new = await asyncio.to_thread(record_event, engine, event)
    if not await asyncio.to_thread(_claim, engine, event.event_id):
        # Delivered before, or being delivered by another ingest right now.
        return IngestReport(event_id=event.event_id, new=new, delivered=False)
    try:
        actions = await carry_out_actions(client, engine, event, task_queue=task_queue)
        report = await deliver(client, engine, event, task_queue=task_queue)
        report.actions = actions
    except BaseException:
        _release(engine, event.event_id)  # a short write; also when the delivery is cancelled
        raise
    report.new = new
    await asyncio.to_thread(_mark_delivered, engine, event.event_id)
    return report


def undelivered(engine: Engine, limit: int = SWEEP_BATCH) -> list[FlowEvent]:
    """The oldest clicks, opens and forms of the last ``SWEEP_HORIZON`` not delivered yet."""
    since = datetime.now(UTC) - SWEEP_HORIZON
    with session(engine) as db:
        rows = db.exec(
            select(CrmEvent)
            .where(
                col(CrmEvent.delivered_at).is_(None),
                col(CrmEvent.kind).in_([kind.value for kind in SWEPT_KINDS]),
                col(CrmEvent.occurred_at) >= since,
            )
            .order_by(col(CrmEvent.occurred_at), col(CrmEvent.id))
            .limit(limit)
        ).all()
    events: list[FlowEvent] = []
    for row in rows:
        try:
            events.append(FlowEvent.model_validate(row.payload))
        except ValidationError:  # not one that can be delivered: never blocks the others
            log.error("event %s: its record is no FlowEvent, not delivered", row.event_id)
    return events


async def sweep(client: Client, engine: Engine, *, task_queue: str) -> int:
    """Deliver a batch of what was recorded and not delivered (see the module's docstring): how
    many this sweep delivered. Raises ``RPCError`` when Temporal cannot be reached (what it
    claimed is given back)."""
    delivered = 0
    for event in await asyncio.to_thread(undelivered, engine):
        report = await ingest(client, engine, event, task_queue=task_queue)
        delivered += report.delivered
    return delivered


async def sweep_forever(
    client: Client, engine: Engine, *, task_queue: str, every: float = SWEEP_SECONDS
) -> None:
    """Sweep every ``every`` seconds until cancelled, batch after batch while there is more."""
    while True:
        await asyncio.sleep(every)
        try:
            while await sweep(client, engine, task_queue=task_queue) == SWEEP_BATCH:
                pass
        except RPCError as error:
            log.warning("undelivered events wait: Temporal not reachable (%s)", error)
        except Exception:
            log.exception("sweeping undelivered events failed; trying again later")
