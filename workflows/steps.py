"""What each step kind does inside a participant workflow: one function per kind.

A step function gets the running participant and its step, runs activities or timers, and returns
where the participant goes next: ``Continue`` to a step id, or ``Leave`` the flow with a status.
Activities are called by reference to their definitions, so their input and result types are
checked; the modules that define them pass through the sandbox (imported once, outside it). Every
timeout and retry policy sits next to the call that uses it. ``run_step`` dispatches on the step's
kind, and mypy checks that it handles every kind of the ``Step`` union.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, assert_never, overload

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.contacts import (
        ContactActivities,
        ContactUpdate,
        OwnerDistribution,
        TimeZoneQuestion,
    )
    from activities.crm import (
        CrmActivities,
        FormDataQuestion,
        ListChange,
        SplitAnswer,
        SplitQuestion,
    )
    from activities.email import EmailActivities, EmailNotify, EmailSend
    from activities.enrollment import EnrollmentActivities
    from activities.events import EventActivities
    from activities.experiments import ExperimentActivities, ExperimentAnswer, ExperimentQuestion
    from activities.participants import ParticipantRecord
    from activities.records import (
        FollowUpCreation,
        RecordActivities,
        RequestCreation,
        SaleCreation,
    )
    from activities.scripts import ScriptStart
    from activities.sms import NO_MOBILE, UNREACHABLE, SmsActivities, SmsNotify, SmsSend
    from models import schedule
    from models.engine import Departure, ParticipantStatus, StepChange, WaitReason
    from models.events import (
        EVENT_SPLIT_BASES,
        FlowEvent,
        answers,
        choose_by_events,
        last_submission,
    )
    from models.experiments import HELD_OUT
    from models.flow import (
        AddToList,
        CreateFollowUp,
        CreateRequest,
        CreateSale,
        DistributeToOwner,
        Finish,
        Flow,
        Handoffs,
        NotifyEmail,
        NotifySms,
        RemoveFromList,
        RunScript,
        SendEmail,
        SendSms,
        Split,
        SplitBasis,
        Step,
        StepGroup,
        UpdateContact,
        WaitForAction,
        WaitTime,
    )
    from models.ledger import DeliveryOutcome, DeliveryStatus
    from models.participant import ParticipantState, Suggestion
    from models.sending import capping_for, channel_task_queue, step_channel
    from workflows.script import ScriptWorkflow


@dataclass(frozen=True)
class Continue:
    next: str
    outcome: str = ""
    # The step's activity also made the participant's last record, for the finish it goes to.
    departure: Departure | None = None


@dataclass(frozen=True)
class Leave:
    status: ParticipantStatus
    outcome: str
    reason: str | None = None
    handoffs: Handoffs | None = None

    @classmethod
    def dropping_out(cls, reason: str) -> Leave:
        """Dropped out for ``reason``, which is also the outcome: the checks before a step
        refused the contact, or the participant was taken out of the flow."""
        return cls(ParticipantStatus.dropped_out, reason, reason=reason)


Outcome = Continue | Leave


class Leaving(Exception):
    """Raised inside a step when a signal makes the participant leave mid-step."""

    def __init__(self, outcome: Leave) -> None:
        super().__init__(outcome.outcome)
        self.outcome = outcome


class Participant(Protocol):
    """The part of the running participant that step functions use."""

    @property
    def flow(self) -> Flow: ...

    @property
    def contact_id(self) -> int: ...

    @property
    def behaviour(self) -> int:
        """The behaviour pinned at the participant's start (``workflows.participant.BEHAVIOUR``);
        0 for runs started before it was pinned."""
        ...

    @property
    def state(self) -> ParticipantState: ...

    async def sleep_until(self, instant: datetime, summary: str) -> None: ...

    async def wait_for(
        self, done: Callable[[], bool], until: datetime | None, summary: str
    ) -> bool:
        """Wait until ``done()`` or ``until``; True if ``done()`` came first."""
        ...

    def delivery_key(self, step: Step) -> str:
        """Stable across retries and continue-as-new: participant, step and visit."""
        ...

    def entry_record(self) -> ParticipantRecord | None:
        """The step's entry record if it is the step's activity to make (taken once)."""
        ...

    def departure_record(self, next_step: str) -> ParticipantRecord | None:
        """The row the participant leaves with, when ``next_step`` is a finish the step's
        activity may record it at (it then reports a ``departure``)."""
        ...

    def sends_by_channel(self) -> bool:
        """Whether sends go to the channels' task queues under the frequency caps
        (SENDING_DISCIPLINE), decided once per run."""
        ...

    def patched(self, patch: str) -> bool:
        """``workflow.patched``, unless the participant's pinned behaviour has the patch."""
        ...


