"""Events in, on the real dev server: recorded once, signalled to the contact's participants, and
enrolling through triggers by every rule of spec §2; remove-from-other-flows on enrollment."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import starter
from control.enrollment import enroll
from control.flows import deploy_flow, set_flow_status
from control.ingest import ingest, triggered_by
from models.crm import Contact, SelectionMember
from models.database import session
from models.demo import VIP_SELECTION_ID
from models.engine import CrmEvent, FlowStatus, Participant, ParticipantStatus
from models.events import EventKind, FlowEvent, IngestReport
from models.flow import Trigger
from models.participant import participant_workflow_id
from models.settings import Settings
from testkit.waiting import assert_eventually
from worker import EngineWorker, build_worker

KARIN, LARS, EMILY = 1, 2, 3
# Events name forms and links by id and URL; no form or link row is needed to take one in. This
# form has none, so it has no actions of its own (the demo's form 1 has: tests/test_own_actions).
FORM_ID = 41
OFFER_URL = "https://www.example.com/spring-offer"
WAIT = {"id": "wait", "type": "wait_time", "amount": 5, "unit": "days", "next": "done"}
DONE = {"id": "done", "type": "finish"}


def flow_document(name: str, steps: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """A flow with an id of its own: tests share one dev server, where workflow ids (flow and
    contact) of participants left waiting by an earlier test must not collide."""
    return {
        "id": f"{name}-{uuid.uuid4().hex[:8]}",
        "name": name.replace("-", " ").title(),
        "start": steps[0]["id"],
        "steps": steps,
        **settings,
    }


def running_flow(engine: Engine, document: dict[str, Any]) -> str:
    """Deploy a flow and turn its triggers on, as `starter.py run` does."""
    deployed = deploy_flow(engine, document)
    set_flow_status(engine, deployed.flow_id, FlowStatus.running)
    return deployed.flow_id


def event_of(kind: EventKind, contact_id: int, **fields: Any) -> FlowEvent:
    return FlowEvent(
        event_id=f"test/{uuid.uuid4()}",
        kind=kind,
        contact_id=contact_id,
        occurred_at=datetime.now(UTC),
        **fields,
    )


async def participant_status(engine: Engine, flow_id: str, contact_id: int, wanted: str) -> None:
    """Wait until the participants table shows the contact in the flow with that status."""

    def read() -> str | None:
        with session(engine) as db:
            row = db.exec(
                select(Participant).where(
                    Participant.flow_id == flow_id, Participant.contact_id == contact_id
                )
            ).first()
        return None if row is None else row.status

    await assert_eventually(
        lambda: asyncio.to_thread(read),
        interval=0.05,
        until=lambda status: status == wanted,
        what=f"contact {contact_id} {wanted} in {flow_id}",
    )


async def signals(client: Client, workflow_id: str) -> list[tuple[str, str]]:
    """(signal name, event id or argument) of every signal in the workflow's history, in order."""
    found: list[tuple[str, str]] = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            continue
        attributes = event.workflow_execution_signaled_event_attributes
        [payload] = attributes.input.payloads
        value = client.data_converter.payload_converter.from_payload(payload)
        argument = value["event_id"] if isinstance(value, dict) else str(value)
        found.append((attributes.signal_name, argument))
    return found


async def signalled(client: Client, workflow_id: str, expected: list[tuple[str, str]]) -> None:
    """Wait for exactly these signals: a signal that arrives while a workflow task is running is
    buffered, and shows in the history once that task completes."""
    await assert_eventually(
        lambda: signals(client, workflow_id),
        timeout=5,
        interval=0.05,
        until=lambda found: found == expected,
        what=f"signals {expected}",
    )


def crm_events(engine: Engine) -> list[CrmEvent]:
    with session(engine) as db:
        return list(db.exec(select(CrmEvent).order_by(CrmEvent.id)).all())  # type: ignore[arg-type]


