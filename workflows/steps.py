"""What each step kind does inside a participant workflow: one function per kind.

A step function gets the running participant and its step, runs activities or timers, and returns
where the participant goes next: ``Continue`` to a step id, or ``Leave`` the flow with a status.
Activities are called by name so this module never imports database code into the sandbox; every
timeout and retry policy sits next to the call that uses it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.crm import ListChange, SplitQuestion
    from activities.email import EmailNotify, EmailSend
    from activities.sms import INVALID_MOBILE, NO_MOBILE, SmsNotify, SmsSend
    from models import schedule
    from models.engine import ParticipantStatus
    from models.flow import (
        AddToList,
        Finish,
        Flow,
        Handoffs,
        NotifyEmail,
        NotifySms,
        RemoveFromList,
        SendEmail,
        SendSms,
        Split,
        Step,
        WaitTime,
    )
    from models.ledger import DeliveryOutcome, DeliveryStatus


@dataclass(frozen=True)
class Continue:
    next: str
    outcome: str = ""


@dataclass(frozen=True)
class Leave:
    status: ParticipantStatus
    outcome: str
    reason: str | None = None
    handoffs: Handoffs | None = None


Outcome = Continue | Leave


class Participant(Protocol):
    """The part of the running participant that step functions use."""

    @property
    def flow(self) -> Flow: ...

    @property
    def contact_id(self) -> int: ...

    async def sleep_until(self, instant: datetime, summary: str) -> None: ...

    def delivery_key(self, step: Step) -> str:
        """Stable across retries and continue-as-new: participant, step and visit."""
        ...


# CRM writes are short and idempotent: retry without limit, so a database outage delays
# participants (visibly, as a retrying activity in the UI) rather than dropping them.
CRM_ACTIVITY: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
    ),
}


# Sends retry until the provider answers: the delivery ledger makes each retry safe, and final
# answers (hard bounce, invalid number, opted out) come back as outcomes, not errors.
SEND_ACTIVITY: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=5),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=30),
    ),
}


# --- Send message ------------------------------------------------------------------------------


async def within_sending_window(participant: Participant) -> None:
    """A message step reached outside the flow's sending window waits until it opens."""
    window = participant.flow.sending_window
    if window is None:
        return
    zone = participant.flow.time_zone
    opening = schedule.next_window_opening(
        workflow.now(), window.weekday_numbers, window.start, window.end, zone
    )
    if opening is not None:
        when = schedule.describe_instant(opening, zone)
        await participant.sleep_until(opening, f"Sending window opens {when}")


def _sent(outcome: DeliveryOutcome) -> str:
    return f"{outcome.channel} {outcome.status}" + (f": {outcome.detail}" if outcome.detail else "")


async def send_email(participant: Participant, step: SendEmail) -> Outcome:
    await within_sending_window(participant)
    flow = participant.flow
    request = EmailSend(
        delivery_key=participant.delivery_key(step),
        flow_id=flow.id,
        flow_name=flow.name,
        contact_id=participant.contact_id,
        step=step,
        settings=flow.email,
    )
    outcome: DeliveryOutcome = await workflow.execute_activity(
        "send_email",
        request,
        result_type=DeliveryOutcome,
        summary=f"Send email {step.subject!r}",
        **SEND_ACTIVITY,
    )
    return Continue(step.next, _sent(outcome))


async def send_sms(participant: Participant, step: SendSms) -> Outcome:
    await within_sending_window(participant)
    request = SmsSend(
        delivery_key=participant.delivery_key(step),
        flow_id=participant.flow.id,
        contact_id=participant.contact_id,
        step=step,
        default_sender=participant.flow.sms_sender,
    )
    outcome: DeliveryOutcome = await workflow.execute_activity(
        "send_sms",
        request,
        result_type=DeliveryOutcome,
        summary=f"Send SMS {step.label!r}",
        **SEND_ACTIVITY,
    )
    no_mobile = outcome.status is DeliveryStatus.skipped and outcome.detail in (
        NO_MOBILE,
        INVALID_MOBILE,
    )
    if no_mobile and step.exit_if_no_mobile:
        return Leave(
            ParticipantStatus.dropped_out, _sent(outcome), reason=NO_MOBILE, handoffs=step.exit
        )
    return Continue(step.next, _sent(outcome))


# --- Flow control ------------------------------------------------------------------------------