# CRM writes are short and idempotent: retry without limit, so a database outage delays
# participants (visibly: a retrying activity in the UI, or a local one's backoff timers) rather
# than dropping them.
CRM_ACTIVITY: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
    ),
}


# From behaviour 3, the CRM reads and writes of a step (list changes, contact updates, owners,
# follow-ups, requests, sales, splits on CRM data, experiments, the contact's time zone and the
# exit hand-offs) run in a local activity of the participant's own worker, as its sends do: no
# activity task through the server, a marker instead of three history events, and action steps
# in a row done in one workflow task. Each is idempotent as before. A write that keeps failing (a
# database outage) backs off on a durable timer after the first few seconds, so its retries show
# in the history.
CRM_IN_WORKER = 3
LOCAL_CRM: dict[str, Any] = {**CRM_ACTIVITY, "local_retry_threshold": timedelta(seconds=10)}

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


@overload
async def in_crm(
    participant: Participant,
    activity: Callable[[Any, ArgT], Awaitable[ResultT]],
    arg: ArgT,
    summary: str,
) -> ResultT: ...


@overload
async def in_crm(
    participant: Participant, activity: Callable[[Any, ArgT], ResultT], arg: ArgT, summary: str
) -> ResultT: ...


async def in_crm(
    participant: Participant, activity: Callable[[Any, Any], Any], arg: Any, summary: str
) -> Any:
    """Run a CRM activity: in the participant's worker (CRM_IN_WORKER), else on its task queue."""
    if participant.behaviour >= CRM_IN_WORKER:
        return await workflow.execute_local_activity_method(
            activity, arg, summary=summary, **LOCAL_CRM
        )
    return await workflow.execute_activity_method(activity, arg, summary=summary, **CRM_ACTIVITY)


# Sends retry until the provider answers: the delivery ledger makes each retry safe, and final
# answers (hard bounce, invalid number, opted out) come back as outcomes, not errors.
SEND_ACTIVITY: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    # A worker that dies mid-send is noticed within this, not the 2 minutes above
    # (the send activities heartbeat every third of it: activities/heartbeat.py).
    "heartbeat_timeout": timedelta(seconds=20),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=5),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=30),
    ),
}


# From behaviour 2, a send_email or send_sms step sends in a local activity of the participant's
# own worker: no activity task through the server (three history events and a task queue round
# trip fewer: about a third of the server's CPU per email). The delivery ledger keeps it exactly
# once as it does on the queue; the attempt that finds its channel under a rate limit sends
# nothing and answers None, and the step sends on the channel's task queue, which holds the
# limit. (No heartbeat: a worker that dies mid-send is noticed by its workflow task's timeout.)
SENDS_IN_WORKER = 2
LOCAL_SEND: dict[str, Any] = {
    "start_to_close_timeout": SEND_ACTIVITY["start_to_close_timeout"],
    "retry_policy": SEND_ACTIVITY["retry_policy"],
}


# Asked at a run's first message step by runs started before workflows.participant's
# DEPART_AND_SEND_BY_CHANNEL, which stands for it in later ones. Under it, sends
# go to the channel's own task queue, whose workers hold the provider's rate limit, and carry the
# flow's frequency-cap policy: a message a cap holds back comes back with the instant the cap
# allows it, and the participant waits for it on a timer and sends again. Sends recorded without
# the marker replay as they ran, on the participants' task queue and never capped; a participant
# that was waiting elsewhere when this code came asks it at its next message step, so the
# provider's ceiling and the caps cover its later sends too.
SENDING_DISCIPLINE = "sending-discipline"


