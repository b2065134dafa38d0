"""Record the participant histories that tests/test_replay.py replays: the replay corpus.

    make record-histories          (python -m tests.record_histories)

Each scenario below runs a real participant on the time-skipping server against a seeded SQLite
CRM, a real SMTP server (one that hard-bounces some addresses) and the local Twilio API, then saves
every run's history (continue-as-new gives several; a run_script step gives its Script child's too)
and lists it in ``tests/histories/manifest.json`` with what it covers.

Histories are never overwritten: a scenario whose file exists is skipped. New behaviour gets a new
scenario (a new name) recorded beside the old ones; that is the promise that workflow changes stay
compatible with participants already running.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from sqlalchemy import Engine
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

import scripts.examples  # noqa: F401  (registers the scripts the flows run)
from activities.email import SmtpSettings
from control.ingest import record_event
from models import search_attributes as sa
from models.crm import Contact
from models.database import create_tables, get_engine, session
from models.demo import DEMO_SELECTION_ID, VIP_SELECTION_ID, seed_demo
from models.events import EventKind, FlowEvent
from models.flow import Flow
from models.frequency_caps import FrequencyCap
from models.participant import Enrollment, ParticipantState, Resume
from models.schedule import ClosedDays, is_workday
from models.sending import RateLimits, SendingSettings
from peers.smtp_inbox import MaildirHandler
from peers.twilio_api import TwilioApiServer
from testkit.peers import running_twilio_api, twilio_settings
from testkit.servers import free_port, start_time_skipping_server
from testkit.waiting import waiting_at
from worker import activities_for, build_worker
from workflows.participant import BEHAVIOUR, ParticipantWorkflow

HISTORIES = Path(__file__).parent / "histories"
MANIFEST = HISTORIES / "manifest.json"
STOCKHOLM = ZoneInfo("Europe/Stockholm")

# Demo CRM (models/demo.py): contact 1 Karin (email, mobile, in the demo selection), 3 Emily (her
# mobile is in a range no network uses: invalid), 5 Maja, 7 Charlotte (no mobile, no company).
KARIN, EMILY, MAJA, CHARLOTTE = 1, 3, 5, 7
MAJA_MOBILE = "+46709876543"
BOUNCING = "emily.clarke@example.org"

EMAIL = {
    "subscription_type": "newsletter",
    "from": {"kind": "address", "address": "news@flows.example.com", "name": "Flows"},
}
FINISH = {"id": "done", "type": "finish"}
# The behaviour pinned in the input (workflows.participant.BEHAVIOUR), as enrollment pins it.
PINNED_1 = {"behaviour": 1}  # every patch, no marker
PINNED_2 = {"behaviour": 2}  # and sends in the participant's worker (a local activity)
PINNED_3 = {"behaviour": 3}  # and CRM reads and writes in the participant's worker too
assert BEHAVIOUR == 3, "a new level needs scenarios of its own"


def flow(steps: list[dict[str, Any]], **settings: Any) -> Flow:
    return Flow.model_validate(
        {"id": "recorded", "name": "Recorded", "start": steps[0]["id"], "steps": steps, **settings}
    )


def event(kind: EventKind, contact_id: int = KARIN, **fields: Any) -> FlowEvent:
    return FlowEvent(
        event_id=str(uuid.uuid4()),
        kind=kind,
        contact_id=contact_id,
        occurred_at=datetime(2026, 11, 30, 12, tzinfo=UTC),
        **fields,
    )


Handle = WorkflowHandle[Any, ParticipantState]


@dataclass
class Peers:
    """What a scenario may steer: the server's clock, the Twilio API's scripted answers and the
    CRM's database."""

    env: WorkflowEnvironment
    twilio: TwilioApiServer
    engine: Engine

    async def skip(self, duration: timedelta) -> None:
        await self.env.sleep(duration)


@dataclass
class Scenario:
    """One participant run. ``drive`` (if any) steers it while it runs, then the recorder waits
    for the result; ``covers`` names the scenarios of the manifest's required list it shows."""

    description: str
    covers: list[str]
    flow: Callable[[datetime], Flow]
    contact_id: int = KARIN
    enrollment: dict[str, Any] = field(default_factory=dict)
    drive: Callable[[Handle, Peers], Awaitable[None]] | None = None
    cancelled: bool = False
    # Started with the search attributes enrollment gives (FlowStep set to the first step);
    # scenarios recorded before were started without any.
    enrolled: bool = False
    sending: SendingSettings | None = None  # the workspace's caps and rate limits


def local(start: datetime, days: int, hour: int) -> str:
    """A local Stockholm wall-clock time ``days`` after ``start``, at ``hour``: ISO, no offset."""
    day = start.astimezone(STOCKHOLM).date() + timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour).isoformat()


# --- the scenarios -----------------------------------------------------------------------------


def messages_flow(now: datetime) -> Flow:
    return flow(
        [
            {
                "id": "mail",
                "type": "send_email",
                "next": "text",
                "subject": "Hello [[customer.firstname]]",
                "html": '<p>Hi [[customer.firstname]], <a href="https://example.com/offer">'
                "the offer</a></p>",
            },
            {"id": "text", "type": "send_sms", "next": "tell-email", "text": "Hi from Flows"},
            {
                "id": "tell-email",
                "type": "notify_email",
                "next": "tell-sms",
                "to": {"our_contact": True, "addresses": ["sales@flows.example.com"]},
                "subject": "[[customer.fullname]] is in the flow",
                "text": "Say hello to [[customer.fullname]].",
            },
            {
                "id": "tell-sms",
                "type": "notify_sms",
                "next": "two-working-days",
                "to": {"our_contact": True, "addresses": ["+46701110002"]},
                "text": "[[customer.fullname]] is in the flow",
            },
            {
                "id": "two-working-days",
                "type": "wait_time",
                "amount": 2,
                "unit": "working_days",
                "next": "until",
            },
            {
                "id": "until",
                "type": "wait_time",
                "mode": "until",
                "until": local(now, 20, 9),
                "next": "hours",
            },
            {"id": "hours", "type": "wait_time", "amount": 5, "unit": "hours", "next": "done"},
            {
                **FINISH,
                "suggest_flow_otherwise": "other-flow",
                "add_to_selection": VIP_SELECTION_ID,
            },
        ],
        email=EMAIL,
        sms_sender="Flows",
        # Scheduled for 03:00 local: the sending window (08:00-17:00 every day) makes it wait.
        scheduled_start=local(now, 2, 3),
        sending_window={"weekdays": "all_days", "start": "08:00", "end": "17:00"},
    )


