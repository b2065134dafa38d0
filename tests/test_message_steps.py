"""Message steps inside the participant workflow, against a real SMTP server and a
Twilio-compatible API: the sending window, no duplicate sends, the no-mobile exit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from activities.email import EmailActivities
from activities.participants import ParticipantRecord, enter_message_step
from activities.sms import SmsActivities
from models.crm import Contact, SelectionMember
from models.database import session
from models.demo import DEMO_SELECTION_ID, VIP_SELECTION_ID
from models.engine import Delivery, Participant, ParticipantStatus
from models.participant import ParticipantState
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox, twilio_settings
from tests.test_participant import STOCKHOLM, entered, flow_of, next_weekday, start
from worker import activities_for, build_worker

EMAIL_SETTINGS = {"subscription_type": "newsletter", "from": {"address": "news@example.com"}}


def contact_named(engine: Engine, first_name: str) -> int:
    with session(engine) as db:
        contact = db.exec(select(Contact).where(Contact.first_name == first_name)).one()
    assert contact.id is not None
    return contact.id


def entry_record(
    participant_id: str, contact_id: int, step_id: str, exclusion_selections: list[int]
) -> ParticipantRecord:
    """A step's entry record as the participant hands it to the step's activity."""
    state = ParticipantState(
        participant_id=participant_id,
        flow_id="f",
        flow_version=1,
        contact_id=contact_id,
        enrolled_at=datetime(2026, 3, 6, 9, 0, tzinfo=UTC),
        current_step=step_id,
    )
    return ParticipantRecord(state=state, exclusion_selections=exclusion_selections)


def replacing(
    activities: list[Callable[..., Any]], *replacements: Callable[..., Any]
) -> list[Callable[..., Any]]:
    names = {r.__name__ for r in replacements}
    return [a for a in activities if a.__name__ not in names] + list(replacements)


def fail_first_time() -> Callable[[str], None]:
    """An activity failure right after the provider accepted the message."""
    calls: list[str] = []

    def hook(key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("worker lost after the hand-over")

    return hook


async def test_a_message_step_reached_at_night_waits_for_the_window(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    twilio_api: TwilioApiServer,
    smtp_inbox: Inbox,
) -> None:
    tuesday_night = await next_weekday(time_skipping_env, 1, 22, 0)
    flow = flow_of(
        [
            {
                "id": "sms",
                "type": "send_sms",
                "text": "Hej [[customer.firstname]]!",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        sms_sender="+46700000000",
        scheduled_start=tuesday_night.isoformat(),
        sending_window={"weekdays": "workdays", "start": "08:00", "end": "17:00"},
    )
    activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        handle = await start(time_skipping_env, task_queue, flow, contact_named(engine, "Karin"))
        state = await handle.result()
    assert entered(state, "sms") == tuesday_night
    # The window opens at 08:00 on Wednesday; the send itself takes a moment of (skipped) time.
    opening = tuesday_night.replace(hour=8) + timedelta(days=1)
    assert opening <= entered(state, "done") < opening + timedelta(minutes=1)
    assert [m["body"] for m in twilio_api.messages] == ["Hej Karin!"]
    assert state.trail[0].outcome.startswith("sms sent")


async def test_an_email_is_delivered_once_when_the_activity_fails_after_the_server_accepted(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    flow = flow_of(
        [
            {
                "id": "mail",
                "type": "send_email",
                "subject": "Welcome [[customer.firstname]]",
                "text": "Hi",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        email=EMAIL_SETTINGS,
    )
    flaky = EmailActivities(engine, smtp_inbox.settings, after_handover=fail_first_time())
    activities = replacing(
        activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api)), flaky.send_email
    )
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        handle = await start(time_skipping_env, task_queue, flow, contact_named(engine, "Karin"))
        state = await handle.result()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert attempts == [2]  # the first attempt failed after the hand-over; the retry found it sent
    assert [m.subject for m in smtp_inbox.messages()] == ["Welcome Karin"]
    assert state.trail[0].outcome.startswith("email sent")
    with session(engine) as db:
        rows = db.exec(select(Delivery)).all()
    assert [(r.channel, r.status) for r in rows] == [("email", "sent")]


async def test_an_sms_is_delivered_once_when_the_activity_fails_after_twilio_accepted(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    flow = flow_of(
        [
            {"id": "sms", "type": "send_sms", "text": "Hello", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
        sms_sender="Flows",
    )
    flaky = SmsActivities(engine, twilio_settings(twilio_api), after_handover=fail_first_time())
    activities = replacing(
        activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api)), flaky.send_sms
    )
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        state = await (
            await start(time_skipping_env, task_queue, flow, contact_named(engine, "Maja"))
        ).result()
    assert state.status is ParticipantStatus.finished
    assert [m["to"] for m in twilio_api.messages] == ["+46709876543"]
    assert twilio_api.attempts == 1


async def test_no_mobile_number_exits_with_the_hand_offs_when_the_step_says_so(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    flow = flow_of(
        [
            {
                "id": "sms",
                "type": "send_sms",
                "text": "Hello",
                "exit_if_no_mobile": True,
                "exit": {"add_to_selection": VIP_SELECTION_ID},
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        sms_sender="Flows",
    )
    charlotte = contact_named(engine, "Charlotte")
    activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        state = await (await start(time_skipping_env, task_queue, flow, charlotte)).result()
    assert state.status is ParticipantStatus.dropped_out
    assert state.drop_out_reason == "no mobile number"
    assert twilio_api.messages == []
    with session(engine) as db:
        assert db.exec(
            select(SelectionMember).where(
                SelectionMember.contact_id == charlotte,
                SelectionMember.selection_id == VIP_SELECTION_ID,
            )
        ).first()


async def test_without_the_exit_option_a_contact_without_mobile_skips_the_step(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    flow = flow_of(
        [
            {"id": "sms", "type": "send_sms", "text": "Hello", "next": "mail"},
            {
                "id": "mail",
                "type": "send_email",
                "subject": "Still here",
                "text": "Hi",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        sms_sender="Flows",
        email=EMAIL_SETTINGS,
    )
    activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        state = await (
            await start(time_skipping_env, task_queue, flow, contact_named(engine, "Charlotte"))
        ).result()
    assert state.status is ParticipantStatus.finished
    assert state.trail[0].outcome == "sms skipped: no mobile number"
    assert [m.subject for m in smtp_inbox.messages()] == ["Still here"]
    assert STOCKHOLM  # the shared helpers come from test_participant


@pytest.mark.parametrize(
    "step",
    [
        {"id": "send", "type": "send_email", "subject": "Hi", "text": "Hi", "next": "done"},
        {"id": "send", "type": "send_sms", "text": "Hi", "next": "done"},
        {
            "id": "send",
            "type": "notify_email",
            "to": {"our_contact": True, "addresses": ["sales@flows.example.com"]},
            "subject": "Hi",
            "text": "Hi",
            "next": "done",
        },
        {
            "id": "send",
            "type": "notify_sms",
            "to": {"our_contact": True, "addresses": ["+46701110002"]},
            "text": "Hi",
            "next": "done",
        },
    ],
    ids=["email", "sms", "notify_email", "notify_sms"],
)
async def test_a_message_steps_send_records_its_entry_and_makes_the_checks(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    twilio_api: TwilioApiServer,
    smtp_inbox: Inbox,
    step: dict[str, Any],
) -> None:
    """No record of its own before a message step (or a notify step): the send upserts the row
    and makes the checks in its transaction. Excluded, the contact leaves as it would have on
    that record: nothing sent or claimed, dropped out with the reason, the row saying so."""
    flow = flow_of(
        [step, {"id": "done", "type": "finish"}],
        email=EMAIL_SETTINGS,
        sms_sender="Flows",
        exclusion_selections=[DEMO_SELECTION_ID],
    )
    activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        handle = await start(time_skipping_env, task_queue, flow, contact_named(engine, "Karin"))
        state = await handle.result()
        markers = [
            e.marker_recorded_event_attributes.marker_name
            async for e in handle.fetch_history_events()
            if e.HasField("marker_recorded_event_attributes")
        ]
    assert (state.status, state.drop_out_reason) == (
        ParticipantStatus.dropped_out,
        "on the exclusion list",
    )
    assert [(v.step, v.outcome) for v in state.trail] == [("send", "on the exclusion list")]
    assert smtp_inbox.messages() == [] and twilio_api.messages == []
    # One patch marker (asked at the start), one record (as the participant leaves): none
    # before the send.
    assert markers == ["core_patch", "core_local_activity"]
    with session(engine) as db:
        assert db.exec(select(Delivery)).all() == []
        row = db.get(Participant, state.participant_id)
    assert row is not None
    assert (row.status, row.drop_out_reason, row.current_step) == (
        ParticipantStatus.dropped_out.value,
        "on the exclusion list",
        "send",
    )


def test_a_notify_steps_entry_checks_are_made_once_per_visit(engine: Engine) -> None:
    """A notify step keys its sends per recipient (``key/recipient``): a retry that finds any of
    them claimed goes on, even if the checks would now say the contact leaves; another visit of
    the step is checked again."""
    record = entry_record(
        "p-notify", contact_named(engine, "Karin"), "tell", exclusion_selections=[DEMO_SELECTION_ID]
    )
    with session(engine) as db:
        db.add(Delivery(key="p-notify/tell/1/our_contact", channel="email", recipient="a@b.se"))
    with session(engine) as db:
        again = enter_message_step(db, record, "p-notify/tell/1", "email", per_recipient=True)
        other_visit = enter_message_step(db, record, "p-notify/tell/2", "email", per_recipient=True)
        as_one_send = enter_message_step(db, record, "p-notify/tell/1", "email")
    assert again is None
    assert other_visit is not None and other_visit.leave_reason == "on the exclusion list"
    assert as_one_send is not None  # a send's own key is not among them
