"""Update-participant and create-activity steps through the participant workflow, on the
time-skipping server and a real database: update_contact, distribute_to_owner, create_follow_up,
create_request, create_sale, and the CRM events they record."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.contacts import ContactActivities, ContactUpdate
from activities.crm import CrmActivities, ListChange
from activities.participants import ParticipantRecord
from activities.records import RecordActivities, SaleCreation
from control.flows import FlowRejected, deploy_flow, read_document
from control.histories import local_activity
from models.crm import (
    Associate,
    Company,
    Contact,
    FollowUp,
    Notification,
    Request,
    Sale,
    SelectionMember,
)
from models.database import session
from models.demo import DEMO_PROJECT_ID, DEMO_SELECTION_ID, VIP_SELECTION_ID
from models.engine import CrmEvent, OwnerShare, Participant, ParticipantStatus, StepChange
from models.flow import CreateSale
from models.participant import Enrollment, ParticipantState, participant_workflow_id
from testkit.histories import scheduled_activities
from tests.test_message_steps import contact_named, entry_record, replacing
from tests.test_participant import STOCKHOLM, flow_of, next_weekday, start
from worker import activities_for, build_worker
from workflows.participant import ParticipantWorkflow
from workflows.steps import CRM_IN_WORKER

# --- helpers -----------------------------------------------------------------------------------

RESULT_TIMEOUT = 60  # seconds of real time for one participant


def associate_named(engine: Engine, first_name: str) -> int:
    with session(engine) as db:
        found = db.exec(select(Associate).where(col(Associate.name).startswith(first_name))).one()
    assert found.id is not None
    return found.id


async def run(
    env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    steps: list[dict[str, Any]],
    contacts: list[int],
    activities: list[Callable[..., Any]] | None = None,
    **settings: Any,
) -> list[ParticipantState]:
    """One participant per contact, one after the other, through ``steps`` then finish."""
    flow = flow_of([*steps, {"id": "done", "type": "finish"}], **settings)
    states: list[ParticipantState] = []
    async with build_worker(env.client, engine, task_queue=task_queue, activities=activities):
        for contact_id in contacts:
            handle = await start(env, task_queue, flow, contact_id)
            # A workflow task that keeps failing would wait forever: fail the test instead.
            states.append(await asyncio.wait_for(handle.result(), RESULT_TIMEOUT))
    return states


def outcome(state: ParticipantState, step_id: str) -> str:
    return next(v.outcome for v in state.trail if v.step == step_id)


def events(engine: Engine, kind: str) -> list[CrmEvent]:
    with session(engine) as db:
        return list(
            db.exec(select(CrmEvent).where(CrmEvent.kind == kind).order_by(col(CrmEvent.id)))
        )


def fail_once_after(
    name: str, request_type: type[Any], real: Callable[[Any], StepChange]
) -> Callable[..., Any]:
    """The real activity, whose first attempt fails after it committed: as if the worker died
    before reporting back. Temporal then retries it."""
    attempts: list[StepChange] = []

    def wrapper(request: Any) -> StepChange:
        result = real(request)
        attempts.append(result)
        if len(attempts) == 1:
            raise RuntimeError("worker lost after the commit")
        return result

    wrapper.__name__ = name
    wrapper.__annotations__ = {"request": request_type, "return": StepChange}
    return activity.defn(name=name)(wrapper)


# --- update_contact ----------------------------------------------------------------------------


async def test_update_contact_applies_the_ticked_rows(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    karin, james = contact_named(engine, "Karin"), associate_named(engine, "James")
    rows: list[dict[str, Any]] = [
        {"field": "first_name", "action": "regex_replace", "find": r"^K(\w+)", "value": r"C\1"},
        {"field": "title", "action": "replace", "find": "manager", "value": "Director"},
        {"field": "emails", "action": "add", "value": "karin@nordljus.example"},
        {"field": "phones", "action": "remove", "value": "+46812345601"},
        {"field": "interests", "action": "add", "value": ["webinars", "Durable workflows"]},
        {"field": "subscriptions", "action": "remove", "value": "newsletter"},
        {
            "field": "consents",
            "action": "add",
            "value": {"purpose": "sms", "legal_basis": "consent", "source": "flow"},
        },
        {"field": "no_mailings", "action": "check"},
        {"field": "user_defined.webinar_attended", "action": "toggle"},
        {"field": "user_defined.score", "action": "set", "value": 90},
        {"field": "user_defined.birthday", "action": "clear"},
        {"field": "extra.x_last_webinar", "action": "set", "value": "2026-05-20"},
        {"field": "category", "action": "select", "value": "Customer"},
        {"field": "our_service_contact_id", "action": "select", "value": james},
        {"target": "company", "field": "category", "action": "select", "value": "Partner"},
        {"field": "last_name", "action": "set", "value": "Unticked", "enabled": False},
        {"field": "department", "action": "set", "value": "Marketing"},  # already so
    ]
    step = {"id": "update", "type": "update_contact", "next": "done", "rows": rows}
    (state,) = await run(time_skipping_env, engine, task_queue, [step], [karin])

    assert state.status is ParticipantStatus.finished
    with session(engine) as db:
        contact = db.get(Contact, karin)
        assert contact is not None and contact.company_id is not None
        company = db.get(Company, contact.company_id)
    assert company is not None
    assert (contact.first_name, contact.last_name) == ("Carin", "Svensson")
    assert contact.title == "Marketing Director"
    assert contact.emails == ["karin@example.org", "karin@nordljus.example"]
    assert contact.phones == []
    assert contact.interests == ["Webinars", "Product news", "Durable workflows"]
    assert contact.subscriptions == []
    assert [c["purpose"] for c in contact.consents] == ["emarketing", "sms"]
    assert contact.no_mailings is True
    assert contact.user_defined == {"score": 90, "webinar_attended": True}
    assert contact.extra_fields == {"x_lead_source": "webinar", "x_last_webinar": "2026-05-20"}
    assert (contact.category, contact.our_service_contact_id) == ("Customer", james)
    assert company.category == "Partner"

    (event,) = events(engine, "contact_updated")
    assert event.contact_id == karin
    assert event.payload["flow_id"] == "test-flow" and event.payload["step_id"] == "update"
    assert event.payload["fields"] == [
        "first_name",
        "title",
        "emails",
        "phones",
        "interests",
        "subscriptions",
        "consents",
        "no_mailings",
        "user_defined.webinar_attended",
        "user_defined.score",
        "user_defined.birthday",
        "extra.x_last_webinar",
        "category",
        "our_service_contact_id",
        "company.category",
    ]
    assert outcome(state, "update") == event.payload["outcome"]
    # The history keeps the change masked: the CRM holds the values.
    assert "first_name: 'K…' → 'C…'" in outcome(state, "update")
    assert "Karin" not in outcome(state, "update")


async def test_update_contact_retried_after_commit_applies_once(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    maja = contact_named(engine, "Maja")
    rows = [
        {"field": "user_defined.webinar_attended", "action": "toggle"},
        {"field": "user_defined.score", "action": "set", "value": 1},
    ]
    step = {"id": "update", "type": "update_contact", "next": "done", "rows": rows}
    real = ContactActivities(engine).update_contact
    retried = fail_once_after("update_contact", ContactUpdate, real)
    activities = replacing(activities_for(engine), retried)
    (state,) = await run(time_skipping_env, engine, task_queue, [step], [maja], activities)

    with session(engine) as db:
        contact = db.get(Contact, maja)
    assert contact is not None
    # Toggled once: a second application would have toggled it back.
    assert contact.user_defined == {"webinar_attended": True, "score": 1}
    assert len(events(engine, "contact_updated")) == 1
    assert outcome(state, "update") == (
        "user_defined.webinar_attended: None → True; user_defined.score: None → 1"
    )
    # Run directly again with the same key, as a third attempt would: the same answer.
    update = ContactUpdate(
        event_key=events(engine, "contact_updated")[0].event_id.removesuffix("/contact_updated"),
        flow_id="test-flow",
        step_id="update",
        contact_id=maja,
        rows=[],
    )
    again = real(update)
    assert again.outcome == outcome(state, "update")
    assert (
        again.event is not None
        and again.event.event_id == events(engine, "contact_updated")[0].event_id
    )


async def test_update_contact_notes_rows_it_cannot_apply(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    charlotte = contact_named(engine, "Charlotte")  # no company
    rows = [
        {"target": "company", "field": "category", "action": "select", "value": "Partner"},
        {"field": "our_contact_id", "action": "select", "value": 999},
    ]
    step = {"id": "update", "type": "update_contact", "next": "done", "rows": rows}
    (state,) = await run(time_skipping_env, engine, task_queue, [step], [charlotte])
    assert outcome(state, "update") == (
        "no changes; row 0 skipped: the contact has no company; "
        "row 1 skipped: associate 999 does not exist"
    )
    assert events(engine, "contact_updated") == []


# --- distribute_to_owner -----------------------------------------------------------------------


def owners(engine: Engine, contact_ids: list[int]) -> dict[int, int | None]:
    with session(engine) as db:
        return {c: db.get(Contact, c).our_contact_id for c in contact_ids}  # type: ignore[union-attr]


def notified(engine: Engine) -> list[tuple[int, str]]:
    with session(engine) as db:
        rows = db.exec(select(Notification).order_by(col(Notification.id))).all()
    return [(n.associate_id, n.subject) for n in rows]


async def test_distribute_spreads_over_available_associates_and_notifies(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    anna, erik, james = (associate_named(engine, n) for n in ("Anna", "Erik", "James"))
    unassigned = [contact_named(engine, n) for n in ("Lars", "Oliver", "Maja", "Charlotte")]
    karin = contact_named(engine, "Karin")  # owned by Anna already
    step = {
        "id": "assign",
        "type": "distribute_to_owner",
        "next": "done",
        "associate_ids": [james, erik, anna],  # Erik is absent
    }
    states = await run(time_skipping_env, engine, task_queue, [step], [*unassigned, karin])

    # Fewest first, ties to the lowest id: Anna, James, Anna, James; Erik never.
    expected = [anna, james, anna, james]
    assert owners(engine, unassigned) == dict(zip(unassigned, expected, strict=True))
    assert outcome(states[0], "assign") == "owner Anna Lindqvist (next in turn)"
    assert owners(engine, [karin]) == {karin: anna}
    assert outcome(states[-1], "assign") == "already owned by Anna Lindqvist: left as it is"
    assert [a for a, _ in notified(engine)] == [anna, james, anna, james]
    assert notified(engine)[0][1] == "New contact: Lars Nilsson"
    assert [e.contact_id for e in events(engine, "contact_updated")] == unassigned
    with session(engine) as db:
        shares = {s.associate_id: s.assigned for s in db.exec(select(OwnerShare))}
    assert shares == {anna: 2, james: 2}


async def test_distribute_overwrites_uses_user_groups_and_falls_back(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    anna, erik, james, sofia = (
        associate_named(engine, n) for n in ("Anna", "Erik", "James", "Sofia")
    )
    karin, emily = contact_named(engine, "Karin"), contact_named(engine, "Emily")
    lars, oliver = contact_named(engine, "Lars"), contact_named(engine, "Oliver")
    with session(engine) as db:
        sales = db.get(Associate, anna).user_group_id  # type: ignore[union-attr]
    steps: list[dict[str, Any]] = [
        {  # Sales: Anna, Erik (absent) and Sofia (an extra member); owners are replaced
            "id": "sales",
            "type": "distribute_to_owner",
            "next": "absent",
            "user_group_id": sales,
            "only_if_unassigned": False,
        },
        {  # nobody available: the fallback takes it
            "id": "absent",
            "type": "distribute_to_owner",
            "next": "nobody",
            "associate_ids": [erik],
            "only_if_unassigned": False,
            "fallback_associate_id": james,
        },
        {  # nobody available and no fallback: unchanged
            "id": "nobody",
            "type": "distribute_to_owner",
            "next": "done",
            "associate_ids": [erik],
            "only_if_unassigned": False,
        },
    ]
    states = await run(time_skipping_env, engine, task_queue, steps, [karin, emily, lars, oliver])
    assert [outcome(s, "sales") for s in states] == [
        "owner Anna Lindqvist (next in turn)",
        "owner Sofia Berg (next in turn)",
        "owner Anna Lindqvist (next in turn)",
        "owner Sofia Berg (next in turn)",
    ]
    assert {outcome(s, "absent") for s in states} == {
        "owner James Carter (fallback: no one available)"
    }
    assert {outcome(s, "nobody") for s in states} == {
        "no one available and no fallback: owner unchanged"
    }
    assert set(owners(engine, [karin, emily, lars, oliver]).values()) == {james}
    # One notification per assignment: four from the group, four to the fallback.
    assert sorted(a for a, _ in notified(engine)) == sorted([anna, sofia] * 2 + [james] * 4)


# --- create_follow_up --------------------------------------------------------------------------


def stockholm(day: datetime, clock: time) -> datetime:
    return datetime.combine(day.date(), clock).replace(tzinfo=STOCKHOLM)


async def test_a_meeting_at_the_first_free_time_across_the_weekend_and_around_meetings(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    friday = await next_weekday(time_skipping_env, 4, 15, 45)
    monday = friday + timedelta(days=3)
    karin, anna = contact_named(engine, "Karin"), associate_named(engine, "Anna")
    with session(engine) as db:
        for day, begin, end in (
            (friday, time(16, 0), time(17, 0)),
            (monday, time(8, 0), time(9, 0)),
            (monday, time(9, 15), time(10, 0)),
        ):
            db.add(
                FollowUp(
                    contact_id=karin,
                    owner_id=anna,
                    kind="meeting",
                    title="Busy",
                    starts_at=stockholm(day, begin),
                    ends_at=stockholm(day, end),
                )
            )
    step = {
        "id": "meet",
        "type": "create_follow_up",
        "next": "follow-up",
        "title": "Intro with [[customer.fullname]]",
        "follow_up_type": "Meeting",
        "kind": "meeting",
        "project_id": DEMO_PROJECT_ID,
        "agenda": "<p>[[customer.fullname]] of [[company.name]]</p>",
        "duration_minutes": 30,
        "owner": {"kind": "our_contact"},
    }
    later = {  # first free time a week after this step ran (a moment after 15:45): 16:00
        **step,
        "id": "follow-up",
        "next": "done",
        "title": "Follow-up",
        "after": {"amount": 1, "unit": "weeks"},
    }
    (state,) = await run(
        time_skipping_env,
        engine,
        task_queue,
        [step, later],
        [karin],
        scheduled_start=friday.isoformat(),
    )
    with session(engine) as db:
        meeting = db.exec(select(FollowUp).where(col(FollowUp.title).startswith("Intro"))).one()
        follow_up = db.exec(select(FollowUp).where(FollowUp.title == "Follow-up")).one()
    assert follow_up.starts_at is not None
    next_friday = friday + timedelta(days=7)
    assert follow_up.starts_at.astimezone(STOCKHOLM) == stockholm(next_friday, time(16, 0))
    assert meeting.starts_at is not None and meeting.ends_at is not None
    assert meeting.starts_at.astimezone(STOCKHOLM) == stockholm(monday, time(10, 0))
    assert meeting.ends_at - meeting.starts_at == timedelta(minutes=30)
    assert (meeting.owner_id, meeting.kind, meeting.type) == (anna, "meeting", "Meeting")
    assert meeting.title == "Intro with Karin Svensson"
    assert meeting.agenda == "<p>Karin Svensson of Nordljus AB</p>"
    assert meeting.project_id == DEMO_PROJECT_ID
    # The record's id and the step's title, not the title filled in with the contact's name.
    assert outcome(state, "meet").startswith(
        f"meeting #{meeting.id} 'Intro with [[customer.fullname]]' for Anna Lindqvist at Mon"
    )
    assert notified(engine) == [
        (anna, "New meeting: Intro with Karin Svensson"),
        (anna, "New meeting: Follow-up"),
    ]
    event = events(engine, "follow_up_created")[0]
    assert event.payload["follow_up_id"] == meeting.id
    assert event.payload["follow_up_kind"] == "meeting"


async def test_a_todo_after_working_days_and_owners_that_are_missing(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    friday = await next_weekday(time_skipping_env, 4, 10, 0)
    karin, james = contact_named(engine, "Karin"), associate_named(engine, "James")
    steps: list[dict[str, Any]] = [
        {
            "id": "call",
            "type": "create_follow_up",
            "title": "Call [[customer.firstname]]",
            "follow_up_type": "Phone",
            "after": {"amount": 3, "unit": "working_days"},
            "owner": {"kind": "associate", "associate_id": james},
            "next": "today",
        },
        {  # no "after": due today, for the contact's our contact
            "id": "today",
            "type": "create_follow_up",
            "next": "service",
            "title": "Send the slides",
            "follow_up_type": "Email",
        },
        {  # Karin has no our service contact
            "id": "service",
            "type": "create_follow_up",
            "next": "ghost",
            "title": "Check in",
            "follow_up_type": "Phone",
            "owner": {"kind": "our_service_contact"},
        },
        {
            "id": "ghost",
            "type": "create_follow_up",
            "next": "done",
            "title": "Check in",
            "follow_up_type": "Phone",
            "owner": {"kind": "associate", "associate_id": 999},
        },
    ]
    (state,) = await run(
        time_skipping_env, engine, task_queue, steps, [karin], scheduled_start=friday.isoformat()
    )
    with session(engine) as db:
        todo, today = db.exec(select(FollowUp).order_by(col(FollowUp.id))).all()
    wednesday = friday + timedelta(days=5)
    assert todo.starts_at is not None
    assert todo.starts_at.astimezone(STOCKHOLM) == stockholm(wednesday, time(0, 0))
    assert (todo.kind, todo.owner_id, todo.title, todo.ends_at) == (
        "todo",
        james,
        "Call Karin",
        None,
    )
    assert outcome(state, "call") == (
        f"to-do #{todo.id} 'Call [[customer.firstname]]' for James Carter due "
        f"{wednesday.date().isoformat()}"
    )
    assert (
        outcome(state, "service") == "no follow-up created: the contact has no our service contact"
    )
    assert outcome(state, "ghost") == "no follow-up created: associate 999 does not exist"
    assert today.starts_at is not None
    assert today.starts_at.astimezone(STOCKHOLM) == stockholm(friday, time(0, 0))
    assert today.owner_id == associate_named(engine, "Anna")  # Karin's our contact
    assert notified(engine) == [
        (james, "New to-do: Call Karin"),
        (associate_named(engine, "Anna"), "New to-do: Send the slides"),
    ]
    assert state.status is ParticipantStatus.finished


# --- create_request ----------------------------------------------------------------------------


async def test_requests_assigned_by_the_rule_named_or_unassigned(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    anna, james, sofia = (associate_named(engine, n) for n in ("Anna", "James", "Sofia"))
    karin, emily = contact_named(engine, "Karin"), contact_named(engine, "Emily")
    with session(engine) as db:
        # James has one open request; Sofia's two are closed, so she has none open.
        db.add(Request(contact_id=karin, owner_id=james, type="Support", status="In progress"))
        db.add(Request(contact_id=karin, owner_id=sofia, type="Support", status="Resolved"))
        db.add(Request(contact_id=karin, owner_id=sofia, type="Support", status="Closed"))
    base: dict[str, Any] = {
        "type": "create_request",
        "title": "Webinar check-in: [[company.name]]",
        "request_type": "Support",
        "status": "Open",
        "category": "General",  # the Support group: James and Sofia
        "priority": "High",
        "message": "<p>[[customer.fullname]] of [[company.name]]</p>",
    }
    steps = [
        {**base, "id": "auto", "next": "named", "owner": "automatic"},
        # Anna is not in the category's group: her request does not change the others' counts.
        {**base, "id": "named", "next": "nobody", "owner": "associate", "associate_id": anna},
        {**base, "id": "nobody", "next": "done", "owner": "unassigned"},
    ]
    first, second = await run(time_skipping_env, engine, task_queue, steps, [karin, emily])

    # Karin's: Sofia (0 open) before James (1 open). Emily's: 1 open each now, a tie: James has
    # the lower id.
    assert re.fullmatch(
        r"request #\d+ 'Webinar check-in: \[\[company.name\]\]' \(General, High\) "
        r"assigned to Sofia Berg",
        outcome(first, "auto"),
    )
    assert outcome(second, "auto").endswith("assigned to James Carter")
    assert outcome(first, "nobody").endswith("unassigned")
    with session(engine) as db:
        made = db.exec(select(Request).where(Request.title != "")).all()
    assert [(r.contact_id, r.owner_id) for r in made] == [
        (karin, sofia),
        (karin, anna),
        (karin, None),
        (emily, james),
        (emily, anna),
        (emily, None),
    ]
    assert outcome(first, "named").endswith("assigned to Anna Lindqvist")
    # Merge tags in the message; values are escaped in its HTML.
    assert made[3].messages[0]["text"] == "<p>Emily Clarke of Harbour &amp; Finch Ltd</p>"
    assert (made[0].type, made[0].status, made[0].priority) == ("Support", "Open", "High")
    assert len(events(engine, "request_created")) == 6


async def test_a_request_the_crm_no_longer_allows_drops_the_participant_with_the_reason(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    step = {
        "id": "ask",
        "type": "create_request",
        "next": "done",
        "title": "Check-in",
        "request_type": "Customer success",
        "status": "Open",
        "category": "Account management",
        "priority": "Critical",  # only Support requests are critical
        "owner": "unassigned",
    }
    (state,) = await run(
        time_skipping_env, engine, task_queue, [step], [contact_named(engine, "Karin")]
    )
    assert state.status is ParticipantStatus.dropped_out
    assert state.drop_out_reason == "request type 'Customer success' has no priority 'Critical'"


# --- create_sale -------------------------------------------------------------------------------


async def test_sales_take_stage_and_date_from_the_type_or_the_step(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    friday = await next_weekday(time_skipping_env, 4, 11, 0)
    karin, emily = contact_named(engine, "Karin"), contact_named(engine, "Emily")
    anna, james = associate_named(engine, "Anna"), associate_named(engine, "James")
    steps: list[dict[str, Any]] = [
        {
            "id": "typed",
            "type": "create_sale",
            "next": "explicit",
            "title": "Flows licence: [[company.name]]",
            "sale_type": "New business",
            "amount": 45000,
            "currency": "SEK",
            "description": "Lead from [[customer.fullname]]",
        },
        {
            "id": "explicit",
            "type": "create_sale",
            "next": "done",
            "title": "Renewal",
            "sale_type": "Renewal",
            "stage": "Negotiation",
            "amount": 1200.5,
            "currency": "EUR",
            "project_id": DEMO_PROJECT_ID,
            "after": {"amount": 2, "unit": "working_days"},
            "owner": {"kind": "our_service_contact"},
        },
    ]
    states = await run(
        time_skipping_env,
        engine,
        task_queue,
        steps,
        [karin, emily],
        scheduled_start=friday.isoformat(),
    )
    with session(engine) as db:
        sales = db.exec(select(Sale).order_by(col(Sale.id))).all()
        emily_company = db.get(Contact, emily).company_id  # type: ignore[union-attr]
    typed, explicit, emily_typed, emily_explicit = sales
    assert (typed.title, typed.stage, typed.owner_id) == (
        "Flows licence: Nordljus AB",
        "Lead",
        anna,
    )
    assert typed.description == "Lead from Karin Svensson"
    assert (typed.amount, typed.currency, typed.company_id) == (45000, "SEK", 1)
    assert typed.estimated_at is not None
    # "New business" estimates 30 days out; the step's own date is 2 working days (Tuesday).
    assert typed.estimated_at.astimezone(STOCKHOLM).date() == (friday + timedelta(days=30)).date()
    assert explicit.estimated_at is not None
    tuesday = friday + timedelta(days=4)
    # The step ran a moment after the scheduled start it was woken at.
    late = explicit.estimated_at.astimezone(STOCKHOLM).replace(tzinfo=None) - tuesday
    assert timedelta(0) <= late < timedelta(seconds=5)
    assert (explicit.stage, explicit.amount, explicit.currency) == ("Negotiation", 1200.5, "EUR")
    assert explicit.project_id == DEMO_PROJECT_ID
    # Karin has no our service contact: the sale is made without an owner, and says so.
    assert explicit.owner_id is None
    assert outcome(states[0], "explicit").endswith(
        "without owner (the contact has no our service contact)"
    )
    assert (emily_typed.owner_id, emily_explicit.owner_id) == (
        james,
        associate_named(engine, "Sofia"),
    )
    assert emily_typed.company_id == emily_company
    assert [e.payload["sale_id"] for e in events(engine, "sale_created")] == [s.id for s in sales]


async def test_a_retried_create_sale_makes_one_sale(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    step = {
        "id": "sell",
        "type": "create_sale",
        "next": "done",
        "title": "Once",
        "sale_type": "New business",
    }
    real = RecordActivities(engine).create_sale
    activities = replacing(
        activities_for(engine), fail_once_after("create_sale", SaleCreation, real)
    )
    (state,) = await run(
        time_skipping_env, engine, task_queue, [step], [contact_named(engine, "Karin")], activities
    )
    with session(engine) as db:
        assert len(db.exec(select(Sale)).all()) == 1
    assert len(events(engine, "sale_created")) == 1
    assert re.match(r"sale #\d+ 'Once' 0 SEK, Lead, estimated", outcome(state, "sell"))


@pytest.mark.parametrize("behaviour", [CRM_IN_WORKER - 1, CRM_IN_WORKER])
async def test_crm_steps_run_in_the_participants_worker_from_their_behaviour(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str, behaviour: int
) -> None:
    """From CRM_IN_WORKER a step's CRM write is a local activity (a marker, no activity task);
    before it, a scheduled one. Either way a write retried after its commit changes once, and
    announcing the change stays on the task queue."""
    steps: list[dict[str, Any]] = [
        {"id": "join", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "sell"},
        {
            "id": "sell",
            "type": "create_sale",
            "next": "done",
            "title": "Once",
            "sale_type": "New business",
        },
        {"id": "done", "type": "finish"},
    ]
    real = RecordActivities(engine).create_sale
    activities = replacing(
        activities_for(engine), fail_once_after("create_sale", SaleCreation, real)
    )
    karin = contact_named(engine, "Karin")
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        handle = await start(
            time_skipping_env, task_queue, flow_of(steps), karin, behaviour=behaviour
        )
        state = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        history = [e async for e in handle.fetch_history_events()]
    assert state.status is ParticipantStatus.finished
    assert outcome(state, "join") == f"selection {VIP_SELECTION_ID}: added"
    with session(engine) as db:
        assert len(db.exec(select(Sale).where(Sale.contact_id == karin)).all()) == 1
    scheduled = [name for name, _ in scheduled_activities(history)]
    local = [found for e in history if (found := local_activity(e)) is not None]
    if behaviour >= CRM_IN_WORKER:
        assert scheduled == ["emit_event"]
        assert [(m["activity_type"], m["attempt"]) for m in local] == [
            ("add_to_list", 1),
            ("create_sale", 2),  # the retry, in the worker: one marker
            ("record_participant", 1),  # as it leaves
        ]
    else:
        assert scheduled == ["add_to_list", "create_sale", "emit_event"]
        assert [m["activity_type"] for m in local] == ["record_participant"]


def sale_creation(
    event_key: str, contact_id: int, record: ParticipantRecord | None = None
) -> SaleCreation:
    """A Renewal sale step's activity input, reached on 6 March 2026 at 10:00 UTC."""
    step = {"id": "sell", "type": "create_sale", "next": "x", "title": "T", "sale_type": "Renewal"}
    return SaleCreation(
        event_key=event_key,
        flow_id="f",
        flow_name="F",
        time_zone="Europe/Stockholm",
        contact_id=contact_id,
        at=datetime(2026, 3, 6, 10, 0, tzinfo=UTC),
        step=CreateSale.model_validate(step),
        record=record,
    )