async def wait_time(participant: Participant, step: WaitTime) -> Outcome:
    zone = participant.flow.time_zone
    if step.mode == "after":
        assert step.amount is not None and step.unit is not None  # checked by the model
        until = schedule.add_interval(workflow.now(), step.amount, step.unit, zone)
    else:
        assert step.until is not None
        until = schedule.local_to_instant(step.until, zone)
    await participant.sleep_until(until, f"Wait until {schedule.describe_instant(until, zone)}")
    return Continue(step.next, f"waited until {until.isoformat()}")


async def split(participant: Participant, step: Split) -> Outcome:
    branch: int | None = await workflow.execute_activity(
        "choose_split_branch",
        SplitQuestion(contact_id=participant.contact_id, split=step),
        result_type=int | None,  # type: ignore[arg-type]
        summary=f"Split {step.label!r} on {step.basis}",
        **CRM_ACTIVITY,
    )
    if branch is not None:
        chosen = step.branches[branch]
        return Continue(chosen.next, f"branch {chosen.name!r}")
    if step.everyone_else.next is not None:
        return Continue(step.everyone_else.next, "branch 'everyone else'")
    return Leave(
        ParticipantStatus.finished, "left at 'everyone else'", handoffs=step.everyone_else.exit
    )


# --- Update participant ------------------------------------------------------------------------


async def add_to_list(participant: Participant, step: AddToList) -> Outcome:
    change = ListChange(
        contact_id=participant.contact_id,
        selection_id=step.selection_id,
        project_id=step.project_id,
    )
    outcome: str = await workflow.execute_activity(
        "add_to_list", change, result_type=str, summary=f"Add to {_lists(change)}", **CRM_ACTIVITY
    )
    return Continue(step.next, outcome)


async def remove_from_list(participant: Participant, step: RemoveFromList) -> Outcome:
    change = ListChange(
        contact_id=participant.contact_id,
        selection_id=step.selection_id,
        project_id=step.project_id,
    )
    outcome: str = await workflow.execute_activity(
        "remove_from_list",
        change,
        result_type=str,
        summary=f"Remove from {_lists(change)}",
        **CRM_ACTIVITY,
    )
    return Continue(step.next, outcome)


def _lists(change: ListChange) -> str:
    parts = [f"selection {change.selection_id}"] if change.selection_id is not None else []
    parts += [f"project {change.project_id}"] if change.project_id is not None else []
    return " and ".join(parts)


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
    )
    outcomes: list[DeliveryOutcome] = await workflow.execute_activity(
        "notify_email",
        request,
        result_type=list[DeliveryOutcome],
        summary=f"Notify by email {step.subject!r}",
        **SEND_ACTIVITY,
    )
    return Continue(step.next, "; ".join(_sent(o) for o in outcomes))


async def notify_sms(participant: Participant, step: NotifySms) -> Outcome:
    request = SmsNotify(
        delivery_key=participant.delivery_key(step),
        flow_id=participant.flow.id,
        contact_id=participant.contact_id,
        step=step,
        default_sender=participant.flow.sms_sender,
    )
    outcomes: list[DeliveryOutcome] = await workflow.execute_activity(
        "notify_sms",
        request,
        result_type=list[DeliveryOutcome],
        summary=f"Notify by SMS {step.label!r}",
        **SEND_ACTIVITY,
    )
    return Continue(step.next, "; ".join(_sent(o) for o in outcomes))


# --- finish ------------------------------------------------------------------------------------


async def finish(participant: Participant, step: Finish) -> Outcome:
    return Leave(
        ParticipantStatus.finished,
        "finished",
        handoffs=Handoffs(add_to_selection=step.add_to_selection),
    )


async def hand_off(participant: Participant, handoffs: Handoffs) -> None:
    """The exit hand-offs of spec §7 that this engine performs: adding to a static selection."""
    if handoffs.add_to_selection is not None:
        change = ListChange(
            contact_id=participant.contact_id, selection_id=handoffs.add_to_selection
        )
        await workflow.execute_activity(
            "add_to_list",
            change,
            result_type=str,
            summary=f"Hand off to {_lists(change)}",
            **CRM_ACTIVITY,
        )


StepFunction = Callable[[Participant, Any], Awaitable[Outcome]]

STEP_FUNCTIONS: dict[str, StepFunction] = {
    "send_email": send_email,
    "send_sms": send_sms,
    "notify_email": notify_email,
    "notify_sms": notify_sms,
    "wait_time": wait_time,
    "split": split,
    "add_to_list": add_to_list,
    "remove_from_list": remove_from_list,
    "finish": finish,
}


async def run_step(participant: Participant, step: Step) -> Outcome:
    return await STEP_FUNCTIONS[step.type](participant, step)