def final_answers_flow(now: datetime) -> Flow:
    return flow(
        [
            {
                "id": "mail",
                "type": "send_email",
                "next": "text",
                "subject": "Hello",
                "text": "Hello [[customer.firstname]]",
            },
            {"id": "text", "type": "send_sms", "next": "done", "text": "Hello"},
            FINISH,
        ],
        email=EMAIL,
        sms_sender="Flows",
    )


def sms_flow(now: datetime) -> Flow:
    return flow(
        [{"id": "text", "type": "send_sms", "next": "done", "text": "Hello"}, FINISH],
        sms_sender="Flows",
    )


async def reject_majas_mobile(handle: Handle, peers: Peers) -> None:
    del handle
    peers.twilio.reject_number(MAJA_MOBILE, code=21610)


def no_mobile_flow(now: datetime) -> Flow:
    return flow(
        [
            {
                "id": "text",
                "type": "send_sms",
                "next": "done",
                "text": "Hello",
                "exit_if_no_mobile": True,
                "exit": {"add_to_selection": VIP_SELECTION_ID, "suggest_flow": "email-only"},
            },
            FINISH,
        ],
        sms_sender="Flows",
    )


def actions_flow(now: datetime) -> Flow:
    """An event that arrives during a wait_time before the wait_for_action; then one awaited
    during the wait; then a wait that times out without an exit."""
    return flow(
        [
            {"id": "first", "type": "wait_time", "amount": 1, "unit": "days", "next": "form"},
            {
                "id": "form",
                "type": "wait_for_action",
                "actions": [{"kind": "form_submitted", "form_id": 7}],
                "next": "click",
            },
            {
                "id": "click",
                "type": "wait_for_action",
                "actions": [
                    {
                        "kind": "link_clicked",
                        "email_step": "mail",
                        "link": "https://example.com/offer",
                    }
                ],
                "max_wait": {"amount": 3, "unit": "days"},
                "next": "quiet",
            },
            {
                "id": "quiet",
                "type": "wait_for_action",
                "actions": [{"kind": "form_submitted", "form_id": 9}],
                "max_wait": {"amount": 2, "unit": "working_days"},
                "next": "done",
            },
            FINISH,
        ]
    )


async def answer_early_and_during(handle: Handle, peers: Peers) -> None:
    await waiting_at(handle, "first")
    await handle.signal(ParticipantWorkflow.event, event(EventKind.form_submitted, form_id=7))
    await peers.skip(timedelta(days=1, minutes=1))
    await waiting_at(handle, "click")
    click = event(
        EventKind.link_clicked, flow_id="recorded", step_id="mail", link="https://example.com/offer"
    )
    await handle.signal(ParticipantWorkflow.event, click)
    # The same event again (a replayed click): ignored by event id.
    await handle.signal(ParticipantWorkflow.event, click)


def timeout_exit_flow(now: datetime) -> Flow:
    return flow(
        [
            {
                "id": "wait",
                "type": "wait_for_action",
                "actions": [{"kind": "form_submitted", "form_id": 7}],
                "max_wait": {"amount": 1, "unit": "days"},
                "exit_on_timeout": True,
                "exit": {"add_to_selection": VIP_SELECTION_ID, "suggest_flow": "second-chance"},
                "next": "done",
            },
            FINISH,
        ]
    )


def event_splits_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "first", "type": "wait_time", "amount": 1, "unit": "days", "next": "submitted"},
            {
                "id": "submitted",
                "type": "split",
                "basis": "form_submitted",
                "form_id": 7,
                "branches": [
                    {"name": "Submitted", "submitted": True, "next": "answers"},
                    {"name": "Not submitted", "submitted": False, "next": "done"},
                ],
                "everyone_else": {"next": "done"},
            },
            {
                "id": "answers",
                "type": "split",
                "basis": "form_data",
                "form_id": 7,
                "branches": [
                    {
                        "name": "Large",
                        "next": "clicks",
                        "criteria": {
                            "conditions": [
                                {"field": "form.size", "operator": "equals", "value": "large"}
                            ]
                        },
                    }
                ],
                "everyone_else": {"next": "clicks"},
            },
            {
                "id": "clicks",
                "type": "split",
                "basis": "link_clicked",
                "branches": [
                    {"name": "Pricing", "link": "https://example.com/pricing", "next": "unclicked"},
                    {"name": "Any link", "next": "unclicked"},
                ],
                "everyone_else": {"next": "unclicked"},
            },
            {
                "id": "unclicked",
                "type": "split",
                "basis": "link_clicked",
                "email_step": "never",
                "branches": [{"name": "Clicked", "next": "done"}],
                "everyone_else": {"next": "done"},
            },
            FINISH,
        ]
    )


async def submit_and_click(handle: Handle, peers: Peers) -> None:
    del peers
    await waiting_at(handle, "first")
    await handle.signal(
        ParticipantWorkflow.event,
        event(EventKind.form_submitted, form_id=7, data={"size": "large", "name": "Karin"}),
    )
    await handle.signal(
        ParticipantWorkflow.event,
        event(
            EventKind.link_clicked,
            flow_id="recorded",
            step_id="mail",
            link="https://example.com/blog",
        ),
    )


async def submit_stored_and_click(handle: Handle, peers: Peers) -> None:
    """As ``submit_and_click``, the way events reach participants now: the submission is
    recorded in the CRM's events and signalled without its fields."""
    await waiting_at(handle, "first")
    submission = event(EventKind.form_submitted, form_id=7, data={"size": "large", "name": "Karin"})
    record_event(peers.engine, submission)
    await handle.signal(ParticipantWorkflow.event, submission.reference())
    await handle.signal(
        ParticipantWorkflow.event,
        event(
            EventKind.link_clicked,
            flow_id="recorded",
            step_id="mail",
            link="https://example.com/blog",
        ),
    )


def crm_splits_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "into-project", "type": "add_to_list", "project_id": 1, "next": "by-data"},
            {
                "id": "by-data",
                "type": "split",
                "basis": "data",
                "branches": [
                    {
                        "name": "Decision makers",
                        "next": "by-selection",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "contact.category",
                                    "operator": "equals",
                                    "value": "Decision maker",
                                }
                            ]
                        },
                    }
                ],
                "everyone_else": {"next": "by-selection"},
            },
            {
                "id": "by-selection",
                "type": "split",
                "basis": "selection",
                "branches": [
                    {"name": "Demo", "selection_id": DEMO_SELECTION_ID, "next": "by-project"}
                ],
                "everyone_else": {"next": "by-project"},
            },
            {
                "id": "by-project",
                "type": "split",
                "basis": "project",
                "branches": [{"name": "Spring", "project_id": 1, "next": "by-data-again"}],
                "everyone_else": {"next": "by-data-again"},
            },
            {
                "id": "by-data-again",
                "type": "split",
                "basis": "data",
                "branches": [
                    {
                        "name": "Partners",
                        "next": "done",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "company.category",
                                    "operator": "equals",
                                    "value": "Partner",
                                }
                            ]
                        },
                    }
                ],
                "everyone_else": {"exit": {"add_to_selection": VIP_SELECTION_ID}},
            },
            FINISH,
        ]
    )