def _send_options(
    step: SendEmail | SendSms | NotifyEmail | NotifySms, disciplined: bool
) -> dict[str, Any]:
    """SEND_ACTIVITY, on the step's channel's task queue under SENDING_DISCIPLINE."""
    if not disciplined:
        return SEND_ACTIVITY
    queue = channel_task_queue(workflow.info().task_queue, step_channel(step))
    return {**SEND_ACTIVITY, "task_queue": queue}


# --- The contact's clock and the flow's calendar ----------------------------------------------

# A flow with a recipient clock reads the contact's time zone in an activity, once, when a step
# first needs it (and keeps it in the state); participants of other flows never ask.
RECIPIENT_CLOCK = "recipient-clock"


async def clock(participant: Participant) -> str:
    """The time zone the sending window and "until" waits read: the contact's with a recipient
    clock (``models.time_zones``), else the flow's."""
    flow, state = participant.flow, participant.state
    if flow.recipient_clock is None:
        return flow.time_zone
    if state.recipient_zone is None:
        if not participant.patched(RECIPIENT_CLOCK):
            return flow.time_zone
        question = TimeZoneQuestion(
            contact_id=participant.contact_id,
            field=flow.recipient_clock.field,
            flow_time_zone=flow.time_zone,
        )
        state.recipient_zone = await in_crm(
            participant,
            ContactActivities.find_time_zone,
            question,
            f"Find the time zone of contact {participant.contact_id}",
        )
    return state.recipient_zone.time_zone


def _moment(participant: Participant, instant: datetime, zone: str) -> str:
    """An instant for a wait's summary, saying whose clock it reads when it is the contact's."""
    when = schedule.describe_instant(instant, zone)
    return when if participant.flow.recipient_clock is None else f"{when} (the contact's clock)"


def _closed_on_the_way(participant: Participant, until: datetime) -> str:
    """The closed days a working-day wait steps over, for its summary: " (closed: Fri 1 Jan,
    New Year's Day; Mon 4 Jan, closed by the flow)"; empty without a holiday calendar or when
    there were none."""
    flow = participant.flow
    if flow.holidays is None:
        return ""
    skipped = schedule.closed_days_between(workflow.now(), until, flow.time_zone, flow.closed_days)
    days = [f"{schedule.describe_day(day)}, {name}" for day, name in skipped]
    return f" (closed: {'; '.join(days)})" if days else ""


# --- Send message ------------------------------------------------------------------------------


async def _held_back(
    participant: Participant, until: datetime, reason: WaitReason, summary: str
) -> None:
    """Wait until ``until`` with the reason visible in the participant's row."""
    participant.state.waiting_for = reason
    try:
        await participant.sleep_until(until, summary)
    finally:
        participant.state.waiting_for = None


async def _capped(participant: Participant, until: datetime) -> None:
    when = schedule.describe_instant(until, participant.flow.time_zone)
    await _held_back(
        participant, until, WaitReason.frequency_cap, f"Frequency cap allows it {when}"
    )


async def within_sending_window(participant: Participant) -> None:
    """A message step reached outside the flow's sending window (in the recipient's clock, and
    shut on the calendar's closed days) waits until it opens."""
    flow = participant.flow
    window = flow.sending_window
    if window is None:
        return
    zone = await clock(participant)
    closed = schedule.NOTHING_CLOSED if window.open_on_holidays else flow.closed_days
    opening = schedule.next_window_opening(
        workflow.now(), window.weekday_numbers, window.start, window.end, zone, closed
    )
    if opening is None:
        return
    # Held by the calendar when the window would have opened sooner on an ordinary day.
    ordinary = schedule.next_window_opening(
        workflow.now(), window.weekday_numbers, window.start, window.end, zone
    )
    reason = WaitReason.sending_window if ordinary == opening else WaitReason.holiday
    summary = f"Sending window opens {_moment(participant, opening, zone)}"
    await _held_back(participant, opening, reason, summary)


def _left_at_entry(result: DeliveryOutcome | StepChange) -> Leave | None:
    """The checks the step's activity made at its entry say the participant leaves (nothing
    sent or changed): as it would have left on a record of its own before the step."""
    return None if result.leave_reason is None else Leave.dropping_out(result.leave_reason)


