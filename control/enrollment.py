"""Enrolling contacts in a flow: the flow's rules first, then one participant workflow each.

Starting is idempotent: the workflow id is derived from (flow, contact), so a contact that is
already active in the flow is reported as such instead of being enrolled twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select, update
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from control.flows import FlowRejected, StoredFlow, UnknownFlow, load_flow, set_flow_status
from models import schedule
from models import search_attributes as sa
from models.criteria import evaluate
from models.crm import Contact, ProjectMember, SelectionMember, contact_facts
from models.database import session
from models.engine import FlowStatus, Participant, ParticipantStatus
from models.events import FlowEvent
from models.flow import Flow, ReentryRule, SuccessKind
from models.participant import Enrollment, Suggestion, participant_workflow_id
from models.personal_data import short_name
from models.validation import check_flow
from scripts import registered_scripts
from workflows.participant import BEHAVIOUR, ParticipantWorkflow

# The participant workflow's signals: what brought it in, and "take this contact out".
EVENT_SIGNAL = "event"
LEAVE_SIGNAL = "leave"

# Concurrent start requests: enough to keep a dev server busy without queueing thousands of RPCs.
START_CONCURRENCY = 32
# Candidates screened by the flow's rules per database session: a few queries per batch.
SCREEN_BATCH = 500


@dataclass
class EnrollmentReport:
    flow_id: str
    version: int
    enrolled: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # contact id -> why not
    # contact id -> the flows it was taken out of ("remove from other flows")
    removed: dict[int, list[str]] = field(default_factory=dict)
    # contacts whose active participant was replaced by a new one (re-entry rule restart)
    restarted: list[int] = field(default_factory=list)


# The reason a participant replaced under the re-entry rule "restart" left with.
RESTARTED = "restarted: enrolled again"


def selection_members(engine: Engine, selection_id: int) -> list[int]:
    with session(engine) as db:
        rows = db.exec(
            select(SelectionMember.contact_id).where(SelectionMember.selection_id == selection_id)
        ).all()
    return sorted(rows)


@dataclass
class Screening:
    """The flow's rules applied to a batch of candidates: who may not enter and why, and the
    short names of the others (for the workflow list's summary)."""

    refused: dict[int, str] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    succeeded: set[int] = field(default_factory=set)  # meet a success criterion already


def _screen(engine: Engine, stored: StoredFlow, contact_ids: Sequence[int]) -> Screening:
    """The flow's enrollment rules (spec §2) for a batch of candidates, in the order a single
    candidate meets them: the contact exists, is on no exclusion list, has not taken part before
    when the flow allows it only once, and matches the filter. A few queries per batch."""
    flow = stored.flow
    screening = Screening()
    with session(engine) as db:
        if flow.filter is not None:
            # Whole rows: the filter's facts read them again, from the session rather than the
            # database.
            contacts = db.exec(select(Contact).where(col(Contact.id).in_(contact_ids))).all()
            names = {c.id: short_name(c.first_name, c.last_name) for c in contacts}
        else:
            rows = db.exec(
                select(Contact.id, Contact.first_name, Contact.last_name).where(
                    col(Contact.id).in_(contact_ids)
                )
            ).all()
            names = {contact_id: short_name(first, last) for contact_id, first, last in rows}
        excluded: dict[int, int] = {}
        if flow.exclusion_selections:
            memberships = db.exec(
                select(SelectionMember.contact_id, SelectionMember.selection_id)
                .where(
                    col(SelectionMember.contact_id).in_(contact_ids),
                    col(SelectionMember.selection_id).in_(flow.exclusion_selections),
                )
                # On several exclusion lists: the one it joined first is named.
                .order_by(col(SelectionMember.id))
            ).all()
            for contact_id, selection_id in memberships:
                excluded.setdefault(contact_id, selection_id)
        again = _reentry_refusals(db, flow, contact_ids, datetime.now(UTC))
        for contact_id in contact_ids:
            if contact_id not in names:
                screening.refused[contact_id] = "no such contact"
            elif contact_id in excluded:
                screening.refused[contact_id] = (
                    f"on the exclusion list (selection {excluded[contact_id]})"
                )
            elif contact_id in again:
                screening.refused[contact_id] = again[contact_id]
            elif flow.filter is not None and not evaluate(
                flow.filter, contact_facts(db, contact_id) or {}
            ):
                screening.refused[contact_id] = "does not match the flow's filter"
            else:
                screening.names[contact_id] = names[contact_id]
        screening.succeeded = already_successful(db, flow, list(screening.names))
    return screening


def already_successful(db: Session, flow: Flow, contact_ids: Sequence[int]) -> set[int]:
    """The candidates that meet one of the flow's success criteria as they enter (spec §2: they
    are enrolled and count as a success): members of a selection or project that a criterion
    "added to selection/project" names. Criteria on events are met by events: a trigger's event
    reaches the participant before its first step, and counts there."""
    if flow.success is None or not contact_ids:
        return set()
    criteria = flow.success.criteria
    selections = [c.selection_id for c in criteria if c.kind is SuccessKind.added_to_selection]
    projects = [c.project_id for c in criteria if c.kind is SuccessKind.added_to_project]
    memberships = (
        (SelectionMember.contact_id, SelectionMember.selection_id, selections),
        (ProjectMember.contact_id, ProjectMember.project_id, projects),
    )
    found: set[int] = set()
    for member, group, named in memberships:
        groups = [g for g in named if g is not None]
        if groups:
            found |= set(
                db.exec(
                    select(member).where(col(member).in_(contact_ids), col(group).in_(groups))
                ).all()
            )
    return found


def _reentry_refusals(
    db: Session, flow: Flow, contact_ids: Sequence[int], now: datetime
) -> dict[int, str]:
    """The candidates the flow's re-entry rule keeps out, and why: one that took part before,
    when the flow allows it only once; one that left less than the cool-down ago. (Being active
    now is refused at the start, by the workflow id, unless the rule restarts it.)"""
    rule = flow.reentry_rule
    if rule not in (ReentryRule.once, ReentryRule.after_cooldown):
        return {}
    rows = db.exec(
        select(Participant.contact_id, Participant.status, Participant.finished_at).where(
            Participant.flow_id == flow.id, col(Participant.contact_id).in_(contact_ids)
        )
    ).all()
    if rule is ReentryRule.once:
        return {c: "already took part, and the flow allows it only once" for c, _, _ in rows}
    days = flow.reentry.cooldown_days or 0
    active = {c for c, status, _ in rows if status == ParticipantStatus.active.value}
    last_left: dict[int, datetime] = {}
    for contact_id, _, finished_at in rows:
        if finished_at is not None and contact_id not in active:
            last_left[contact_id] = max(finished_at, last_left.get(contact_id, finished_at))
    refused: dict[int, str] = {}
    for contact_id, left in last_left.items():
        again = left + timedelta(days=days)
        if now < again:
            zone = flow.time_zone
            refused[contact_id] = (
                f"left the flow {schedule.local_date(left, zone).isoformat()}: may enter again "
                f"from {schedule.describe_instant(again, zone)} (a cool-down of {days} days)"
            )
    return refused


def _replaced(engine: Engine, flow_id: str, contact_id: int, new_participant: str) -> None:
    """The rows of the participant a restart replaced: it left, as its workflow cannot say."""
    with session(engine) as db:
        db.exec(
            update(Participant)
            .where(
                col(Participant.flow_id) == flow_id,
                col(Participant.contact_id) == contact_id,
                col(Participant.status) == ParticipantStatus.active.value,
                col(Participant.id) != new_participant,
            )
            .values(
                status=ParticipantStatus.dropped_out.value,
                drop_out_reason=RESTARTED,
                finished_at=datetime.now(UTC),
                wait_until=None,
            )
        )


async def enroll(
    client: Client,
    engine: Engine,
    flow_id: str,
    contact_ids: Iterable[int],
    *,
    task_queue: str,
    progress: Callable[[int], None] | None = None,
    steps_per_run: int | None = None,
    event: FlowEvent | None = None,
) -> EnrollmentReport:
    """Start a participant for each contact that passes the rules; say why for the others.

    ``event``: what enrolled them (a trigger); each new participant gets it as its first signal.
    """
    stored = load_flow(engine, flow_id)
    document = stored.flow.model_dump(mode="json", by_alias=True)
    report = check_flow(document, known_scripts=registered_scripts())
    if not report.can_run:
        raise FlowRejected(report, f"flow {flow_id!r} is not ready to run")
    result = EnrollmentReport(flow_id, stored.version)
    candidates = list(dict.fromkeys(contact_ids))
    if stored.flow.enrollment_end is not None:
        end = schedule.local_to_instant(stored.flow.enrollment_end, stored.flow.time_zone)
        if datetime.now(UTC) >= end:
            result.refused = {c: "enrollment has ended" for c in candidates}
            return result
    if stored.status is FlowStatus.not_running:
        set_flow_status(engine, flow_id, FlowStatus.running)

    # The rules are checked a batch at a time, just ahead of the starts: the next batch is
    # screened while the last starts of this one are in flight.
    gate = asyncio.Semaphore(START_CONCURRENCY)
    failed = False

    async def start_one(contact_id: int, name: str, success: bool) -> None:
        nonlocal failed
        try:
            reason = await _start(
                client, engine, stored, contact_id, name, task_queue, steps_per_run, event, success
            )
            if reason is None or reason == RESTARTED:
                result.enrolled.append(contact_id)
                if reason == RESTARTED:
                    result.restarted.append(contact_id)
                removed = await _remove_from_other_flows(client, stored.flow, contact_id)
                if removed:
                    result.removed[contact_id] = removed
            else:
                result.refused[contact_id] = reason
        except BaseException:
            failed = True
            raise
        finally:
            gate.release()
        if progress is not None:
            progress(1)

    starts: list[asyncio.Task[None]] = []
    for first in range(0, len(candidates), SCREEN_BATCH):
        batch = candidates[first : first + SCREEN_BATCH]
        screening = await asyncio.to_thread(_screen, engine, stored, batch)
        for contact_id in batch:
            if failed:
                break  # the error surfaces below; no more starts after it
            reason = screening.refused.get(contact_id)
            if reason is not None:
                result.refused[contact_id] = reason
                if progress is not None:
                    progress(1)
                continue
            await gate.acquire()
            name, success = screening.names[contact_id], contact_id in screening.succeeded
            starts.append(asyncio.create_task(start_one(contact_id, name, success)))
        if failed:
            break
    await asyncio.gather(*starts)
    result.enrolled.sort()
    return result


async def _start(
    client: Client,
    engine: Engine,
    stored: StoredFlow,
    contact_id: int,
    name: str,
    task_queue: str,
    steps_per_run: int | None,
    event: FlowEvent | None = None,
    success: bool = False,
) -> str | None:
    """Start the contact's participant: None when it started, RESTARTED when it replaced an
    active one (re-entry rule restart), or why it did not start."""
    flow = stored.flow
    workflow_id = participant_workflow_id(flow.id, contact_id)
    restart = flow.reentry_rule is ReentryRule.restart
    # Enrolled by an event: signal-with-start puts it in the participant's history before its
    # first step. That call signals a running participant instead of refusing it: look first.
    # A restart replaces a running one: look to know.
    running = (event is not None or restart) and await _running(client, workflow_id)
    if running and not restart:
        return "already active in this flow"
    # Enrolled while the flow is paused: the participant queues before the first step.
    paused = stored.status is FlowStatus.paused
    enrollment = Enrollment(
        flow=flow,
        flow_version=stored.version,
        contact_id=contact_id,
        paused=paused,
        success=success,
        behaviour=BEHAVIOUR,
    )
    if steps_per_run is not None:
        enrollment.steps_per_run = steps_per_run
    # Re-entry after leaving is allowed (a closed id may be reused); two at once are not, but
    # for a restart, which ends the running one. (Signal-with-start does not take FAIL; the
    # look above stands in for it.)
    policy = (
        WorkflowIDConflictPolicy.FAIL if event is None else WorkflowIDConflictPolicy.USE_EXISTING
    )
    if restart:
        policy = WorkflowIDConflictPolicy.TERMINATE_EXISTING
    try:
        handle = await client.start_workflow(
            ParticipantWorkflow.run,
            enrollment,
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=policy,
            start_signal=None if event is None else EVENT_SIGNAL,
            # The event's reference: its form data stays in crm_events.
            start_signal_args=[] if event is None else [event.reference()],
            search_attributes=sa.at_start(flow, stored.version, contact_id, paused=paused),
            # Shown in the UI's workflow list: recognisable without exposing the full name.
            static_summary=f"{name or 'Contact'} (contact {contact_id}) in {flow.name!r}"
            f" v{stored.version}",
        )
    except WorkflowAlreadyStartedError:
        return "already active in this flow"
    if running:
        run_id = handle.first_execution_run_id or handle.result_run_id or ""
        await asyncio.to_thread(_replaced, engine, flow.id, contact_id, run_id)
        return RESTARTED
    return None


async def _running(client: Client, workflow_id: str) -> bool:
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return description.status is WorkflowExecutionStatus.RUNNING


async def _remove_from_other_flows(client: Client, flow: Flow, contact_id: int) -> list[str]:
    """Spec §1: on enrollment, the contact leaves the flows listed (Dropped out there)."""
    reason = f"enrolled in flow {flow.id!r}, which removes it from this one"
    removed: list[str] = []
    for other in flow.remove_from_flows:
        if other == flow.id:
            continue
        handle = client.get_workflow_handle(participant_workflow_id(other, contact_id))
        try:
            await handle.signal(LEAVE_SIGNAL, reason)
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                continue  # not (or no longer) in that flow
            raise
        removed.append(other)
    return removed


async def suggest(
    client: Client, engine: Engine, suggestion: Suggestion, *, task_queue: str
) -> str:
    """A hand-off: enroll the contact through the other flow's own rules. A refusal is an
    outcome (the text says why), not an error."""
    try:
        report = await enroll(
            client, engine, suggestion.flow_id, [suggestion.contact_id], task_queue=task_queue
        )
    except (FlowRejected, UnknownFlow) as refused:
        return f"not enrolled in {suggestion.flow_id!r}: {str(refused).splitlines()[0]}"
    if report.enrolled:
        return f"enrolled in {suggestion.flow_id!r}"
    reason = report.refused.get(suggestion.contact_id, "refused")
    return f"not enrolled in {suggestion.flow_id!r}: {reason}"