def crm_steps_flow(now: datetime) -> Flow:
    return flow(
        [
            {
                "id": "add",
                "type": "add_to_list",
                "selection_id": VIP_SELECTION_ID,
                "project_id": 1,
                "next": "remove",
            },
            {
                "id": "remove",
                "type": "remove_from_list",
                "selection_id": VIP_SELECTION_ID,
                "next": "update",
            },
            {
                "id": "update",
                "type": "update_contact",
                "next": "owner",
                "rows": [
                    {"field": "category", "action": "select", "value": "Customer"},
                    {"field": "title", "action": "set", "value": "Head of Marketing"},
                    {
                        "target": "company",
                        "field": "category",
                        "action": "select",
                        "value": "Partner",
                    },
                ],
            },
            {
                "id": "owner",
                "type": "distribute_to_owner",
                "user_group_id": 1,
                "only_if_unassigned": False,
                "next": "fallback",
            },
            {
                "id": "fallback",
                "type": "distribute_to_owner",
                "associate_ids": [999],
                "only_if_unassigned": False,
                "fallback_associate_id": 1,
                "next": "todo",
            },
            {
                "id": "todo",
                "type": "create_follow_up",
                "title": "Call [[customer.firstname]]",
                "follow_up_type": "Phone",
                "after": {"amount": 2, "unit": "working_days"},
                "next": "meeting",
            },
            {
                "id": "meeting",
                "type": "create_follow_up",
                "kind": "meeting",
                "title": "Demo for [[company.name]]",
                "follow_up_type": "Meeting",
                "after": {"amount": 1, "unit": "weeks"},
                "next": "request",
            },
            {
                "id": "request",
                "type": "create_request",
                "title": "Check-in: [[company.name]]",
                "request_type": "Support",
                "status": "Open",
                "category": "General",
                "priority": "High",
                "owner": "automatic",
                "message": "<p>Hello</p>",
                "next": "sale",
            },
            {
                "id": "sale",
                "type": "create_sale",
                "title": "Licences for [[company.name]]",
                "sale_type": "New business",
                "amount": 12000,
                "next": "script",
            },
            {
                "id": "script",
                "type": "run_script",
                "script": "sync_webinar_attendee",
                "next": "done",
            },
            {**FINISH, "suggest_flow_on_success": "customers", "suggest_flow_otherwise": "nurture"},
        ],
        success={"criteria": [{"kind": "sale_created"}], "move_to_finish": False},
    )


def continue_as_new_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "w1"},
            {"id": "w1", "type": "wait_time", "amount": 1, "unit": "days", "next": "remove"},
            {
                "id": "remove",
                "type": "remove_from_list",
                "selection_id": VIP_SELECTION_ID,
                "next": "w2",
            },
            {
                "id": "w2",
                "type": "wait_for_action",
                "actions": [{"kind": "form_submitted", "form_id": 7}],
                "max_wait": {"amount": 2, "unit": "days"},
                "next": "done",
            },
            FINISH,
        ]
    )


async def form_in_second_run(handle: Handle, peers: Peers) -> None:
    await peers.skip(timedelta(days=1, minutes=1))
    await waiting_at(handle, "w2")
    await handle.signal(ParticipantWorkflow.event, event(EventKind.form_submitted, form_id=7))


def pause_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "w1", "type": "wait_time", "amount": 1, "unit": "days", "next": "add"},
            {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
            FINISH,
        ]
    )


def edited_pause_flow(now: datetime) -> Flow:
    """Version 2, deployed while paused: the next step changed, and a step added after it."""
    return flow(
        [
            {"id": "w1", "type": "wait_time", "amount": 1, "unit": "days", "next": "add"},
            {"id": "add", "type": "add_to_list", "project_id": 1, "next": "tag"},
            {
                "id": "tag",
                "type": "update_contact",
                "next": "done",
                "rows": [{"field": "title", "action": "set", "value": "Reader"}],
            },
            FINISH,
        ]
    )


async def pause_edit_resume(handle: Handle, peers: Peers) -> None:
    await waiting_at(handle, "w1")
    await handle.signal(ParticipantWorkflow.pause)
    # The wait ends while paused: the participant freezes there (no timer).
    await peers.skip(timedelta(days=1, minutes=1))
    await waiting_at(handle, "w1", timer=False)
    edited = edited_pause_flow(datetime.now(UTC))
    await handle.signal(ParticipantWorkflow.resume, Resume(flow=edited, flow_version=2))


def step_gone_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "w1", "type": "wait_time", "amount": 1, "unit": "days", "next": "done"},
            FINISH,
        ]
    )


async def pause_resume_with_current_step_gone(handle: Handle, peers: Peers) -> None:
    await waiting_at(handle, "w1")
    await handle.signal(ParticipantWorkflow.pause)
    await peers.skip(timedelta(days=1, minutes=1))
    await waiting_at(handle, "w1", timer=False)
    edited = flow(
        [{"id": "w9", "type": "wait_time", "amount": 1, "unit": "days", "next": "done"}, FINISH]
    )
    await handle.signal(ParticipantWorkflow.resume, Resume(flow=edited, flow_version=2))


async def resume_queued(handle: Handle, peers: Peers) -> None:
    del peers
    await asyncio.sleep(0.5)  # enrolled while paused: it queues before the first step
    await handle.signal(ParticipantWorkflow.resume, Resume())


def success_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "long", "type": "wait_time", "amount": 30, "unit": "days", "next": "done"},
            FINISH,
        ],
        success={"criteria": [{"kind": "sale_created"}], "move_to_finish": True},
    )


async def meet_success(handle: Handle, peers: Peers) -> None:
    del peers
    await waiting_at(handle, "long")
    await handle.signal(ParticipantWorkflow.event, event(EventKind.sale_created, sale_id=5))


def long_wait_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "long", "type": "wait_time", "amount": 30, "unit": "days", "next": "done"},
            FINISH,
        ]
    )


async def ask_to_leave(handle: Handle, peers: Peers) -> None:
    del peers
    await waiting_at(handle, "long")
    await handle.signal(ParticipantWorkflow.leave, "enrolled in flow 'winter' that removes it")


async def end_the_flow(handle: Handle, peers: Peers) -> None:
    del peers
    await waiting_at(handle, "long")
    await handle.cancel()