def _sent(outcome: DeliveryOutcome) -> str:
    return f"{outcome.channel} {outcome.status}" + (f": {outcome.detail}" if outcome.detail else "")


async def send_email(participant: Participant, step: SendEmail) -> Outcome:
    disciplined = participant.sends_by_channel()
    flow = participant.flow
    while True:
        await within_sending_window(participant)
        request = EmailSend(
            delivery_key=participant.delivery_key(step),
            flow_id=flow.id,
            flow_name=flow.name,
            contact_id=participant.contact_id,
            step=step,
            settings=flow.email,
            record=participant.entry_record(),
            departure=participant.departure_record(step.next),
            capping=capping_for(flow, step, workflow.now()) if disciplined else None,
        )
        outcome = await _email_handed_over(participant, step, request, disciplined)
        if outcome.retry_at is None:
            return _left_at_entry(outcome) or Continue(
                step.next, _sent(outcome), departure=outcome.departure
            )
        await _capped(participant, outcome.retry_at)


async def _email_handed_over(
    participant: Participant, step: SendEmail, request: EmailSend, disciplined: bool
) -> DeliveryOutcome:
    """Sent in the participant's worker (SENDS_IN_WORKER), else on the channel's task queue."""
    # The address is only known inside the activity: name the contact by id here.
    summary = f"Send email {step.subject!r} to contact {participant.contact_id}"
    if participant.behaviour >= SENDS_IN_WORKER:
        here = await workflow.execute_local_activity_method(
            EmailActivities.send_email_locally, request, summary=summary, **LOCAL_SEND
        )
        if here is not None:
            return here
    return await workflow.execute_activity_method(
        EmailActivities.send_email, request, summary=summary, **_send_options(step, disciplined)
    )


async def send_sms(participant: Participant, step: SendSms) -> Outcome:
    disciplined = participant.sends_by_channel()
    while True:
        await within_sending_window(participant)
        request = SmsSend(
            delivery_key=participant.delivery_key(step),
            flow_id=participant.flow.id,
            contact_id=participant.contact_id,
            step=step,
            default_sender=participant.flow.sms_sender,
            record=participant.entry_record(),
            # A contact without a mobile number may leave through the step's exit instead.
            departure=None if step.exit_if_no_mobile else participant.departure_record(step.next),
            capping=capping_for(participant.flow, step, workflow.now()) if disciplined else None,
        )
        outcome = await _sms_handed_over(participant, step, request, disciplined)
        if outcome.retry_at is None:
            break
        await _capped(participant, outcome.retry_at)
    left = _left_at_entry(outcome)
    if left is not None:
        return left
    no_mobile = outcome.status is DeliveryStatus.skipped and outcome.detail in UNREACHABLE
    if no_mobile and step.exit_if_no_mobile:
        return Leave(
            ParticipantStatus.dropped_out, _sent(outcome), reason=NO_MOBILE, handoffs=step.exit
        )
    return Continue(step.next, _sent(outcome), departure=outcome.departure)


async def _sms_handed_over(
    participant: Participant, step: SendSms, request: SmsSend, disciplined: bool
) -> DeliveryOutcome:
    """Sent in the participant's worker (SENDS_IN_WORKER), else on the channel's task queue."""
    summary = f"Send SMS {step.label!r} to contact {participant.contact_id}"
    if participant.behaviour >= SENDS_IN_WORKER:
        here: DeliveryOutcome | None = await workflow.execute_local_activity_method(
            SmsActivities.send_sms_locally, request, summary=summary, **LOCAL_SEND
        )
        if here is not None:
            return here
    queued: DeliveryOutcome = await workflow.execute_activity_method(
        SmsActivities.send_sms, request, summary=summary, **_send_options(step, disciplined)
    )
    return queued


# --- Flow control ------------------------------------------------------------------------------


async def wait_time(participant: Participant, step: WaitTime) -> Outcome:
    """Intervals count in the flow's time zone and calendar; "until" reads the recipient's
    clock."""
    flow = participant.flow
    if step.mode == "after":
        assert step.amount is not None and step.unit is not None  # checked by the model
        zone = flow.time_zone
        until = schedule.add_interval(
            workflow.now(), step.amount, step.unit, zone, flow.closed_days
        )
        summary = f"Wait until {schedule.describe_instant(until, zone)}"
        if step.unit == "working_days":
            summary += _closed_on_the_way(participant, until)
    else:
        assert step.until is not None
        zone = await clock(participant)
        until = schedule.local_to_instant(step.until, zone)
        summary = f"Wait until {_moment(participant, until, zone)}"
    await participant.sleep_until(until, summary)
    return Continue(step.next, f"waited until {until.isoformat()}")


