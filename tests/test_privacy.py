"""Histories carry ids, not people: a participant that goes through every step kind, with a form
posted to the tracking service, leaves none of its contact's data in its Temporal history or its
Script child's, read with the data converter alone (no decryption: what anyone who can open the
Temporal UI sees without the codec server). Time-skipping server, real SMTP inbox, the local
Twilio API, the tracking service over HTTP, a real database."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from google.protobuf import json_format
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

import scripts.examples  # noqa: F401  (registers the script the flow runs)
from models.crm import Contact
from models.database import session
from models.demo import DEMO_FORM_ID, VIP_SELECTION_ID
from models.engine import CrmEvent
from models.flow import STEP_KINDS, Flow
from models.participant import Enrollment, ParticipantState, participant_workflow_id
from models.payloads import DATA_CONVERTER
from models.tracking_links import TrackingLinks
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox, twilio_settings
from testkit.servers import free_port
from testkit.waiting import waiting_at
from tracking.app import TrackingSettings, create_app
from tracking.server import serving
from worker import activities_for, build_worker
from workflows.participant import ParticipantWorkflow

KARIN = 1
PERSONAL_NUMBER = "19850412-1234"
MESSAGE = "Ring mig efter lunch, jag heter Karin Svensson"
NEW_EMAIL = "karin.private@gmail.example"
# Everything the CRM and the form know about Karin that must not reach a history: her names,
# addresses and numbers as the CRM holds them (and as sends write numbers), what the flow
# changes them to, her birthday, and what she typed into the form.
PERSONAL = [
    "karin.svensson@example.com",
    "karin@example.org",
    NEW_EMAIL,
    "Svensson",
    "Svenssson",  # as the flow changes it
    "+46 70 123 45 67",
    "+46701234567",
    "+46 73 123 45 67",
    "+46731234567",
    "123 45 67",
    "1234567",
    "+46812345601",
    "1985-04-12",
    PERSONAL_NUMBER,
    MESSAGE,
    "lunch",
]
FIRST_NAME = "Karin"

EMAIL = {
    "subscription_type": "newsletter",
    "from": {"kind": "address", "address": "news@flows.example.com", "name": "Flows"},
}
LARGE = {"conditions": [{"field": "form.size", "operator": "equals", "value": "large"}]}
DECISION_MAKERS = {
    "conditions": [{"field": "contact.category", "operator": "equals", "value": "Decision maker"}]
}
STEPS: list[dict[str, Any]] = [
    {
        "id": "mail",
        "type": "send_email",
        "next": "text",
        "subject": "Hello [[customer.firstname]]",
        "text": "Hello [[customer.fullname]], your address is [[customer.email]].",
    },
    {"id": "text", "type": "send_sms", "next": "form", "text": "Hi [[customer.firstname]]"},
    {
        "id": "form",
        "type": "wait_for_action",
        "actions": [{"kind": "form_submitted", "form_id": DEMO_FORM_ID}],
        "max_wait": {"amount": 5, "unit": "days"},
        "next": "answers",
    },
    {
        "id": "answers",
        "type": "split",
        "basis": "form_data",
        "form_id": DEMO_FORM_ID,
        "branches": [{"name": "Large", "criteria": LARGE, "next": "who"}],
        "everyone_else": {"next": "who"},
    },
    {
        "id": "who",
        "type": "split",
        "basis": "data",
        "branches": [{"name": "Decision makers", "criteria": DECISION_MAKERS, "next": "update"}],
        "everyone_else": {"next": "update"},
    },
    {
        # The new values come from her own: the flow document does not spell them out.
        "id": "update",
        "type": "update_contact",
        "next": "add",
        "rows": [
            {
                "field": "email",
                "action": "regex_replace",
                "find": r"^(\w+)\.\w+@example\.com$",
                "value": r"\1.private@gmail.example",
            },
            {"field": "mobile", "action": "regex_replace", "find": r"^\+46 70", "value": "+46 73"},
            {"field": "last_name", "action": "regex_replace", "find": "son$", "value": "sson"},
            {"field": "title", "action": "set", "value": "Head of Marketing"},
        ],
    },
    {"id": "add", "type": "add_to_list", "selection_id": VIP_SELECTION_ID, "next": "remove"},
    {"id": "remove", "type": "remove_from_list", "selection_id": VIP_SELECTION_ID, "next": "owner"},
    {
        "id": "owner",
        "type": "distribute_to_owner",
        "user_group_id": 1,
        "only_if_unassigned": False,
        "next": "call",
    },
    {
        "id": "call",
        "type": "create_follow_up",
        "title": "Call [[customer.fullname]] on [[customer.cellphone]]",
        "follow_up_type": "Phone",
        "next": "request",
    },
    {
        "id": "request",
        "type": "create_request",
        "title": "Check-in: [[customer.fullname]]",
        "request_type": "Support",
        "status": "Open",
        "category": "General",
        "priority": "High",
        "message": "<p>[[customer.email]]</p>",
        "next": "sale",
    },
    {
        "id": "sale",
        "type": "create_sale",
        "title": "Licences for [[customer.fullname]]",
        "sale_type": "New business",
        "amount": 12000,
        "next": "script",
    },
    {"id": "script", "type": "run_script", "script": "sync_webinar_attendee", "next": "tell"},
    {
        "id": "tell",
        "type": "notify_email",
        "to": {"our_contact": True},
        "subject": "[[customer.fullname]] answered",
        "text": "[[customer.fullname]] ([[customer.email]], [[customer.cellphone]]) answered.",
        "next": "tell-sms",
    },
    {
        "id": "tell-sms",
        "type": "notify_sms",
        "to": {"our_contact": True},
        "text": "[[customer.fullname]] [[customer.cellphone]] answered",
        "next": "pause",
    },
    {"id": "pause", "type": "wait_time", "amount": 1, "unit": "days", "next": "done"},
    {"id": "done", "type": "finish", "add_to_selection": VIP_SELECTION_ID},
]


def every_step_flow() -> dict[str, Any]:
    return {
        "id": f"privacy-{uuid.uuid4().hex[:8]}",
        "name": "Privacy",
        "start": STEPS[0]["id"],
        "steps": STEPS,
        "email": EMAIL,
        "sms_sender": "Flows",
        "success": {"criteria": [{"kind": "form_submitted", "form_id": DEMO_FORM_ID}]},
        # The contact's clock is read from her data: only a zone name may come back.
        "recipient_clock": {},
        "sending_window": {"weekdays": "all_days", "start": "00:00", "end": "23:59"},
    }


# --- reading a history as the Temporal UI shows it ---------------------------------------------


def _is_payload(node: dict[str, Any]) -> bool:
    return "metadata" in node and set(node) <= {"metadata", "data", "externalPayloads"}


def texts(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, text) for every string of a history's JSON, each payload decoded with the data
    converter (no codec) and shown as the JSON of its value."""
    if isinstance(node, dict):
        if _is_payload(node):
            payload = json_format.ParseDict(node, Payload())
            value = DATA_CONVERTER.payload_converter.from_payload(payload)
            yield path, json.dumps(value, ensure_ascii=False, default=str)
            # And the raw bytes, for an encoding the converter reads differently.
            yield path, base64.b64decode(node.get("data", "")).decode("utf-8", "replace")
            return
        for key, child in node.items():
            yield from texts(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from texts(child, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def personal_data_in(history: WorkflowHistory, summary: str) -> list[str]:
    """Where the history holds the contact's data. Her first name may appear only in the
    participant's summary, masked as the short name ("Karin S.")."""
    found: list[str] = []
    for where, text in texts(json.loads(history.to_json())):
        lowered = text.lower()
        found += [f"{where}: {item!r}" for item in PERSONAL if item.lower() in lowered]
        masked = where.endswith("userMetadata.summary") and text == json.dumps(summary)
        if FIRST_NAME in text and not masked:
            found.append(f"{where}: {FIRST_NAME!r} in {text[:200]!r}")
    return found


async def histories(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """The participant's history and those of the Script children it started."""
    participant = await client.get_workflow_handle(workflow_id).fetch_history()
    children = [
        event.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for event in participant.events
        if event.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]
    found = [participant]
    for child in children:
        await client.get_workflow_handle(child).result()
        found.append(await client.get_workflow_handle(child).fetch_history())
    return found


def kinds_entered(state: ParticipantState, flow: dict[str, Any]) -> set[str]:
    kind_of = {step["id"]: step["type"] for step in flow["steps"]}
    return {kind_of[visit.step] for visit in state.trail}


# --- the participant ---------------------------------------------------------------------------


async def test_no_personal_data_in_the_histories_of_a_participant_through_every_step_kind(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    client = time_skipping_env.client
    document = every_step_flow()
    flow_id = document["id"]
    summary = f"Karin S. (contact {KARIN}) in 'Privacy' v1"  # as enrollment names participants
    links = TrackingLinks(base_url=f"http://127.0.0.1:{free_port()}", secret="s" * 32)
    port = int(links.base_url.rsplit(":", 1)[1])
    tracking = create_app(engine, client, TrackingSettings(links, task_queue, port=port))
    activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
    async with (
        build_worker(client, engine, task_queue=task_queue, activities=activities),
        serving(tracking, host="127.0.0.1", port=port) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        # Started as enrollment starts it (validation does not take form.* criteria yet).
        workflow_id = participant_workflow_id(flow_id, KARIN)
        enrollment = Enrollment(
            flow=Flow.model_validate(document), flow_version=1, contact_id=KARIN
        )
        handle = await client.start_workflow(
            ParticipantWorkflow.run,
            enrollment,
            id=workflow_id,
            task_queue=task_queue,
            static_summary=summary,
        )
        await waiting_at(handle, "form")
        posted = await http.post(
            f"/f/{DEMO_FORM_ID}",
            params={"c": links.form_token(KARIN)},
            data={"size": "large", "personnummer": PERSONAL_NUMBER, "message": MESSAGE},
        )
        assert posted.status_code == 200, posted.text
        state: ParticipantState = await handle.result()
        found = await histories(client, workflow_id)

    # It went everywhere, decided on the form's data and changed the contact as the flow says.
    trail = {visit.step: visit.outcome for visit in state.trail}
    assert trail["answers"] == "branch 'Large'"
    assert state.recipient_zone is not None  # read from her company's country
    assert (state.recipient_zone.time_zone, state.recipient_zone.source) == (
        "Europe/Stockholm",
        "country",
    )
    assert kinds_entered(state, document) == set(STEP_KINDS)
    assert len(found) == 2  # the Script child
    with session(engine) as db:
        contact = db.get(Contact, KARIN)
        submitted = select(CrmEvent).where(CrmEvent.kind == "form_submitted")
        stored = [row.payload for row in db.exec(submitted).all()]
    assert contact is not None
    assert (contact.email, contact.mobile) == (NEW_EMAIL, "+46 73 123 45 67")
    assert [event["data"]["personnummer"] for event in stored] == [PERSONAL_NUMBER]
    assert len(smtp_inbox.messages()) == 2 and len(twilio_api.messages) == 2

    for history in found:
        leaks = personal_data_in(history, summary)
        assert leaks == [], "\n".join(leaks)
    # The check sees what it looks for: the same contact's data in a history is found.
    leaked = json.loads(found[0].to_json())
    started = leaked["events"][0]["workflowExecutionStartedEventAttributes"]
    started["input"]["payloads"][0]["data"] = base64.b64encode(
        json.dumps({"note": f"{FIRST_NAME} {PERSONAL_NUMBER}"}).encode()
    ).decode()
    copy = WorkflowHistory.from_json(workflow_id, json.dumps(leaked))
    hits = personal_data_in(copy, summary)
    assert any(PERSONAL_NUMBER in hit for hit in hits) and any(FIRST_NAME in h for h in hits)
    assert all(hit.startswith(".events[0].workflowExecutionStartedEventAttributes") for hit in hits)


def test_a_change_description_masks_the_contacts_own_values() -> None:
    """update_contact's outcome (kept in the history) shows personal fields masked, list and
    flag values as they are."""
    from models.contact_update import apply_row
    from models.flow import UpdateRow

    contact = Contact(
        first_name="Karin",
        last_name="Svensson",
        email="karin.svensson@example.com",
        mobile="+46 70 123 45 67",
        category="User",
        emails=["karin@example.org"],
        user_defined={"birthday": "1985-04-12"},
    )
    rows = [
        ("first_name", "set", "Carin"),
        ("email", "set", NEW_EMAIL),
        ("mobile", "set", "+46 73 123 45 67"),
        ("emails", "add", "k.s@example.net"),
        ("user_defined.birthday", "set", "1985-04-13"),
        ("category", "select", "Decision maker"),
    ]
    changes = [
        apply_row(contact, UpdateRow(field=field, action=action, value=value))
        for field, action, value in rows
    ]
    assert changes == [
        "first_name: 'K…' → 'C…'",
        "email: 'k…@example.com' → 'k…@gmail.example'",
        "mobile: '…4567' → '…4567'",
        "emails: ['k…@example.org'] → ['k…@example.org', 'k…@example.net']",
        "user_defined.birthday: '…' → '…'",
        "category: 'User' → 'Decision maker'",
    ]
    assert not re.search(r"Karin|Svensson|karin\.|1234567|1985", "; ".join(map(str, changes)))
