"""A form's and a tracked link's own actions run when it is submitted or clicked, once per event:
also when the first delivery was cut short and the sweep delivers it, when two sweeps run at
once, and when the same event comes in again (dev server, both databases)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import starter
from control.enrollment import enroll
from control.ingest import carry_out_actions, ingest, record_event, sweep
from control.own_actions import ACTIONS_KEY
from models.crm import (
    Associate,
    Contact,
    FollowUp,
    Form,
    Project,
    ProjectMember,
    Request,
    Selection,
    SelectionMember,
    TrackedLink,
)
from models.database import session
from models.demo import DEMO_FORM_ID, VIP_SELECTION_ID
from models.engine import CrmEvent, ParticipantStatus, find_event
from models.events import EventKind, FlowEvent
from models.ledger import DeliveryStatus
from models.participant import participant_workflow_id
from testkit.peers import Inbox
from tests.test_events import (
    DONE,
    LARS,
    WAIT,
    event_of,
    flow_document,
    participant_status,
    running_flow,
    signals,
    starter_here,
    worker,
)
from tracking.delivery import Delivery
from worker import activities_for, build_worker
from workflows.reply import ReplyWorkflow

__all__ = ["starter_here", "worker"]  # the fixtures, from the events tests


PRICING_REQUEST = {
    "title": "Pricing for [[company.name]]",
    "request_type": "Customer success",
    "status": "Open",
    "category": "Account management",
    "priority": "High",
}


def _add(engine: Engine, row: Any) -> int:
    with session(engine) as db:
        db.add(row)
        db.flush()
        assert row.id is not None
        return int(row.id)


def _members(engine: Engine, selection_id: int) -> list[int]:
    with session(engine) as db:
        return list(
            db.exec(
                select(SelectionMember.contact_id).where(
                    SelectionMember.selection_id == selection_id
                )
            ).all()
        )


def _events(engine: Engine, kind: EventKind) -> list[CrmEvent]:
    with session(engine) as db:
        return list(db.exec(select(CrmEvent).where(CrmEvent.kind == kind.value)).all())


def _contact(engine: Engine, contact_id: int) -> Contact:
    with session(engine) as db:
        contact = db.get(Contact, contact_id)
        assert contact is not None
        db.expunge(contact)
        return contact


async def _recorded(engine: Engine, event: FlowEvent) -> FlowEvent:
    assert await asyncio.to_thread(record_event, engine, event)
    return event


async def _unreachable_temporal() -> Client:
    """A client whose server is gone: its first call fails to connect, as while the engine is
    down."""
    return await Client.connect("127.0.0.1:9", lazy=True, data_converter=pydantic_data_converter)


@pytest.mark.usefixtures("worker")
async def test_a_submission_runs_its_forms_actions_once_also_when_cut_short_and_swept(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    guests = _add(engine, Selection(name="Webinar guests"))
    with session(engine) as db:
        anna = db.exec(select(Associate.id).where(Associate.name == "Anna Lindqvist")).one()
    form_id = _add(
        engine,
        Form(
            name="Pricing request",
            actions=[
                {"kind": "add_to_selection", "selection_id": guests},
                {"kind": "add_interest", "interest": "Pricing"},
                {"kind": "set_extra_field", "field": "x_vip", "value": "true"},
                {"kind": "create_request", "request": PRICING_REQUEST},
                {
                    "kind": "create_follow_up",
                    "follow_up": {
                        "title": "Call [[customer.firstname]]",
                        "follow_up_type": "Call",
                        "owner": {"kind": "associate", "associate_id": anna},
                    },
                },
            ],
        ),
    )
    # Lars is waiting in a flow: delivering his events means signalling it.
    waiting = running_flow(engine, flow_document("actions-wait", [WAIT, DONE]))
    await enroll(client, engine, waiting, [LARS], task_queue=task_queue)
    await participant_status(engine, waiting, LARS, ParticipantStatus.active.value)

    # The engine is down: the form is recorded, and nothing is done yet.
    submission = event_of(EventKind.form_submitted, LARS, form_id=form_id)
    assert await Delivery(engine, None, task_queue=task_queue).take_in(submission, wait=1)
    assert _members(engine, guests) == []

    # A delivery that carries out the actions and then cannot reach Temporal gives its claim
    # back: the event stays undelivered, the changes are made and recorded.
    with pytest.raises(RuntimeError, match="connect"):
        await ingest(await _unreachable_temporal(), engine, submission, task_queue=task_queue)
    assert _members(engine, guests) == [LARS]
    lars = _contact(engine, LARS)
    assert lars.interests.count("Pricing") == 1 and lars.extra_fields["x_vip"] is True
    with session(engine) as db:
        row = find_event(db, submission.event_id)
        assert row is not None and row.delivered_at is None
        done = row.payload[ACTIONS_KEY]
    assert done["outcomes"] == [
        f"selection {guests}: added",
        "interests: ['Integrations'] → ['Integrations', 'Pricing']",
        "extra.x_vip: None → True",
        *done["outcomes"][3:],
    ]
    request_outcome, follow_up_outcome = done["outcomes"][3:]
    assert request_outcome.startswith("request #") and "'Pricing for [[company.name]]'" in (
        request_outcome
    )
    assert (
        follow_up_outcome.startswith("to-do #")
        and "'Call [[customer.firstname]]'" in follow_up_outcome
    )

    # Meanwhile a user takes Lars out of the selection again: carrying the actions out a second
    # time would put him back.
    with session(engine) as db:
        member = db.exec(
            select(SelectionMember).where(SelectionMember.selection_id == guests)
        ).one()
        db.delete(member)

    # The engine is back: two sweeps at once, then the same submission twice more.
    swept = await asyncio.gather(
        sweep(client, engine, task_queue=task_queue),
        sweep(client, engine, task_queue=task_queue),
    )
    assert sum(swept) == 1
    for _ in range(2):
        again = await ingest(client, engine, submission, task_queue=task_queue)
        assert not again.delivered and again.actions == []

    assert _members(engine, guests) == []
    assert _contact(engine, LARS).interests.count("Pricing") == 1
    # One request and one follow-up, whatever the number of deliveries and sweeps.
    with session(engine) as db:
        [request] = db.exec(select(Request).where(Request.contact_id == LARS)).all()
        [follow_up] = db.exec(select(FollowUp).where(FollowUp.contact_id == LARS)).all()
        assert request.title == "Pricing for Nordljus AB" and request.priority == "High"
        assert follow_up.title == "Call Lars" and follow_up.owner_id == anna
    [created] = _events(engine, EventKind.request_created)
    [booked] = _events(engine, EventKind.follow_up_created)
    assert created.event_id == f"{submission.event_id}/actions/3/request_created"
    assert booked.event_id == f"{submission.event_id}/actions/4/follow_up_created"
    assert created.delivered_at is not None and booked.delivered_at is not None
    [joined] = [
        e
        for e in _events(engine, EventKind.added_to_selection)
        if e.payload["selection_id"] == guests
    ]
    [updated] = [
        e
        for e in _events(engine, EventKind.contact_updated)
        if e.event_id.startswith(submission.event_id)
    ]
    assert joined.event_id == f"{submission.event_id}/actions/0/joined"
    assert updated.payload["fields"] == ["interests", "extra.x_vip"]
    # The changes were announced like any CRM change, before the submission itself.
    assert joined.delivered_at is not None and updated.delivered_at is not None
    found = await signals(client, participant_workflow_id(waiting, LARS))
    assert [event_id for _, event_id in found] == [
        joined.event_id,
        created.event_id,
        booked.event_id,
        updated.event_id,
        submission.event_id,
    ]


@pytest.mark.usefixtures("worker")
async def test_a_click_runs_its_links_actions_and_an_unknown_list_is_reported(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    project = _add(engine, Project(name="Autumn fair"))
    url = "https://www.example.com/autumn-fair"
    with session(engine) as db:
        db.add(
            TrackedLink(
                name="Autumn fair",
                url=url,
                actions=[
                    {"kind": "add_to_project", "project_id": project},
                    {"kind": "remove_interest", "interest": "Integrations"},
                    {"kind": "add_to_selection", "selection_id": 9999},
                ],
            )
        )
    report = await ingest(
        client, engine, event_of(EventKind.link_clicked, LARS, link=url), task_queue=task_queue
    )
    assert report.actions == [
        f"link {url!r} ('Autumn fair'): project {project}: added",
        f"link {url!r} ('Autumn fair'): interests: ['Integrations'] → []",
        f"link {url!r} ('Autumn fair'): add_to_selection: selection 9999 does not exist",
    ]
    with session(engine) as db:
        assert db.exec(
            select(ProjectMember.contact_id).where(ProjectMember.project_id == project)
        ).all() == [LARS]
    assert "Integrations" not in _contact(engine, LARS).interests

    # A click on a link the CRM does not define does nothing of the kind.
    other = event_of(EventKind.link_clicked, LARS, link="https://www.example.com/elsewhere")
    assert (await ingest(client, engine, other, task_queue=task_queue)).actions == []
    assert len(_events(engine, EventKind.added_to_project)) == 1


@pytest.mark.usefixtures("worker")
async def test_a_forms_script_runs_once_in_a_script_workflow_of_its_own(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    form_id = _add(
        engine,
        Form(name="Portal", actions=[{"kind": "run_script", "script": "sync_webinar_attendee"}]),
    )
    submission = event_of(EventKind.form_submitted, LARS, form_id=form_id)
    first = await carry_out_actions(
        client, engine, await _recorded(engine, submission), task_queue=task_queue
    )
    assert first == [f"form {form_id} ('Portal'): script 'sync_webinar_attendee' started"]
    handle = client.get_workflow_handle(f"script-{submission.event_id}/actions/0")
    assert await handle.result() == f"synced contact {LARS}"
    ran = (await handle.describe()).run_id
    # A second run for the same event (a delivery cut short after the first) starts no other.
    again = await carry_out_actions(client, engine, submission, task_queue=task_queue)
    assert again == first
    assert (await handle.describe()).run_id == ran


@pytest.mark.usefixtures("worker", "starter_here")
async def test_the_starter_says_what_the_forms_actions_did(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["event", "form_submitted", "--contact", str(LARS), "--form", str(DEMO_FORM_ID)]
    assert await asyncio.to_thread(starter.main, args) == 0
    out = capsys.readouterr().out
    assert (
        f"  form {DEMO_FORM_ID} ('Webinar sign-up'): selection {VIP_SELECTION_ID}: added\n" in out
    )
    assert _members(engine, VIP_SELECTION_ID) == [LARS]


async def test_a_forms_reply_reaches_the_submitters_inbox_once(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, smtp_inbox: Inbox
) -> None:
    client = dev_env.client
    reply = {
        "from": {"address": "events@example.com", "name": "Events"},
        "subject": "Your brochure, [[customer.firstname]]",
        "text": "Here it is.",
    }
    form_id = _add(
        engine,
        Form(name="Brochure", actions=[{"kind": "send_reply_email", "reply": reply}]),
    )
    submission = event_of(EventKind.form_submitted, LARS, form_id=form_id)
    activities = activities_for(engine, smtp_inbox.settings)
    async with build_worker(client, engine, task_queue=task_queue, activities=activities):
        # Cut short after the actions were carried out: the reply is not sent from ingest.
        assert await _recorded(engine, submission)
        with pytest.raises(RuntimeError, match="connect"):
            await ingest(await _unreachable_temporal(), engine, submission, task_queue=task_queue)
        assert smtp_inbox.count() == 0
        # Two sweeps at once, then the same submission twice more.
        await asyncio.gather(
            sweep(client, engine, task_queue=task_queue),
            sweep(client, engine, task_queue=task_queue),
        )
        for _ in range(2):
            await ingest(client, engine, submission, task_queue=task_queue)
        handle = client.get_workflow_handle_for(
            ReplyWorkflow.run, f"reply-{submission.event_id}/actions/0"
        )
        outcome = await handle.result()
        assert outcome.status is DeliveryStatus.sent
        ran = (await handle.describe()).run_id
        report = await carry_out_actions(client, engine, submission, task_queue=task_queue)
        assert report == [
            f"form {form_id} ('Brochure'): reply email {reply['subject']!r} to be sent"
        ]
        assert (await handle.describe()).run_id == ran
    [message] = smtp_inbox.messages()
    assert message.subject == "Your brochure, Lars"
    assert "lars.nilsson@example.com" in message.recipients and "events@example.com" in (
        message.sender
    )


async def test_a_reply_follows_the_consent_rules_of_email_to_contacts(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, smtp_inbox: Inbox
) -> None:
    client = dev_env.client
    reply = {"from": {"address": "events@example.com"}, "subject": "Thanks", "text": "Noted."}
    form_id = _add(
        engine, Form(name="Callback", actions=[{"kind": "send_reply_email", "reply": reply}])
    )
    with session(engine) as db:
        lars = db.get(Contact, LARS)
        assert lars is not None
        lars.no_mailings = True
        db.add(lars)
    submission = event_of(EventKind.form_submitted, LARS, form_id=form_id)
    activities = activities_for(engine, smtp_inbox.settings)
    async with build_worker(client, engine, task_queue=task_queue, activities=activities):
        await ingest(client, engine, submission, task_queue=task_queue)
        handle = client.get_workflow_handle_for(
            ReplyWorkflow.run, f"reply-{submission.event_id}/actions/0"
        )
        outcome = await handle.result()
    assert outcome.status is DeliveryStatus.skipped and outcome.detail == "marked no mailings"
    assert smtp_inbox.count() == 0