async def wait_for_action(participant: Participant, step: WaitForAction) -> Outcome:
    """The first awaited action moves the participant on. An action counts when it happened in
    this participation after the participant last left this step (so a form submitted, or a link
    clicked, before the participant got here counts too: the marketer waits for the action, not
    for the moment)."""
    state, flow = participant.state, participant.flow
    since = state.left_waits.get(step.id, state.enrolled_at)

    def answer() -> FlowEvent | None:
        return next(
            (
                event
                for event in state.events
                if event.received_at is not None
                and event.received_at >= since
                and any(answers(action, event, flow.id) for action in step.actions)
            ),
            None,
        )

    until = None
    if step.max_wait is not None:
        until = schedule.add_interval(
            workflow.now(),
            step.max_wait.amount,
            step.max_wait.unit,
            flow.time_zone,
            flow.closed_days,
        )
    what = ", ".join(action.kind.replace("_", " ") for action in step.actions)
    limit = f" until {schedule.describe_instant(until, flow.time_zone)}" if until else ""
    await participant.wait_for(lambda: answer() is not None, until, f"Wait for {what}{limit}")
    state.left_waits[step.id] = workflow.now()
    event = answer()
    if event is not None:
        return Continue(step.next, f"{event.kind.replace('_', ' ')} ({event.event_id})")
    if step.exit_on_timeout:
        return Leave(ParticipantStatus.dropped_out, "no response", "no response", step.exit)
    return Continue(step.next, "no response within the maximum time")


# A form-data split whose submission reached the participant without its fields (events are
# signalled without their form data, which stays in the CRM's events) reads the stored
# submission in an activity. Submissions signalled with their fields, as before, are decided in
# the workflow as they were.
FORM_DATA_FROM_STORE = "form-data-from-store"


async def split(participant: Participant, step: Split) -> Outcome:
    if step.basis is SplitBasis.experiment:
        return await experiment(participant, step)
    if step.basis is SplitBasis.form_data:
        branch = await _choose_by_form_data(participant, step)
    elif step.basis in EVENT_SPLIT_BASES:
        # Decided from the events this participant has seen: no activity, deterministic.
        branch = choose_by_events(step, participant.state.events, participant.flow.id)
    else:
        question = SplitQuestion(
            contact_id=participant.contact_id, split=step, record=participant.entry_record()
        )
        answer: SplitAnswer | None = await in_crm(
            participant,
            CrmActivities.choose_split_branch,
            question,
            f"Split {step.label!r} on {step.basis}",
        )
        answer = answer or SplitAnswer()  # a null answer (splits asked before): everyone else
        if answer.leave_reason is not None:
            return Leave.dropping_out(answer.leave_reason)
        branch = answer.branch
    if branch is not None:
        chosen = step.branches[branch]
        return Continue(chosen.next, f"branch {chosen.name!r}")
    if step.everyone_else.next is not None:
        return Continue(step.everyone_else.next, "branch 'everyone else'")
    return Leave(
        ParticipantStatus.finished, "left at 'everyone else'", handoffs=step.everyone_else.exit
    )


async def experiment(participant: Participant, step: Split) -> Outcome:
    """Down the path the contact's share (or the experiment's winner) gives it, or out of the
    flow as held out, with the everyone-else hand-offs. The activity records the path."""
    flow = participant.flow
    assert step.experiment is not None  # the model requires it for basis experiment
    question = ExperimentQuestion(
        key=participant.delivery_key(step),
        flow_id=flow.id,
        time_zone=flow.time_zone,
        participant_id=participant.state.participant_id,
        contact_id=participant.contact_id,
        split=step,
        success=flow.success,
        at=workflow.now(),
        record=participant.entry_record(),
    )
    answer: ExperimentAnswer = await in_crm(
        participant,
        ExperimentActivities.choose_experiment_path,
        question,
        f"Experiment {step.experiment.id!r}: choose a path",
    )
    if answer.leave_reason is not None:
        return Leave.dropping_out(answer.leave_reason)
    if answer.path is None:
        return Leave(
            ParticipantStatus.dropped_out,
            answer.outcome,
            reason=HELD_OUT,
            handoffs=step.everyone_else.exit,
        )
    return Continue(step.branches[answer.path].next, answer.outcome)


