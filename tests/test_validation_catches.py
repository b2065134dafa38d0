"""Validation catches before deploy what would fail later: a flow too large for Temporal to carry,
texts whose merge tags do not compile, bad addresses in the flow and in the settings, and it takes
the form-data split's ``form.*`` fields, which then decide the branch at run time."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from control.enrollment import enroll
from control.flows import deploy_flow
from control.ingest import ingest
from models.engine import ParticipantStatus
from models.events import EventKind
from models.participant import participant_workflow_id
from models.settings import Settings
from models.validation import MAX_FLOW_BYTES, MAX_STEPS, FlowReport, check_flow
from tests.test_events import KARIN, event_of, participant_status
from worker import build_worker
from workflows.participant import ParticipantWorkflow

EMAIL = {"from": {"kind": "address", "address": "news@nordlys.example"}}
FINISH = {"id": "done", "type": "finish"}


def flow(*steps: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {
        "id": "catches",
        "name": "Catches",
        "start": steps[0]["id"],
        "steps": [*copy.deepcopy(steps), FINISH],
        **copy.deepcopy(settings),
    }


def mail(step_id: str = "mail", **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "send_email", "next": "done", "subject": "News", **fields}


def where(report: FlowReport) -> list[tuple[str, str | None, str]]:
    return [(p.level, p.step, p.field) for p in report.problems]


# --- sizes: what Temporal can carry --------------------------------------------------------------


def test_a_flow_larger_than_a_participant_can_carry_is_refused_naming_its_large_texts() -> None:
    body = "<p>" + "x" * (2_200_000) + "</p>"
    report = check_flow(flow(mail(html=body), email=EMAIL))
    assert not report.can_save and not report.can_run
    assert where(report) == [("error", None, ""), ("error", "mail", "html")]
    assert "at most 1,024 KiB" in report.problems[0].message


def test_a_flow_of_a_hundred_thousand_steps_is_refused_before_it_is_parsed() -> None:
    steps = [
        {"id": f"s{n}", "type": "wait_time", "next": f"s{n + 1}", "amount": 1, "unit": "days"}
        for n in range(100_000)
    ]
    steps[-1]["next"] = "done"
    report = check_flow(flow(*steps))
    assert report.flow is None and not report.can_save
    assert [(p.level, p.step, p.field, p.message) for p in report.problems] == [
        ("error", None, "steps", f"100,001 steps: a flow has at most {MAX_STEPS:,}")
    ]


def test_a_flow_that_only_grows_past_the_limit_with_its_defaults_is_refused_too() -> None:
    """The size that counts is the flow as participants carry it, every field written out."""
    rows = [{"field": "title", "action": "set", "value": "x" * 10}] * 11_000
    document = flow({"id": "tag", "type": "update_contact", "next": "done", "rows": rows})
    assert len(str(document)) < MAX_FLOW_BYTES
    report = check_flow(document)
    assert ("error", None, "") in where(report)


def test_a_large_flow_within_the_limit_gets_a_warning() -> None:
    report = check_flow(flow(mail(html="x" * 600_000), email=EMAIL))
    assert report.can_run
    assert where(report) == [("warning", None, "")]
    assert "Temporal warns about payloads over 512 KiB" in report.problems[0].message


def test_a_small_flow_has_no_size_problem() -> None:
    assert not check_flow(flow(mail(html="<p>Hej</p>"), email=EMAIL)).problems


# --- merge tags that do not compile --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Hej [[IF:customer.firstname]][[customer.firstname]]", "is not closed by [[ENDIF]]"),
        ("Hej[[ENDIF]]", "[[ENDIF]] without an [[IF:…]]"),
        ("Hej[[ELSE]]", "[[ELSE]] outside an [[IF:…]]"),
        ("[[IF:company.name]]a[[ELSE]]b[[ELSE]]c[[ENDIF]]", "a second [[ELSE]]"),
        ("[[IF:company.name]]" * 25 + "[[ENDIF]]" * 25, "conditionals nest deeper than 20"),
    ],
)
def test_merge_tags_that_do_not_compile_are_refused(text: str, message: str) -> None:
    report = check_flow(flow(mail(subject=text, text="Body"), email=EMAIL))
    [problem] = report.problems
    assert (problem.level, problem.step, problem.field) == ("error", "mail", "subject")
    assert message in problem.message


def test_every_text_that_does_not_compile_is_listed_by_step_and_field() -> None:
    unclosed = "[[IF:customer.firstname]]Hej"
    document = flow(
        mail(subject=unclosed, html=unclosed, text=unclosed),
        {"id": "sms", "type": "send_sms", "next": "mail", "sender": "Nordlys", "text": unclosed},
        {
            "id": "todo",
            "type": "create_follow_up",
            "next": "sms",
            "title": unclosed,
            "follow_up_type": "Call",
            "agenda": unclosed,
        },
        email=EMAIL,
    )
    document["start"] = "todo"
    assert sorted(where(check_flow(document)), key=repr) == sorted(
        [
            ("error", "mail", "subject"),
            ("error", "mail", "html"),
            ("error", "mail", "text"),
            ("error", "sms", "text"),
            ("error", "todo", "title"),
            ("error", "todo", "agenda"),
        ],
        key=repr,
    )


def test_balanced_conditionals_are_accepted() -> None:
    text = "[[IF:customer.firstname]]Hej [[customer.firstname]][[ELSE]]Hej[[ENDIF]]!"
    assert check_flow(flow(mail(subject=text, text=text), email=EMAIL)).can_run


# --- addresses -----------------------------------------------------------------------------------


def test_a_bad_reply_to_address_and_bad_notification_addresses_are_refused() -> None:
    notify = {
        "id": "tell",
        "type": "notify_email",
        "next": "done",
        "to": {"addresses": ["sales@nordlys.example", "sales at nordlys", "x@y@z.example"]},
        "subject": "New lead",
        "text": "See the CRM",
    }
    settings = copy.deepcopy(EMAIL)
    settings["reply_to"] = {"kind": "address", "address": "reply@"}
    report = check_flow(flow(notify, email=settings))
    assert where(report) == [
        ("error", None, "email.reply_to.address"),
        ("error", "tell", "to.addresses.1"),
        ("error", "tell", "to.addresses.2"),
    ]
    assert all(p.message.startswith("not an email address") for p in report.problems)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_ENVELOPE_FROM", "bounces"),
        ("SMTP_ENVELOPE_FROM", "bounces@example.com\r\nBcc: all@example.com"),
        ("LIST_UNSUBSCRIBE_MAILTO", "mailto:unsubscribe@"),
        ("LIST_UNSUBSCRIBE_URL", "unsubscribe.example.com/{contact_id}"),
        ("SUBSCRIPTION_URL", "javascript:alert(1)"),
        ("WEBVERSION_URL", "https://web.example.com/{flow_id} x"),
    ],
)
def test_invalid_addresses_in_the_settings_stop_the_start(
    settings_env: Callable[..., Settings], variable: str, value: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        settings_env(**{variable: value})
    assert raised.value.errors()[0]["loc"] == (variable.lower(),)


def test_valid_addresses_in_the_settings_are_taken(settings_env: Callable[..., Settings]) -> None:
    settings = settings_env(
        SMTP_ENVELOPE_FROM="bounces@example.com",
        LIST_UNSUBSCRIBE_MAILTO="mailto:unsubscribe@example.com?subject=unsubscribe",
        LIST_UNSUBSCRIBE_URL="https://u.example.com/{contact_id}?flow={flow_id}",
    )
    assert settings.smtp_envelope_from == "bounces@example.com"


# --- the form-data split's form.* fields ---------------------------------------------------------


def form_split(*conditions: dict[str, Any], basis: str = "form_data") -> dict[str, Any]:
    branch = {"name": "Large", "next": "large", "criteria": {"conditions": list(conditions)}}
    return {
        "id": "answers",
        "type": "split",
        "basis": basis,
        "form_id": 7,
        "branches": [branch],
        "everyone_else": {"next": "done"},
    }


LARGE = {"id": "large", "type": "finish"}


def test_a_form_data_split_takes_form_fields() -> None:
    split = form_split(
        {"field": "form.name", "operator": "is_not_empty"},
        {"field": "form.size", "operator": "matches", "value": r"^l\w+$"},
    )
    report = check_flow(flow(split, LARGE))
    assert report.problems == [] and report.can_run


def test_a_form_data_split_reads_only_form_fields_and_other_criteria_none() -> None:
    split = form_split(
        {"field": "contact.first_name", "operator": "is_not_empty"},
        {"field": "form.", "operator": "is_not_empty"},
    )
    data_split = dict(form_split({"field": "form.name", "operator": "is_not_empty"}), id="data")
    data_split["basis"] = "data"
    data_split["branches"][0]["next"] = "answers"
    document = flow(data_split, split, LARGE)
    document["filter"] = {"conditions": [{"field": "form.name", "operator": "is_not_empty"}]}
    report = check_flow(document)
    assert where(report) == [
        ("error", None, "filter.conditions.0.field"),
        ("error", "data", "branches.0.criteria.conditions.0.field"),
        ("error", "answers", "branches.0.criteria.conditions.0.field"),
        ("error", "answers", "branches.0.criteria.conditions.1.field"),
    ]
    assert "read only by a split with basis form_data" in report.problems[0].message
    assert "form.NAME" in report.problems[2].message


async def test_a_form_data_split_deploys_and_chooses_its_branch_by_the_form_posted(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    """Deployed, run by a participant, and decided inside the workflow (where the pattern runs)
    from the form the contact posted."""
    wait = {
        "id": "wait",
        "type": "wait_for_action",
        "actions": [{"kind": "form_submitted", "form_id": 7}],
        "next": "answers",
    }
    split = form_split({"field": "form.size", "operator": "matches", "value": r"^l\w+$"})
    document = flow(wait, split, LARGE)
    document["id"] = f"form-answers-{uuid.uuid4().hex[:8]}"
    flow_id = deploy_flow(engine, document).flow_id
    client = dev_env.client
    async with build_worker(client, engine, task_queue=task_queue):
        await enroll(client, engine, flow_id, [KARIN], task_queue=task_queue)
        await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)
        posted = event_of(EventKind.form_submitted, KARIN, form_id=7, data={"size": "Large"})
        await ingest(client, engine, posted, task_queue=task_queue)
        handle = client.get_workflow_handle_for(
            ParticipantWorkflow.run, participant_workflow_id(flow_id, KARIN)
        )
        state = await handle.result()
    assert [visit.step for visit in state.trail] == ["wait", "answers", "large"]
    assert state.trail[1].outcome == "branch 'Large'"