def excluded_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
            FINISH,
        ],
        exclusion_selections=[DEMO_SELECTION_ID],
    )


def experiment_flow(now: datetime) -> Flow:
    """An A/B experiment without a holdout: path A sends an email, path B goes straight to the
    finish; the contact's path comes from a hash of flow, experiment and contact."""
    return flow(
        [
            {
                "id": "ab",
                "type": "split",
                "basis": "experiment",
                "experiment": {"id": "subject-test", "holdout_percent": 0},
                "branches": [
                    {"name": "A", "percent": 50, "next": "mail"},
                    {"name": "B", "percent": 50, "next": "done"},
                ],
                "everyone_else": {},
            },
            {
                "id": "mail",
                "type": "send_email",
                "next": "done",
                "subject": "Path A",
                "text": "Hello [[customer.firstname]]",
            },
            FINISH,
        ],
        email=EMAIL,
    )


def failing_step_flow(now: datetime) -> Flow:
    return flow(
        [
            {
                "id": "ask",
                "type": "create_request",
                "next": "done",
                "title": "Check-in",
                "request_type": "Customer success",
                "status": "Open",
                "category": "Account management",
                "priority": "Critical",
                "owner": "unassigned",
            },
            FINISH,
        ]
    )


def excluded_at_wait_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "wait", "type": "wait_time", "amount": 1, "unit": "days", "next": "done"},
            FINISH,
        ],
        exclusion_selections=[DEMO_SELECTION_ID],
    )


def excluded_at_finish_flow(now: datetime) -> Flow:
    return flow([FINISH], exclusion_selections=[DEMO_SELECTION_ID])


def excluded_at_email_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "mail", "type": "send_email", "next": "done", "subject": "Hi", "text": "Hi"},
            FINISH,
        ],
        email=EMAIL,
        exclusion_selections=[DEMO_SELECTION_ID],
    )


def email_then_finish_flow(now: datetime) -> Flow:
    return flow(
        [
            {"id": "mail", "type": "send_email", "next": "done", "subject": "Hi", "text": "Hi"},
            FINISH,
        ],
        email=EMAIL,
    )


def sms_then_finish_flow(now: datetime) -> Flow:
    return flow(
        [{"id": "text", "type": "send_sms", "next": "done", "text": "Hello"}, FINISH],
        sms_sender="Flows",
    )