async def _choose_by_form_data(participant: Participant, step: Split) -> int | None:
    events = participant.state.events
    submission = last_submission(step, events)
    if submission is None:
        return None  # everyone else also catches those who never submitted
    if submission.data or not participant.patched(FORM_DATA_FROM_STORE):
        return choose_by_events(step, events, participant.flow.id)
    branch: int | None = await in_crm(
        participant,
        CrmActivities.choose_form_data_branch,
        FormDataQuestion(event_id=submission.event_id, split=step),
        f"Split {step.label!r} on form {step.form_id} data",
    )
    return branch


# --- Update participant ------------------------------------------------------------------------


async def add_to_list(participant: Participant, step: AddToList) -> Outcome:
    change = ListChange(
        contact_id=participant.contact_id,
        selection_id=step.selection_id,
        project_id=step.project_id,
        record=participant.entry_record(),
        departure=participant.departure_record(step.next),
    )
    done = await in_crm(participant, CrmActivities.add_to_list, change, f"Add to {_lists(change)}")
    return _left_at_entry(done) or Continue(step.next, done.outcome, departure=done.departure)


async def remove_from_list(participant: Participant, step: RemoveFromList) -> Outcome:
    change = ListChange(
        contact_id=participant.contact_id,
        selection_id=step.selection_id,
        project_id=step.project_id,
        record=participant.entry_record(),
        departure=participant.departure_record(step.next),
    )
    done: StepChange = await in_crm(
        participant,
        CrmActivities.remove_from_list,
        change,
        f"Remove from {_lists(change)}",
    )
    return _left_at_entry(done) or Continue(step.next, done.outcome, departure=done.departure)


def _lists(change: ListChange) -> str:
    parts = [f"selection {change.selection_id}"] if change.selection_id is not None else []
    parts += [f"project {change.project_id}"] if change.project_id is not None else []
    return " and ".join(parts)


# Announcing is an ingest (control.ingest): signals and perhaps enrollments, each quick;
# retried like a CRM write, since the event is recorded and ingesting it again is harmless.
ANNOUNCE_ACTIVITY: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=1),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
    ),
}


async def announced(change: StepChange, next_step: str) -> Continue:
    """Let the contact's participants (this one too: its success criteria may be met) and the
    flows whose triggers match know what the step changed, then go on. Recording happened with
    the change."""
    if change.event is not None:
        await workflow.execute_activity_method(
            EventActivities.emit_event,
            change.event,
            summary=f"Announce {change.event.kind.value} for contact {change.event.contact_id}",
            **ANNOUNCE_ACTIVITY,
        )
    return Continue(next_step, change.outcome)


async def update_contact(participant: Participant, step: UpdateContact) -> Outcome:
    update = ContactUpdate(
        event_key=participant.delivery_key(step),
        flow_id=participant.flow.id,
        step_id=step.id,
        contact_id=participant.contact_id,
        rows=step.rows,
        record=participant.entry_record(),
    )
    ticked = sum(row.enabled for row in step.rows)
    change: StepChange = await in_crm(
        participant,
        ContactActivities.update_contact,
        update,
        f"Update contact {participant.contact_id}: {ticked} rows",
    )
    return _left_at_entry(change) or await announced(change, step.next)


async def distribute_to_owner(participant: Participant, step: DistributeToOwner) -> Outcome:
    distribution = OwnerDistribution(
        event_key=participant.delivery_key(step),
        flow_id=participant.flow.id,
        flow_name=participant.flow.name,
        contact_id=participant.contact_id,
        step=step,
        record=participant.entry_record(),
    )
    pool = (
        f"user group {step.user_group_id}"
        if step.user_group_id is not None
        else f"associates {', '.join(map(str, step.associate_ids))}"
    )
    change: StepChange = await in_crm(
        participant,
        ContactActivities.distribute_to_owner,
        distribution,
        f"Give contact {participant.contact_id} an owner from {pool}",
    )
    return _left_at_entry(change) or await announced(change, step.next)