@pytest.fixture
async def worker(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> AsyncIterator[EngineWorker]:
    async with build_worker(dev_env.client, engine, task_queue=task_queue) as running:
        yield running


# --- matching ----------------------------------------------------------------------------------


def test_a_trigger_fires_on_its_kind_and_on_what_it_names() -> None:
    form = Trigger(kind="form_submitted", form_id=1)
    assert triggered_by(form, event_of(EventKind.form_submitted, KARIN, form_id=1))
    assert not triggered_by(form, event_of(EventKind.form_submitted, KARIN, form_id=2))
    assert not triggered_by(form, event_of(EventKind.link_clicked, KARIN))
    any_selection = Trigger(kind="added_to_selection")
    assert triggered_by(any_selection, event_of(EventKind.added_to_selection, 1, selection_id=5))
    link = Trigger(kind="link_clicked", link=OFFER_URL)
    assert triggered_by(link, event_of(EventKind.link_clicked, KARIN, link=OFFER_URL))
    assert not triggered_by(link, event_of(EventKind.link_clicked, KARIN, link="https://e.com"))
    created = Trigger(kind="contact_created")
    assert triggered_by(created, event_of(EventKind.contact_created, KARIN))
    assert not triggered_by(created, event_of(EventKind.contact_created, KARIN, by_import=True))
    updated = Trigger(kind="contact_updated")
    assert not triggered_by(updated, event_of(EventKind.contact_updated, KARIN, by_import=True))


# --- recorded once, signalled to the contact's participants ------------------------------------


@pytest.mark.usefixtures("worker")
async def test_an_event_is_recorded_once_and_signalled_to_each_active_participant(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    first = deploy_flow(engine, flow_document("ev-one", [WAIT, DONE])).flow_id
    second = deploy_flow(engine, flow_document("ev-two", [WAIT, DONE])).flow_id
    for flow_id in (first, second):
        await enroll(client, engine, flow_id, [KARIN, LARS], task_queue=task_queue)
        await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)

    event = event_of(EventKind.form_submitted, KARIN, form_id=FORM_ID, data={"topic": "a"})
    report = await ingest(client, engine, event, task_queue=task_queue)
    assert report == IngestReport(
        event_id=event.event_id,
        new=True,
        delivered=True,
        signalled=[participant_workflow_id(first, KARIN), participant_workflow_id(second, KARIN)],
    )
    again = await ingest(client, engine, event, task_queue=task_queue)
    assert again == IngestReport(event_id=event.event_id, new=False, delivered=False)

    [row] = crm_events(engine)
    assert (row.event_id, row.kind, row.contact_id) == (event.event_id, "form_submitted", KARIN)
    assert FlowEvent.model_validate(row.payload) == event
    assert row.delivered_at is not None
    for flow_id in (first, second):
        await signalled(
            client, participant_workflow_id(flow_id, KARIN), [("event", event.event_id)]
        )
        await signalled(client, participant_workflow_id(flow_id, LARS), [])


@pytest.mark.usefixtures("worker")
async def test_an_event_recorded_but_not_delivered_is_delivered_by_the_next_ingest(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    # A flow step records its CRM change in its own transaction, or an ingest stopped halfway.
    flow_id = deploy_flow(engine, flow_document("ev-late", [WAIT, DONE])).flow_id
    await enroll(dev_env.client, engine, flow_id, [KARIN], task_queue=task_queue)
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)
    event = event_of(EventKind.added_to_selection, KARIN, selection_id=VIP_SELECTION_ID)
    with session(engine) as db:
        db.add(CrmEvent(event_id=event.event_id, kind=event.kind.value, contact_id=KARIN))

    report = await ingest(dev_env.client, engine, event, task_queue=task_queue)
    assert (report.new, report.delivered) == (False, True)
    assert report.signalled == [participant_workflow_id(flow_id, KARIN)]
    again = await ingest(dev_env.client, engine, event, task_queue=task_queue)
    assert again.delivered is False
    workflow_id = participant_workflow_id(flow_id, KARIN)
    await signalled(dev_env.client, workflow_id, [("event", event.event_id)])


async def test_a_participant_that_closed_meanwhile_is_skipped(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    # Its row still says Active (the workflow was terminated and never wrote its end).
    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        flow_id = deploy_flow(engine, flow_document("ev-closed", [WAIT, DONE])).flow_id
        await enroll(dev_env.client, engine, flow_id, [KARIN], task_queue=task_queue)
        await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)
    workflow_id = participant_workflow_id(flow_id, KARIN)
    await dev_env.client.get_workflow_handle(workflow_id).terminate("test")
    event = event_of(EventKind.contact_updated, KARIN)
    report = await ingest(dev_env.client, engine, event, task_queue=task_queue)
    assert (report.new, report.delivered, report.signalled) == (True, True, [])


# --- triggers ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_a_trigger_enrolls_through_the_filter_exclusion_and_only_once(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    with session(engine) as db:
        db.add(SelectionMember(selection_id=VIP_SELECTION_ID, contact_id=EMILY))
    flow_id = running_flow(
        engine,
        flow_document(
            "ev-trigger",
            [DONE],
            triggers=[{"kind": "form_submitted", "form_id": FORM_ID}],
            filter={
                "conditions": [
                    {"field": "contact.category", "operator": "equals", "value": "Decision maker"}
                ]
            },
            exclusion_selections=[VIP_SELECTION_ID],
            only_once=True,
        ),
    )

    def submitted(contact_id: int, form_id: int = FORM_ID) -> FlowEvent:
        return event_of(EventKind.form_submitted, contact_id, form_id=form_id, data={"q": "1"})

    first = submitted(KARIN)
    report = await ingest(client, engine, first, task_queue=task_queue)
    assert (report.enrolled, report.refused) == ([flow_id], {})
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.finished.value)
    # Signal-with-start: the event that enrolled it is in its history before its first step.
    workflow_id = participant_workflow_id(flow_id, KARIN)
    history = [
        e.event_type async for e in client.get_workflow_handle(workflow_id).fetch_history_events()
    ]
    assert history[:2] == [
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    ]
    await signalled(client, workflow_id, [("event", first.event_id)])

    expected = {
        KARIN: "already took part, and the flow allows it only once",
        LARS: "does not match the flow's filter",
        EMILY: f"on the exclusion list (selection {VIP_SELECTION_ID})",
    }
    for contact_id, reason in expected.items():
        report = await ingest(client, engine, submitted(contact_id), task_queue=task_queue)
        assert (report.enrolled, report.refused) == ([], {flow_id: reason})
    other_form = await ingest(client, engine, submitted(KARIN, form_id=99), task_queue=task_queue)
    assert (other_form.enrolled, other_form.refused) == ([], {})