def test_create_sale_activity_is_idempotent_by_its_key(engine: Engine) -> None:
    records = RecordActivities(engine)
    request = sale_creation("p1/sell/1", contact_named(engine, "Karin"))
    first = records.create_sale(request)
    assert records.create_sale(request) == first  # the same outcome and event, no second sale
    assert first.event is not None and first.event.event_id == "p1/sell/1/sale_created"
    other_visit = records.create_sale(request.model_copy(update={"event_key": "p1/sell/2"}))
    # But a second sale, another visit of the step: its outcome names the new sale.
    assert other_visit.outcome == first.outcome.replace("sale #1 ", "sale #2 ")
    with session(engine) as db:
        assert len(db.exec(select(Sale)).all()) == 2
    assert "estimated 2026-05-01" in first.outcome  # Renewal: 8 weeks


# --- the checks at a CRM step's entry ----------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    [
        {"id": "act", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "done"},
        {
            "id": "act",
            "type": "update_contact",
            "next": "done",
            "rows": [{"field": "title", "action": "set", "value": "Changed"}],
        },
        {"id": "act", "type": "create_sale", "next": "done", "title": "T", "sale_type": "Renewal"},
        {
            "id": "act",
            "type": "split",
            "basis": "selection",
            "branches": [{"name": "VIP", "selection_id": VIP_SELECTION_ID, "next": "done"}],
            "everyone_else": {"next": "done"},
        },
    ],
    ids=["add_to_list", "update_contact", "create_sale", "split"],
)
async def test_a_crm_steps_activity_records_its_entry_and_makes_the_checks(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str, step: dict[str, Any]
) -> None:
    """No record of its own before a CRM step (or a split on CRM data): its activity upserts the
    row and makes the checks in the change's transaction. Excluded, the contact leaves as it
    would have on that record: nothing changed, dropped out with the reason, the row saying so."""
    karin = contact_named(engine, "Karin")
    with session(engine) as db:
        before = db.get(Contact, karin)
        assert before is not None
        title, sales = before.title, len(db.exec(select(Sale)).all())
    flow = flow_of(
        [step, {"id": "done", "type": "finish"}], exclusion_selections=[DEMO_SELECTION_ID]
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        handle = await start(time_skipping_env, task_queue, flow, karin)
        state = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        markers = [
            e.marker_recorded_event_attributes.marker_name
            async for e in handle.fetch_history_events()
            if e.HasField("marker_recorded_event_attributes")
        ]
    assert (state.status, state.drop_out_reason) == (
        ParticipantStatus.dropped_out,
        "on the exclusion list",
    )
    assert [(v.step, v.outcome) for v in state.trail] == [("act", "on the exclusion list")]
    # One patch asked, one local record (as the participant leaves): none before the step.
    assert markers == ["core_patch", "core_local_activity"]
    with session(engine) as db:
        after = db.get(Contact, karin)
        assert after is not None and after.title == title
        assert len(db.exec(select(Sale)).all()) == sales
        member = db.exec(
            select(SelectionMember).where(
                SelectionMember.contact_id == karin,
                SelectionMember.selection_id == VIP_SELECTION_ID,
            )
        ).first()
        row = db.get(Participant, state.participant_id)
    assert member is None
    assert row is not None
    assert (row.status, row.drop_out_reason, row.current_step) == (
        ParticipantStatus.dropped_out.value,
        "on the exclusion list",
        "act",
    )


def test_a_crm_steps_entry_checks_are_made_once_per_visit(engine: Engine) -> None:
    """A retry that finds the change made by an earlier attempt goes on with that change, even
    if the checks would now say the contact leaves: they belong to the step's entry."""
    karin = contact_named(engine, "Karin")
    record = entry_record("p-entry", karin, "sell", exclusion_selections=[VIP_SELECTION_ID])
    request = sale_creation("p-entry/sell/1", karin, record)
    records = RecordActivities(engine)
    first = records.create_sale(request)
    assert first.leave_reason is None and first.event is not None
    with session(engine) as db:
        db.add(SelectionMember(selection_id=VIP_SELECTION_ID, contact_id=karin))
    assert records.create_sale(request) == first
    other_visit = records.create_sale(request.model_copy(update={"event_key": "p-entry/sell/2"}))
    assert other_visit == StepChange.left("on the exclusion list")
    with session(engine) as db:
        assert len(db.exec(select(Sale)).all()) == 1


# --- validation against the CRM's lists --------------------------------------------------------


def test_deploy_checks_request_and_sale_combinations_against_the_crm(engine: Engine) -> None:
    document = flow_of(
        [
            {
                "id": "ask",
                "type": "create_request",
                "next": "sell",
                "title": "T",
                "request_type": "Customer success",
                "status": "Resolved",
                "category": "Nowhere",
                "priority": "Critical",
            },
            {
                "id": "sell",
                "type": "create_sale",
                "next": "ghost",
                "title": "T",
                "sale_type": "Renewal",
                "stage": "Lead",
            },
            {
                "id": "ghost",
                "type": "create_sale",
                "next": "done",
                "title": "T",
                "sale_type": "Gift",
            },
            {"id": "done", "type": "finish"},
        ]
    ).model_dump(mode="json", by_alias=True)
    with pytest.raises(FlowRejected) as rejected:
        deploy_flow(engine, document)
    assert sorted((p.step, p.field) for p in rejected.value.report.errors) == [
        ("ask", "category"),
        ("ask", "priority"),
        ("ask", "status"),
        ("ghost", "sale_type"),
        ("sell", "stage"),
    ]
    messages = {p.field: p.message for p in rejected.value.report.errors}
    assert messages["priority"] == (
        "request type 'Customer success' has no priority 'Critical' (Low, Medium, High)"
    )
    # Fixed, it deploys.
    steps = document["steps"]
    steps[0].update(status="Open", category="Account management", priority="High")
    steps[1]["stage"] = "Proposal"
    steps[2]["sale_type"] = "New business"
    assert deploy_flow(engine, document).version == 1


def test_the_every_step_example_deploys_against_the_demo_crm(engine: Engine) -> None:
    document = read_document(Path(__file__).parent.parent / "flows" / "every-step.json")
    deployed = deploy_flow(engine, document)
    assert deployed.report.errors == []


# --- the events reach participants and success criteria ---------------------------------------


async def test_a_sale_the_flow_creates_meets_its_success_criterion(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    karin = contact_named(engine, "Karin")
    flow = flow_of(
        [
            {
                "id": "sell",
                "type": "create_sale",
                "next": "later",
                "title": "Flows licence",
                "sale_type": "New business",
            },
            {"id": "later", "type": "wait_time", "amount": 3, "unit": "days", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
        success={"criteria": [{"kind": "sale_created"}], "move_to_finish": True},
    )
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        # Under its real workflow id: events find participants through their table rows.
        handle = await time_skipping_env.client.start_workflow(
            ParticipantWorkflow.run,
            Enrollment(flow=flow, flow_version=1, contact_id=karin),
            id=participant_workflow_id(flow.id, karin),
            task_queue=task_queue,
        )
        state = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    # The step's event reached this participant: it moved straight to finish, with success.
    assert state.status is ParticipantStatus.finished_with_success
    assert [v.step for v in state.trail] == ["sell"]  # never reached the wait
    (event,) = state.events
    (recorded,) = events(engine, "sale_created")
    assert (event.event_id, event.kind.value) == (recorded.event_id, "sale_created")
    assert event.sale_id == recorded.payload["sale_id"]
    assert recorded.delivered_at is not None


def test_membership_events_are_recorded_when_a_contact_joins(engine: Engine) -> None:
    karin = contact_named(engine, "Karin")
    crm = CrmActivities(engine)
    change = ListChange(contact_id=karin, selection_id=VIP_SELECTION_ID, project_id=DEMO_PROJECT_ID)
    crm.add_to_list(change)
    crm.add_to_list(change)  # already a member: nothing new
    joined = events(engine, "added_to_selection") + events(engine, "added_to_project")
    assert [
        (e.contact_id, e.payload.get("selection_id"), e.payload.get("project_id")) for e in joined
    ] == [
        (karin, VIP_SELECTION_ID, None),
        (karin, None, DEMO_PROJECT_ID),
    ]


@pytest.mark.parametrize("missing", ["selection", "project"])
def test_a_list_step_on_a_list_that_is_gone_fails_for_good_and_changes_nothing(
    engine: Engine, missing: str
) -> None:
    karin = contact_named(engine, "Karin")
    crm = CrmActivities(engine)
    lists = {"selection_id": VIP_SELECTION_ID, "project_id": DEMO_PROJECT_ID}
    change = ListChange(contact_id=karin, **(lists | {f"{missing}_id": 9999}))
    for step in (crm.add_to_list, crm.remove_from_list):
        with pytest.raises(ApplicationError) as failure:
            step(change)
        assert (failure.value.type, failure.value.non_retryable) == ("MissingList", True)
        assert failure.value.message == f"{missing} 9999 does not exist"
    assert events(engine, "added_to_selection") + events(engine, "added_to_project") == []
    with session(engine) as db:
        member = select(SelectionMember).where(SelectionMember.contact_id == karin)
        assert db.exec(member.where(SelectionMember.selection_id == VIP_SELECTION_ID)).all() == []