# --- Create activity ---------------------------------------------------------------------------


def _creation(participant: Participant, step: Step) -> dict[str, Any]:
    """What every create step's activity gets: ``at`` is now, so each retry counts its dates from
    the same moment, and the delivery key makes a retry find what the first attempt created."""
    flow = participant.flow
    return {
        "event_key": participant.delivery_key(step),
        "flow_id": flow.id,
        "flow_name": flow.name,
        "time_zone": flow.time_zone,
        "holidays": flow.holidays,
        "contact_id": participant.contact_id,
        "at": workflow.now(),
        "record": participant.entry_record(),
    }


async def create_follow_up(participant: Participant, step: CreateFollowUp) -> Outcome:
    what = "meeting" if step.kind == "meeting" else "to-do"
    change: StepChange = await in_crm(
        participant,
        RecordActivities.create_follow_up,
        FollowUpCreation(step=step, **_creation(participant, step)),
        f"Create {what} {step.title!r} for contact {participant.contact_id}",
    )
    return _left_at_entry(change) or await announced(change, step.next)


async def create_request(participant: Participant, step: CreateRequest) -> Outcome:
    change: StepChange = await in_crm(
        participant,
        RecordActivities.create_request,
        RequestCreation(step=step, **_creation(participant, step)),
        f"Create request {step.title!r} for contact {participant.contact_id}",
    )
    return _left_at_entry(change) or await announced(change, step.next)


async def create_sale(participant: Participant, step: CreateSale) -> Outcome:
    change: StepChange = await in_crm(
        participant,
        RecordActivities.create_sale,
        SaleCreation(step=step, **_creation(participant, step)),
        f"Create sale {step.title!r} for contact {participant.contact_id}",
    )
    return _left_at_entry(change) or await announced(change, step.next)


# --- Internal action ---------------------------------------------------------------------------


async def notify_email(participant: Participant, step: NotifyEmail) -> Outcome:
    email = participant.flow.email
    assert email is not None  # a flow with notify_email steps is not ready to run without it
    request = EmailNotify(
        delivery_key=participant.delivery_key(step),
        flow_id=participant.flow.id,
        contact_id=participant.contact_id,
        step=step,
        sender=str(email.sender.address),
        record=participant.entry_record(),
    )
    outcomes: list[DeliveryOutcome] = await workflow.execute_activity_method(
        EmailActivities.notify_email,
        request,
        summary=f"Notify by email {step.subject!r}",
        **_send_options(step, participant.sends_by_channel()),
    )
    return _notified(step, outcomes)


async def notify_sms(participant: Participant, step: NotifySms) -> Outcome:
    request = SmsNotify(
        delivery_key=participant.delivery_key(step),
        flow_id=participant.flow.id,
        contact_id=participant.contact_id,
        step=step,
        default_sender=participant.flow.sms_sender,
        record=participant.entry_record(),
    )
    outcomes: list[DeliveryOutcome] = await workflow.execute_activity_method(
        SmsActivities.notify_sms,
        request,
        summary=f"Notify by SMS {step.label!r}",
        **_send_options(step, participant.sends_by_channel()),
    )
    return _notified(step, outcomes)


def _notified(step: NotifyEmail | NotifySms, outcomes: list[DeliveryOutcome]) -> Outcome:
    """Where a notify step goes: on, or out when the checks at its entry said so (then its one
    outcome says why)."""
    for outcome in outcomes:
        if (left := _left_at_entry(outcome)) is not None:
            return left
    return Continue(step.next, "; ".join(_sent(o) for o in outcomes))