@pytest.mark.usefixtures("worker")
async def test_one_batch_is_refused_by_every_rule_and_starts_the_rest(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    """The rules of spec §2 for a whole selection at once: each refused contact gets the reason
    it would get alone, the others start with their short name in the summary."""
    client = dev_env.client
    missing = 999_999
    with session(engine) as db:
        gustav = db.exec(select(Contact.id).where(Contact.first_name == "Gustav")).one()
        assert gustav is not None
        db.add(SelectionMember(selection_id=VIP_SELECTION_ID, contact_id=EMILY))
    document = flow_document(
        "ev-batch",
        [DONE],
        filter={
            "conditions": [
                {"field": "contact.category", "operator": "equals", "value": "Decision maker"}
            ]
        },
        exclusion_selections=[VIP_SELECTION_ID],
        only_once=True,
    )
    flow_id = running_flow(engine, document)
    with session(engine) as db:
        db.add(
            Participant(
                id=f"earlier-{flow_id}",
                workflow_id=participant_workflow_id(flow_id, gustav),
                flow_id=flow_id,
                flow_version=1,
                contact_id=gustav,
                status=ParticipantStatus.finished.value,
            )
        )
    report = await enroll(
        client, engine, flow_id, [missing, LARS, KARIN, EMILY, gustav, KARIN], task_queue=task_queue
    )
    assert report.enrolled == [KARIN]
    assert report.refused == {
        missing: "no such contact",
        LARS: "does not match the flow's filter",
        EMILY: f"on the exclusion list (selection {VIP_SELECTION_ID})",
        gustav: "already took part, and the flow allows it only once",
    }
    description = await client.get_workflow_handle(
        participant_workflow_id(flow_id, KARIN)
    ).describe()
    assert await description.static_summary() == (
        f"Karin S. (contact {KARIN}) in {document['name']!r} v1"
    )


@pytest.mark.usefixtures("worker")
async def test_a_trigger_never_makes_a_contact_active_twice_and_stops_at_enrollment_end(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    clicked = [{"kind": "link_clicked", "link": OFFER_URL}]
    flow_id = running_flow(engine, flow_document("ev-active", [WAIT, DONE], triggers=clicked))
    ended = running_flow(
        engine,
        flow_document("ev-ended", [DONE], triggers=clicked, enrollment_end="2001-01-01T00:00:00"),
    )

    def click() -> FlowEvent:
        return event_of(EventKind.link_clicked, KARIN, link=OFFER_URL)

    first, second = click(), click()
    report = await ingest(client, engine, first, task_queue=task_queue)
    assert report.enrolled == [flow_id]
    assert report.refused == {ended: "enrollment has ended"}
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)
    report = await ingest(client, engine, second, task_queue=task_queue)
    workflow_id = participant_workflow_id(flow_id, KARIN)
    assert report.signalled == [workflow_id]
    assert report.refused == {flow_id: "already active in this flow", ended: "enrollment has ended"}
    await signalled(
        client,
        workflow_id,
        [
            ("event", first.event_id),
            ("event", second.event_id),
        ],
    )
    # Other links, and flows whose triggers are off, enroll no one.
    set_flow_status(engine, flow_id, FlowStatus.not_running)
    elsewhere = event_of(EventKind.link_clicked, LARS, link="https://www.example.com/other")
    assert (await ingest(client, engine, elsewhere, task_queue=task_queue)).refused == {}
    report = await ingest(
        client,
        engine,
        event_of(EventKind.link_clicked, LARS, link=OFFER_URL),
        task_queue=task_queue,
    )
    assert report.enrolled == [] and flow_id not in report.refused


@pytest.mark.usefixtures("worker")
async def test_crm_triggers_ignore_imports_and_match_their_selection(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    created = running_flow(
        engine, flow_document("ev-created", [DONE], triggers=[{"kind": "contact_created"}])
    )
    joined = running_flow(
        engine,
        flow_document(
            "ev-joined",
            [DONE],
            triggers=[{"kind": "added_to_selection", "selection_id": VIP_SELECTION_ID}],
        ),
    )
    imported = event_of(EventKind.contact_created, KARIN, by_import=True)
    assert (await ingest(client, engine, imported, task_queue=task_queue)).enrolled == []
    typed_in = event_of(EventKind.contact_created, KARIN)
    assert (await ingest(client, engine, typed_in, task_queue=task_queue)).enrolled == [created]
    elsewhere = event_of(EventKind.added_to_selection, LARS, selection_id=VIP_SELECTION_ID + 1)
    assert (await ingest(client, engine, elsewhere, task_queue=task_queue)).enrolled == []
    vip = event_of(EventKind.added_to_selection, LARS, selection_id=VIP_SELECTION_ID)
    assert (await ingest(client, engine, vip, task_queue=task_queue)).enrolled == [joined]


@pytest.fixture
def starter_here(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    settings_env: Callable[..., Settings],
) -> None:
    """Let ``starter.main`` reach this test's database, dev server and task queue."""
    settings_env(
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
    )
    monkeypatch.setattr(starter, "TASK_QUEUE", task_queue)


@pytest.mark.usefixtures("worker", "starter_here")
async def test_the_starter_takes_an_event_in(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    flow_id = running_flow(
        engine,
        flow_document("ev-cli", [DONE], triggers=[{"kind": "form_submitted", "form_id": FORM_ID}]),
    )
    args = ["event", "form_submitted", "--contact", str(KARIN), "--form", str(FORM_ID)]
    args += ["--data", "topic=pricing", "size=10", "--id", f"cli/{uuid.uuid4()}"]
    assert await asyncio.to_thread(starter.main, args) == 0
    assert f"enrolled in {flow_id}" in capsys.readouterr().out
    assert await asyncio.to_thread(starter.main, args) == 0
    assert "delivered before; nothing to do" in capsys.readouterr().out
    [row] = crm_events(engine)
    assert row.payload["data"] == {"topic": "pricing", "size": "10"}
    # Malformed input: exit status 2.
    assert await asyncio.to_thread(starter.main, [*args[:4], "--data", "oops"]) == 2


# --- remove from other flows -------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
async def test_enrolling_removes_the_contact_from_the_flows_listed(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    nurture = deploy_flow(engine, flow_document("ev-nurture", [WAIT, DONE])).flow_id
    await enroll(client, engine, nurture, [KARIN], task_queue=task_queue)
    await participant_status(engine, nurture, KARIN, ParticipantStatus.active.value)
    onboarding = deploy_flow(
        engine,
        flow_document(
            "ev-onboarding", [WAIT, DONE], remove_from_flows=[nurture, "ev-never-deployed"]
        ),
    ).flow_id

    report = await enroll(client, engine, onboarding, [KARIN, LARS], task_queue=task_queue)
    assert report.enrolled == [KARIN, LARS]
    assert report.removed == {KARIN: [nurture]}  # Lars was in neither
    reason = f"enrolled in flow {onboarding!r}, which removes it from this one"
    await signalled(client, participant_workflow_id(nurture, KARIN), [("leave", reason)])


# --- the activity ------------------------------------------------------------------------------


@workflow.defn(name="EmitForTest", sandboxed=False)
class EmitForTest:
    """Stands in for a flow step that emits the event its CRM change made."""

    @workflow.run
    async def run(self, event: FlowEvent, activity_queue: str) -> IngestReport:
        report: IngestReport = await workflow.execute_activity(
            "emit_event",
            event,
            result_type=IngestReport,
            task_queue=activity_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return report


@pytest.mark.usefixtures("worker")
async def test_flow_steps_emit_events_through_the_activity(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    client = dev_env.client
    flow_id = running_flow(
        engine,
        flow_document("ev-emitted", [WAIT, DONE], triggers=[{"kind": "request_created"}]),
    )
    event = event_of(EventKind.request_created, KARIN)
    async with Worker(client, task_queue=f"{task_queue}-emit", workflows=[EmitForTest]):
        report = await client.execute_workflow(
            EmitForTest.run,
            args=[event, task_queue],
            id=f"emit-{uuid.uuid4()}",
            task_queue=f"{task_queue}-emit",
        )
    assert (report.new, report.enrolled) == (True, [flow_id])
    # Started on the activity's own task queue, where the worker runs participants.
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)


def test_contacts_exist_as_the_tests_assume(engine: Engine) -> None:
    with session(engine) as db:
        names = {c.id: c.first_name for c in db.exec(select(Contact)).all()}
    assert (names[KARIN], names[LARS], names[EMILY]) == ("Karin", "Lars", "Emily")