def excluded_by_its_last_step_flow(now: datetime) -> Flow:
    """The last step puts the contact on the flow's exclusion list: the finish's checks, made
    with the departure, take it out."""
    return flow(
        [
            {"id": "remove", "type": "remove_from_list", "project_id": 1, "next": "add"},
            {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
            FINISH,
        ],
        exclusion_selections=[VIP_SELECTION_ID],
    )


def excluded_at_sms_flow(now: datetime) -> Flow:
    return flow(
        [{"id": "text", "type": "send_sms", "next": "done", "text": "Hello"}, FINISH],
        sms_sender="Flows",
        exclusion_selections=[DEMO_SELECTION_ID],
    )


# One marketing email and one SMS a day per contact, across flows.
DAILY_CAPS = SendingSettings(
    frequency_caps=[
        FrequencyCap(channel="email", max_messages=1, days=1),
        FrequencyCap(channel="sms", max_messages=1, days=1),
    ],
    rate_limits=RateLimits(email=50, sms=10),
)


def capped_flow(when_capped: str) -> Callable[[datetime], Flow]:
    """Two emails in a row (the second over the daily cap), a transactional one, an SMS and
    a notification (neither capped)."""

    def build(now: datetime) -> Flow:
        del now
        mail = {"type": "send_email", "subject": "Hello [[customer.firstname]]", "text": "Hi"}
        return flow(
            [
                {"id": "first", **mail, "next": "second"},
                {"id": "second", **mail, "next": "receipt"},
                {**mail, "id": "receipt", "transactional": True, "next": "text"},
                {"id": "text", "type": "send_sms", "text": "Hi from Flows", "next": "tell"},
                {
                    "id": "tell",
                    "type": "notify_email",
                    "to": {"addresses": ["sales@flows.example.com"]},
                    "subject": "[[customer.fullname]] is in the flow",
                    "text": "Say hello.",
                    "next": "done",
                },
                FINISH,
            ],
            email=EMAIL,
            sms_sender="Flows",
            when_capped=when_capped,
        )

    return build


def calendar_and_clock_flow(now: datetime) -> Flow:
    """Swedish holidays and a closed date of the flow's own (the first working day after the
    start), in the contact's clock: a working-day wait over the closed date, an email in the
    contact's sending window, a wait until a local time on the contact's clock, and a meeting
    booked a working day later."""
    start = datetime.fromisoformat(local(now, 2, 10))
    closed = start.date() + timedelta(days=1)
    while not is_workday(closed, ClosedDays("SE")):
        closed += timedelta(days=1)
    return flow(
        [
            {
                "id": "pause",
                "type": "wait_time",
                "amount": 1,
                "unit": "working_days",
                "next": "mail",
            },
            {"id": "mail", "type": "send_email", "subject": "Hi", "text": "Hi", "next": "until"},
            {
                "id": "until",
                "type": "wait_time",
                "mode": "until",
                "until": local(now, 20, 9),
                "next": "meeting",
            },
            {
                "id": "meeting",
                "type": "create_follow_up",
                "kind": "meeting",
                "title": "Call [[customer.firstname]]",
                "follow_up_type": "Meeting",
                "after": {"amount": 1, "unit": "working_days"},
                "next": "done",
            },
            FINISH,
        ],
        email=EMAIL,
        scheduled_start=start.isoformat(),
        sending_window={"weekdays": "workdays", "start": "08:00", "end": "17:00"},
        holidays={"country": "SE", "closed_dates": [closed.isoformat()]},
        recipient_clock={},
    )


async def karin_lives_in_new_york(handle: Handle, peers: Peers) -> None:
    """Before the participant's first step (it waits for its scheduled start)."""
    del handle
    with session(peers.engine) as db:
        karin = db.get(Contact, KARIN)
        assert karin is not None
        karin.extra_fields["time_zone"] = "America/New_York"
        db.commit()


SCENARIOS: dict[str, Scenario] = {
    "messages_sent": Scenario(
        "send_email, send_sms, notify_email, notify_sms delivered; a scheduled start and the "
        "sending window; waits for working days, until a local time and for hours; finish with "
        "hand-offs",
        [
            "scheduled_start",
            "sending_window",
            "email.sent",
            "sms.sent",
            "notify_email.sent",
            "notify_sms.sent",
            "wait_time.working_days",
            "wait_time.until",
            "wait_time.hours",
            "finish.handoffs",
        ],
        messages_flow,
    ),
    "final_answers": Scenario(
        "a hard-bounced email (550 at RCPT) and an SMS skipped for an invalid mobile number",
        ["email.bounced", "sms.invalid_mobile"],
        final_answers_flow,
        contact_id=EMILY,
    ),
    "sms_final_error": Scenario(
        "an SMS the provider refuses for good (Twilio 21610, unsubscribed recipient)",
        ["sms.final_error"],
        sms_flow,
        contact_id=MAJA,
        drive=reject_majas_mobile,
    ),
    "sms_no_mobile_exit": Scenario(
        "send_sms to a contact without a mobile number, leaving through the step's exit",
        ["sms.no_mobile_exit"],
        no_mobile_flow,
        contact_id=CHARLOTTE,
    ),
    "wait_for_action_answered": Scenario(
        "a form submitted before the participant reached wait_for_action counts at once; a click "
        "answers a wait in progress (sent twice: once counted); a wait times out and continues",
        [
            "event_before_wait_for_action",
            "wait_for_action.answered",
            "wait_for_action.timed_out_continue",
            "event.duplicate_ignored",
        ],
        actions_flow,
        drive=answer_early_and_during,
    ),
    "wait_for_action_timeout_exit": Scenario(
        "wait_for_action times out and leaves through its exit (hand-offs)",
        ["wait_for_action.timed_out_exit"],
        timeout_exit_flow,
    ),
    "event_splits": Scenario(
        "splits on form submitted, form data and link clicked, each branch and everyone else",
        [
            "split.form_submitted",
            "split.form_data",
            "split.link_clicked",
            "split.everyone_else.next",
        ],
        event_splits_flow,
        drive=submit_and_click,
    ),
    "crm_splits": Scenario(
        "splits on contact data, selection and project; everyone else continuing and leaving",
        [
            "split.data",
            "split.selection",
            "split.project",
            "split.everyone_else.next",
            "split.everyone_else.exit",
        ],
        crm_splits_flow,
    ),
    "crm_steps": Scenario(
        "add_to_list, remove_from_list, update_contact, distribute_to_owner (in turn and the "
        "fallback), create_follow_up (to-do and meeting), create_request, create_sale, "
        "run_script (a Script child), each CRM change announced; success met without "
        "move-to-finish",
        [
            "list.add",
            "list.remove",
            "update_contact",
            "distribute_to_owner.next_in_turn",
            "distribute_to_owner.fallback",
            "follow_up.todo",
            "follow_up.meeting",
            "request",
            "sale",
            "run_script.child",
            "crm_event.announced",
            "success.at_finish",
        ],
        crm_steps_flow,
    ),
    "continue_as_new": Scenario(
        "two steps per run: the state carried across continue-as-new, an event in a later run",
        ["continue_as_new"],
        continue_as_new_flow,
        enrollment={"steps_per_run": 2},
        drive=form_in_second_run,
    ),
    "pause_edit_resume": Scenario(
        "paused during a wait, frozen at its end, resumed with an edited version (a step added)",
        ["pause", "resume.edit_taken"],
        pause_flow,
        drive=pause_edit_resume,
    ),
    "pause_resume_step_gone": Scenario(
        "resumed with a version that no longer has the current step: keeps its version",
        ["resume.edit_kept_old_version"],
        step_gone_flow,
        drive=pause_resume_with_current_step_gone,
    ),
    "enrolled_while_paused": Scenario(
        "enrolled into a paused flow: queues before the first step until resumed",
        ["enrolled_paused"],
        pause_flow,
        enrollment={"paused": True},
        drive=resume_queued,
    ),
    "success_move_to_finish": Scenario(
        "a success criterion met in the middle of a 30-day wait, with move-to-finish",
        ["success.move_to_finish"],
        success_flow,
        drive=meet_success,
    ),
    "leave_signal": Scenario(
        "taken out of the flow by the leave signal in the middle of a wait",
        ["leave"],
        long_wait_flow,
        drive=ask_to_leave,
    ),
    "end_cancel": Scenario(
        "the flow is ended: the participant is cancelled in the middle of a wait",
        ["end.cancel"],
        long_wait_flow,
        drive=end_the_flow,
        cancelled=True,
    ),
    "excluded_before_step": Scenario(
        "the checks before every step find the contact on the exclusion list",
        ["check.exclusion_list"],
        excluded_flow,
    ),
    "final_step_error": Scenario(
        "a step's final (non-retryable) error drops the participant with the reason",
        ["step.final_error"],
        failing_step_flow,
    ),
    # One record per step (workflow.patched "record-once-per-step"): no record of its own at
    # enrollment, a wait step's entry recorded with its wait, a finish without hand-offs recorded
    # once as the participant leaves. The same scenarios as above, recorded again, and the checks
    # before a step made at those merged records.
    "messages_sent_v2": Scenario(
        "as messages_sent, one record per step: a scheduled start still records at enrollment; "
        "each wait's entry recorded with its timer; a finish with hand-offs recorded at entry",
        ["records_once_per_step.scheduled_start", "records_once_per_step.wait_time"],
        messages_flow,
    ),
    "crm_steps_v2": Scenario(
        "as crm_steps, one record per step: no enrollment record before the first step",
        ["records_once_per_step.action_steps"],
        crm_steps_flow,
    ),
    "continue_as_new_v2": Scenario(
        "as continue_as_new, one record per step, in every run",
        ["records_once_per_step.continue_as_new"],
        continue_as_new_flow,
        enrollment={"steps_per_run": 2},
        drive=form_in_second_run,
    ),
    "pause_edit_resume_v2": Scenario(
        "as pause_edit_resume, one record per step: paused during a wait recorded with its timer; "
        "a finish without hand-offs recorded once, as the participant leaves",
        ["records_once_per_step.pause", "records_once_per_step.finish"],
        pause_flow,
        drive=pause_edit_resume,
    ),
    "enrolled_while_paused_v2": Scenario(
        "as enrolled_while_paused, one record per step: queued, so recorded at enrollment",
        ["records_once_per_step.enrolled_paused"],
        pause_flow,
        enrollment={"paused": True},
        drive=resume_queued,
    ),
    "wait_for_action_answered_v2": Scenario(
        "as wait_for_action_answered, one record per step: an action already there (no wait) and "
        "a wait that times out, each recorded once",
        ["records_once_per_step.wait_for_action"],
        actions_flow,
        drive=answer_early_and_during,
    ),
    "excluded_at_wait_v2": Scenario(
        "one record per step: the checks made with a wait step's record find the contact on the "
        "exclusion list, before it waits",
        ["records_once_per_step.checks_at_wait"],
        excluded_at_wait_flow,
    ),
    "excluded_at_finish_v2": Scenario(
        "one record per step: the checks made with the last record find the contact on the "
        "exclusion list at a finish without hand-offs: dropped out, recorded again",
        ["records_once_per_step.checks_at_finish"],
        excluded_at_finish_flow,
    ),
    # A message step's entry recorded and checked by its send (workflow.patched
    # "record-in-message-step"): no record of its own unless it waits for its sending window.
    "messages_sent_v3": Scenario(
        "as messages_sent, a message step's entry recorded by its send: the email waits for its "
        "sending window (recorded before the wait), the SMS in the window is recorded by its send",
        [
            "records_in_message_step.sending_window",
            "records_in_message_step.email",
            "records_in_message_step.sms",
        ],
        messages_flow,
    ),
    "final_answers_v3": Scenario(
        "as final_answers, each message step's entry recorded by its send: a hard bounce and an "
        "invalid mobile number",
        ["records_in_message_step.final_answers"],
        final_answers_flow,
        contact_id=EMILY,
    ),
    "sms_no_mobile_exit_v3": Scenario(
        "as sms_no_mobile_exit, the step's entry recorded by its send: no mobile number, leaving "
        "through the step's exit",
        ["records_in_message_step.sms_exit"],
        no_mobile_flow,
        contact_id=CHARLOTTE,
    ),
    "excluded_at_send_v3": Scenario(
        "the checks made by send_email at the step's entry find the contact on the exclusion "
        "list: nothing sent, dropped out with the reason",
        ["records_in_message_step.checks_at_email"],
        excluded_at_email_flow,
    ),
    "excluded_at_sms_v3": Scenario(
        "the checks made by send_sms at the step's entry find the contact on the exclusion "
        "list: nothing sent, dropped out with the reason",
        ["records_in_message_step.checks_at_sms"],
        excluded_at_sms_flow,
    ),
    # Every step's entry recorded and checked by the step's own activity where it has one
    # (workflow.patched "record-in-step-activity", one marker instead of the two above).
    "crm_steps_v4": Scenario(
        "as crm_steps, each CRM step's entry recorded and checked by its own CRM activity, in "
        "the change's transaction: no local record before add/remove, update, distribute or "
        "create steps",
        ["records_in_step_activity.crm_steps"],
        crm_steps_flow,
    ),
    "crm_splits_v4": Scenario(
        "as crm_splits, each split on CRM data recording its entry and making the checks in the "
        "activity that reads the data",
        ["records_in_step_activity.crm_splits"],
        crm_splits_flow,
    ),
    "messages_sent_v4": Scenario(
        "as messages_sent_v3 under the one marker of record-in-step-activity",
        ["records_in_step_activity.messages"],
        messages_flow,
    ),
    "excluded_at_crm_step_v4": Scenario(
        "the checks made by add_to_list at the step's entry find the contact on the exclusion "
        "list: nothing changed, dropped out with the reason",
        ["records_in_step_activity.checks_at_crm_step"],
        excluded_flow,
    ),
    # The step before a finish without hand-offs records the participant's departure in its own
    # activity, and FlowStep comes with the start (workflow.patched "depart-in-step-activity").
    "email_departure_v5": Scenario(
        "send_email then a finish without hand-offs, enrolled with FlowStep set: the send records "
        "the departure (no local record as the participant leaves), FlowStep upserted once",
        ["depart_in_step_activity.email", "depart_in_step_activity.flow_step_at_start"],
        email_then_finish_flow,
        enrolled=True,
    ),
    "sms_departure_v5": Scenario(
        "send_sms then a finish without hand-offs: the send records the departure",
        ["depart_in_step_activity.sms"],
        sms_then_finish_flow,
        enrolled=True,
    ),
    "excluded_at_departure_v5": Scenario(
        "remove_from_list, then add_to_list puts the contact on the exclusion list: the finish's "
        "checks made with the departure drop it out",
        ["depart_in_step_activity.checks_at_finish"],
        excluded_by_its_last_step_flow,
        enrolled=True,
    ),
    "messages_sent_v5": Scenario(
        "as messages_sent_v4 under depart-in-step-activity: a scheduled start (no FlowStep at the "
        "start), a finish with hand-offs (recorded as the participant leaves)",
        ["depart_in_step_activity.messages"],
        messages_flow,
        enrolled=True,
    ),
    "crm_steps_v5": Scenario(
        "as crm_steps_v4 under depart-in-step-activity, enrolled with FlowStep set",
        ["depart_in_step_activity.crm_steps"],
        crm_steps_flow,
        enrolled=True,
    ),
    # Events reach participants without their form data (workflow.patched
    # "form-data-from-store"): a form-data split reads the stored submission in an activity.
    "event_splits_v2": Scenario(
        "as event_splits, the submission signalled without its fields: the form-data split reads "
        "the stored submission (choose_form_data_branch) and takes its branch",
        ["split.form_data_from_store"],
        event_splits_flow,
        drive=submit_stored_and_click,
    ),
    "event_splits_v4": Scenario(
        "as event_splits_v2 in a participant started under record-in-step-activity: the "
        "form-data split reads the stored submission",
        ["records_in_step_activity.form_data_from_store"],
        event_splits_flow,
        drive=submit_stored_and_click,
    ),
    # Sending discipline (workflow.patched "sending-discipline", asked at the first message
    # step): sends on the channels' task queues, the flow's frequency-cap policy in each send.
    "capped_wait_v5": Scenario(
        "daily caps: the first email is sent, the second waits on a timer for the local "
        "midnight and is sent then; a transactional email, an SMS and a notify_email are not "
        "capped; every send on its channel's task queue",
        ["sending_discipline.channel_task_queues", "sending_discipline.capped_wait"],
        capped_flow("wait"),
        sending=DAILY_CAPS,
    ),
    "capped_skip_v5": Scenario(
        "daily caps, the flow skipping capped messages: the second email is recorded as capped "
        "and the participant moves on at once",
        ["sending_discipline.capped_skip"],
        capped_flow("skip"),
        contact_id=MAJA,
        sending=DAILY_CAPS,
    ),
    # One marker for both (workflow.patched "depart-and-send-by-channel", asked at the start).
    "email_departure_v6": Scenario(
        "as email_departure_v5 under depart-and-send-by-channel: the send on the email channel's "
        "task queue records the departure",
        ["depart_and_send_by_channel.email"],
        email_then_finish_flow,
        enrolled=True,
    ),
    "capped_wait_v6": Scenario(
        "as capped_wait_v5 under depart-and-send-by-channel: no sending-discipline marker at the "
        "first send",
        ["depart_and_send_by_channel.capped_wait"],
        capped_flow("wait"),
        sending=DAILY_CAPS,
        enrolled=True,
    ),
    # FlowStep shows where the participant waits and where it left, not every step it passes
    # (workflow.patched "flow-step-where-it-waits", asked at the start).
    "crm_steps_v7": Scenario(
        "as crm_steps_v5 under flow-step-where-it-waits: the action steps upsert no FlowStep, "
        "the participant's last FlowStep comes with its status as it leaves",
        ["flow_step_where_it_waits.action_steps"],
        crm_steps_flow,
        enrolled=True,
    ),
    "messages_sent_v7": Scenario(
        "as messages_sent_v5 under flow-step-where-it-waits: FlowStep upserted as the participant "
        "waits (the sending window, the waits), not at the sends",
        ["flow_step_where_it_waits.waits"],
        messages_flow,
        enrolled=True,
    ),
    "pause_edit_resume_v7": Scenario(
        "as pause_edit_resume_v2 under flow-step-where-it-waits: FlowStep shown as the "
        "participant waits, and while paused",
        ["flow_step_where_it_waits.pause"],
        pause_flow,
        drive=pause_edit_resume,
        enrolled=True,
    ),
    # The behaviour pinned in the input (Enrollment.behaviour, workflows.participant.BEHAVIOUR):
    # the same commands as under every patch, and no marker nor TemporalChangeVersion upsert.
    "crm_steps_v8": Scenario(
        "as crm_steps_v7, the behaviour pinned at the start: no patch marker",
        ["behaviour_pinned.action_steps"],
        crm_steps_flow,
        enrollment=PINNED_1,
        enrolled=True,
    ),
    "messages_sent_v8": Scenario(
        "as messages_sent_v7, the behaviour pinned at the start: no patch marker, the sends on "
        "the channels' task queues",
        ["behaviour_pinned.messages"],
        messages_flow,
        enrollment=PINNED_1,
        enrolled=True,
    ),
    "email_departure_v8": Scenario(
        "as email_departure_v6, the behaviour pinned at the start: the send records the "
        "departure, no patch marker",
        ["behaviour_pinned.email"],
        email_then_finish_flow,
        enrollment=PINNED_1,
        enrolled=True,
    ),
    "pause_edit_resume_v8": Scenario(
        "as pause_edit_resume_v7, the behaviour pinned at the start",
        ["behaviour_pinned.pause"],
        pause_flow,
        drive=pause_edit_resume,
        enrollment=PINNED_1,
        enrolled=True,
    ),
    "capped_wait_v8": Scenario(
        "as capped_wait_v6, the behaviour pinned at the start",
        ["behaviour_pinned.capped_wait"],
        capped_flow("wait"),
        sending=DAILY_CAPS,
        enrollment=PINNED_1,
        enrolled=True,
    ),
    "event_splits_v8": Scenario(
        "as event_splits_v4, the behaviour pinned at the start: the form-data split reads the "
        "stored submission without a form-data-from-store marker",
        ["behaviour_pinned.form_data_from_store"],
        event_splits_flow,
        drive=submit_stored_and_click,
        enrollment=PINNED_1,
    ),
    "holidays_and_recipient_clock_v8": Scenario(
        "as holidays_and_recipient_clock, the behaviour pinned at the start: the contact's time "
        "zone read without a recipient-clock marker",
        ["behaviour_pinned.recipient_clock"],
        calendar_and_clock_flow,
        drive=karin_lives_in_new_york,
        enrollment=PINNED_1,
    ),
    # Behaviour 2: send_email and send_sms steps send in a local activity of the participant's
    # worker, unless the channel has a rate limit (then on the channel's queue, as before).
    "email_departure_v9": Scenario(
        "as email_departure_v8, behaviour 2: the email sent in a local activity of the "
        "participant's worker, which records the departure",
        ["sends_in_worker.email"],
        email_then_finish_flow,
        enrollment=PINNED_2,
        enrolled=True,
    ),
    "sms_departure_v9": Scenario(
        "as sms_departure_v5, behaviour 2: the SMS sent in a local activity, which records the "
        "departure",
        ["sends_in_worker.sms"],
        sms_then_finish_flow,
        enrollment=PINNED_2,
        enrolled=True,
    ),
    "messages_sent_v9": Scenario(
        "as messages_sent_v8, behaviour 2: email and SMS sent in local activities, notify "
        "steps on the channels' task queues",
        ["sends_in_worker.messages"],
        messages_flow,
        enrollment=PINNED_2,
        enrolled=True,
    ),
    "capped_wait_v9": Scenario(
        "as capped_wait_v8, behaviour 2: a local send held back by a cap answers when the cap "
        "allows it, and the participant sends again after the timer",
        ["sends_in_worker.capped_wait"],
        capped_flow("wait"),
        sending=DAILY_CAPS,
        enrollment=PINNED_2,
        enrolled=True,
    ),
    "rate_limited_sends_v9": Scenario(
        "as messages_sent_v9 with rate limits on both channels: each local send answers None "
        "without sending, and the step sends on the channel's task queue, which holds the limit",
        ["sends_in_worker.rate_limited"],
        messages_flow,
        sending=SendingSettings(rate_limits=RateLimits(email=50, sms=50)),
        enrollment=PINNED_2,
        enrolled=True,
    ),
    # Behaviour 3: a step's CRM reads and writes run in local activities of the participant's
    # worker (workflows.steps.in_crm): list changes, updates, owners, creations, splits on CRM
    # data, the form-data read, the contact's time zone and the exit hand-offs. crm_steps_v10
    # comes last: after a crm_steps run the time-skipping server no longer skips to the later
    # scenarios' timers, and crm_splits_v10 wants the demo data as seeded.
    # An experiment split's path chosen (and recorded) by its activity: on the task queue at
    # behaviour 2, in the participant's worker at behaviour 3.
    "experiment_split_v9": Scenario(
        "an A/B experiment split, behaviour 2: choose_experiment_path on the task queue picks "
        "the contact's path and records it",
        ["split.experiment"],
        experiment_flow,
        enrollment=PINNED_2,
        enrolled=True,
    ),
    "experiment_split_v10": Scenario(
        "as experiment_split_v9, behaviour 3: the path chosen in a local activity",
        ["crm_in_worker.experiment"],
        experiment_flow,
        enrollment=PINNED_3,
        enrolled=True,
    ),
    "crm_splits_v10": Scenario(
        "as crm_splits_v4, behaviour 3: each split on CRM data reads (and records) in a local "
        "activity; the everyone-else exit hands off in local activities",
        ["crm_in_worker.crm_splits", "crm_in_worker.handoffs"],
        crm_splits_flow,
        enrollment=PINNED_3,
        enrolled=True,
    ),
    "event_splits_v10": Scenario(
        "as event_splits_v8, behaviour 3: the form-data split reads the stored submission in a "
        "local activity",
        ["crm_in_worker.form_data_from_store"],
        event_splits_flow,
        drive=submit_stored_and_click,
        enrollment=PINNED_3,
    ),
    "excluded_at_crm_step_v10": Scenario(
        "as excluded_at_crm_step_v4, behaviour 3: the local add_to_list finds the contact on the "
        "exclusion list at the step's entry: nothing changed, dropped out with the reason",
        ["crm_in_worker.checks_at_crm_step"],
        excluded_flow,
        enrollment=PINNED_3,
        enrolled=True,
    ),
    "holidays_and_recipient_clock_v10": Scenario(
        "as holidays_and_recipient_clock_v8, behaviour 3: the contact's time zone read in a "
        "local activity",
        ["crm_in_worker.recipient_clock"],
        calendar_and_clock_flow,
        drive=karin_lives_in_new_york,
        enrollment=PINNED_3,
    ),
    "crm_steps_v10": Scenario(
        "as crm_steps_v8, behaviour 3: every CRM step's change (and its entry record and checks) "
        "in a local activity; the announcements and the script child as before",
        ["crm_in_worker.crm_steps"],
        crm_steps_flow,
        enrollment=PINNED_3,
        enrolled=True,
    ),
    "holidays_and_recipient_clock": Scenario(
        "a flow with a holiday calendar and the recipient's clock: a working-day wait over a "
        "closed date, the contact's time zone read once (find_time_zone, behind recipient-clock) "
        "from a field, the sending window and a wait until a local time on the contact's clock, "
        "a meeting a working day later (Karin's time zone is New York from here on)",
        ["holidays.working_days", "recipient_clock"],
        calendar_and_clock_flow,
        drive=karin_lives_in_new_york,
    ),
}


# --- recording ---------------------------------------------------------------------------------


class BouncingHandler(MaildirHandler):
    """The SMTP inbox, hard-bouncing one address at RCPT."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        del server, session, options
        if address == BOUNCING:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def runs_of(client: Client, workflow_id: str, first_run: str) -> list[WorkflowHistory]:
    """Every run's history, following continue-as-new from the first run."""
    histories: list[WorkflowHistory] = []
    run_id: str | None = first_run
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return histories


def script_children(history: WorkflowHistory) -> list[str]:
    return [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]


async def record(
    env: WorkflowEnvironment,
    engine: Engine,
    peers: Peers,
    smtp: SmtpSettings,
    name: str,
    scenario: Scenario,
) -> list[tuple[str, WorkflowHistory]]:
    task_queue = f"record-{uuid.uuid4()}"
    now = await env.get_current_time()
    activities = activities_for(
        engine, smtp, twilio_settings(peers.twilio), sending=scenario.sending
    )
    flow_now = scenario.flow(now)
    async with build_worker(
        env.client, engine, task_queue=task_queue, activities=activities, sending=scenario.sending
    ):
        handle: Handle = await env.client.start_workflow(
            ParticipantWorkflow.run,
            Enrollment(
                flow=flow_now,
                flow_version=1,
                contact_id=scenario.contact_id,
                **scenario.enrollment,
            ),
            id=f"flow-recorded-contact-{scenario.contact_id}-{name}",
            task_queue=task_queue,
            search_attributes=sa.at_start(
                flow_now,
                1,
                scenario.contact_id,
                paused=bool(scenario.enrollment.get("paused", False)),
            )
            if scenario.enrolled
            else None,
        )
        if scenario.drive is not None:
            # Signals and queries go to the newest run (continue-as-new makes new ones).
            latest = env.client.get_workflow_handle_for(ParticipantWorkflow.run, handle.id)
            await scenario.drive(latest, peers)
        try:
            # Awaiting the result lets the server skip time to each timer.
            state = await handle.result()
            print(f"  {name}: {state.status.value}; {[(v.step, v.outcome) for v in state.trail]}")
        except Exception as error:
            if not scenario.cancelled:
                raise
            print(f"  {name}: {type(error).__name__} (ended)")
        assert handle.result_run_id is not None
        histories = await runs_of(
            env.client, handle.id, handle.first_execution_run_id or handle.result_run_id
        )
        children = [
            (child, await env.client.get_workflow_handle(child).result())
            for run in histories
            for child in script_children(run)
        ]
        recorded: list[tuple[str, WorkflowHistory]] = []
        for index, history in enumerate(histories):
            suffix = f"_run{index + 1}" if len(histories) > 1 else ""
            recorded.append((f"{name}{suffix}", history))
        for index, (child, _) in enumerate(children):
            history = await env.client.get_workflow_handle(child).fetch_history()
            recorded.append((f"{name}_script{index + 1}", history))
    peers.twilio.reset()
    return recorded


def load_manifest() -> dict[str, Any]:
    if MANIFEST.exists():
        manifest: dict[str, Any] = json.loads(MANIFEST.read_text())
        return manifest
    return {"required": [], "histories": []}


async def main(only: list[str]) -> None:
    HISTORIES.mkdir(exist_ok=True)
    manifest = load_manifest()
    known = {entry["scenario"] for entry in manifest["histories"]}
    todo = {n: s for n, s in SCENARIOS.items() if n not in known and (not only or n in only)}
    if not todo:
        print("every scenario is recorded already; histories are never overwritten")
        return
    env = await start_time_skipping_server()
    with tempfile.TemporaryDirectory() as folder:
        engine = get_engine(f"sqlite:///{folder}/record.db")
        create_tables(engine)
        with session(engine) as db:
            seed_demo(db)
        port = free_port()
        controller = Controller(
            BouncingHandler(Path(folder) / "mail"), hostname="127.0.0.1", port=port
        )
        controller.start()
        smtp = SmtpSettings(host="127.0.0.1", port=port)
        try:
            with running_twilio_api() as twilio:
                for name, scenario in todo.items():
                    peers = Peers(env, twilio, engine)
                    recorded = await record(env, engine, peers, smtp, name, scenario)
                    files = []
                    for stem, history in recorded:
                        path = HISTORIES / f"{stem}.json"
                        if path.exists():
                            raise SystemExit(f"{path} exists: histories are never overwritten")
                        path.write_text(history.to_json())
                        files.append(path.name)
                        print(f"recorded {path} ({len(history.events)} events)")
                    manifest["histories"].append(
                        {
                            "scenario": name,
                            "files": files,
                            "recorded": datetime.now(UTC).date().isoformat(),
                            "description": scenario.description,
                            "covers": scenario.covers,
                        }
                    )
                    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
        finally:
            controller.stop()
            engine.dispose()
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