async def run_script(participant: Participant, step: RunScript) -> Outcome:
    """Start the script as its own workflow and move on once it has started (spec §3).

    ABANDON: the script runs to completion even after the participant has finished (the default
    policy would terminate it). Its retries and timeout live in the ``Script`` workflow; its
    failure ends there and never reaches this participant. The id follows the delivery key, so
    each visit of the step starts the script once.
    """
    flow, key = participant.flow, participant.delivery_key(step)
    start = ScriptStart(
        script=step.script,
        run_key=key,
        flow_id=flow.id,
        flow_name=flow.name,
        step_id=step.id,
        step_name=step.name,
        contact_id=participant.contact_id,
    )
    script_id = f"script-{key}"
    try:
        handle = await workflow.start_child_workflow(
            ScriptWorkflow.run,
            start,
            id=script_id,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            static_summary=f"Script {step.script!r} for contact {participant.contact_id}, "
            f"flow {flow.name!r}",
        )
    except WorkflowAlreadyStartedError:
        return Continue(step.next, f"script {step.script!r} already started ({script_id})")
    # Nobody awaits the script's result; take it when it comes so a failure is not reported as
    # an unretrieved exception. The script workflow's own history holds the outcome.
    handle.add_done_callback(_result_not_awaited)
    return Continue(step.next, f"script {step.script!r} started ({script_id})")


def _result_not_awaited(handle: Any) -> None:
    if not handle.cancelled():
        handle.exception()


# --- finish ------------------------------------------------------------------------------------


async def finish(participant: Participant, step: Finish) -> Outcome:
    met = participant.state.success
    suggest = step.suggest_flow_on_success if met else step.suggest_flow_otherwise
    handoffs = Handoffs(suggest_flow=suggest, add_to_selection=step.add_to_selection)
    # The status becomes "Finished with success" when a criterion was met (see the workflow).
    return Leave(ParticipantStatus.finished, "finished", handoffs=handoffs)


async def hand_off(participant: Participant, handoffs: Handoffs) -> None:
    """The exit hand-offs of spec §7: suggest the contact for another flow (whose own rules
    decide), and/or add it to a static selection."""
    if handoffs.suggest_flow is not None:
        suggestion = Suggestion(flow_id=handoffs.suggest_flow, contact_id=participant.contact_id)
        await in_crm(
            participant,
            EnrollmentActivities.suggest_contact,
            suggestion,
            f"Suggest for flow {handoffs.suggest_flow!r}",
        )
    if handoffs.add_to_selection is not None:
        change = ListChange(
            contact_id=participant.contact_id, selection_id=handoffs.add_to_selection
        )
        await in_crm(
            participant,
            CrmActivities.add_to_list,
            change,
            f"Hand off to {_lists(change)}",
        )


# CRM steps, splits on CRM data and notify steps hand Participant.entry_record() to their one
# activity; the participant leaves their entry unrecorded (under record-in-step-activity).
ENTRY_RECORDING_GROUPS = (StepGroup.update_participant, StepGroup.create_activity)


def takes_its_entry_record(step: Step) -> bool:
    """Whether the step's function hands the entry record to its activity (message steps do too,
    under their own patch)."""
    if isinstance(step, Split):
        return step.basis not in EVENT_SPLIT_BASES
    return isinstance(step, NotifyEmail | NotifySms) or step.group in ENTRY_RECORDING_GROUPS


async def run_step(participant: Participant, step: Step) -> Outcome:
    """Do what the step's kind does. Every kind of the ``Step`` union has its case here:
    ``assert_never`` makes mypy reject a kind without one."""
    match step:
        case SendEmail():
            return await send_email(participant, step)
        case SendSms():
            return await send_sms(participant, step)
        case WaitTime():
            return await wait_time(participant, step)
        case WaitForAction():
            return await wait_for_action(participant, step)
        case Split():
            return await split(participant, step)
        case UpdateContact():
            return await update_contact(participant, step)
        case AddToList():
            return await add_to_list(participant, step)
        case RemoveFromList():
            return await remove_from_list(participant, step)
        case DistributeToOwner():
            return await distribute_to_owner(participant, step)
        case CreateFollowUp():
            return await create_follow_up(participant, step)
        case CreateRequest():
            return await create_request(participant, step)
        case CreateSale():
            return await create_sale(participant, step)
        case RunScript():
            return await run_script(participant, step)
        case NotifyEmail():
            return await notify_email(participant, step)
        case NotifySms():
            return await notify_sms(participant, step)
        case Finish():
            return await finish(participant, step)
        case _:
            assert_never(step)
