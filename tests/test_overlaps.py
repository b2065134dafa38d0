"""Validation warns when a form's or tracked link's own actions duplicate or contradict the steps
of a flow that uses it (spec §5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import starter
from models.crm import ActionCatalogue, Form, OwnAction, OwnActions, ReplyDetails, action_catalogue
from models.database import session
from models.demo import DEMO_FORM_ID, DEMO_PROJECT_ID, SPRING_OFFER_URL, VIP_SELECTION_ID
from models.flow import RequestDetails, Sender
from models.settings import Settings
from models.validation import Problem, check_flow

CATALOGUE = ActionCatalogue(
    forms={
        1: OwnActions(
            name="Webinar sign-up",
            actions=[
                OwnAction(kind="add_to_selection", selection_id=3),
                OwnAction(kind="add_interest", interest="Webinars"),
                OwnAction(
                    kind="send_reply_email",
                    reply=ReplyDetails(
                        sender=Sender(address="events@example.com"),
                        subject="Thanks",
                        text="See you",
                    ),
                ),
            ],
        ),
        2: OwnActions(name="Unused", actions=[OwnAction(kind="add_to_selection", selection_id=4)]),
    },
    links={
        "https://example.com/offer": OwnActions(
            name="Offer",
            actions=[
                OwnAction(kind="set_extra_field", field="x_vip", value="true"),
                OwnAction(
                    kind="create_request",
                    request=RequestDetails(
                        title="Call",
                        request_type="Support",
                        status="New",
                        category="General",
                        priority="Low",
                    ),
                ),
                OwnAction(kind="remove_from_project", project_id=1),
                OwnAction(kind="run_script", script="sync_webinar_attendee"),
            ],
        )
    },
)


def flow(steps: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    return {"id": "overlap", "name": "Overlap", "start": steps[0]["id"], "steps": steps, **settings}


def warnings(document: dict[str, Any], catalogue: ActionCatalogue = CATALOGUE) -> list[Problem]:
    report = check_flow(document, actions=catalogue)
    assert report.can_save, report.problems
    return [p for p in report.problems if p.level == "warning"]


DONE = {"id": "done", "type": "finish"}


def test_a_step_doing_what_the_triggering_form_does_is_a_duplicate() -> None:
    document = flow(
        [
            {"id": "tag", "type": "add_to_list", "selection_id": 3, "next": "like"},
            {
                "id": "like",
                "type": "update_contact",
                "rows": [{"field": "interests", "action": "remove", "value": ["Webinars"]}],
                "next": "done",
            },
            DONE,
        ],
        triggers=[{"kind": "form_submitted", "form_id": 1}],
    )
    source = "form 1 ('Webinar sign-up', used in triggers.0)"
    assert warnings(document) == [
        Problem(
            "warning",
            "tag",
            "selection_id",
            f"{source} also adds the contact to selection 3, as this step does: whichever comes "
            "second changes nothing",
        ),
        Problem(
            "warning",
            "like",
            "rows.0.value",
            f"{source} adds the contact to interest 'Webinars', and this step removes the contact "
            "from interest 'Webinars': they undo each other",
        ),
    ]


def test_links_waited_for_split_on_or_counted_as_success_are_checked_too() -> None:
    document = flow(
        [
            {
                "id": "wait",
                "type": "wait_for_action",
                "actions": [
                    {
                        "kind": "link_clicked",
                        "email_step": "done",
                        "link": "https://example.com/offer",
                    }
                ],
                "next": "vip",
            },
            {
                "id": "vip",
                "type": "update_contact",
                "rows": [{"field": "extra.x_vip", "action": "set", "value": False}],
                "next": "ticket",
            },
            {
                "id": "ticket",
                "type": "create_request",
                "title": "Call",
                "request_type": "Support",
                "status": "New",
                "category": "General",
                "priority": "Low",
                "next": "join",
            },
            {"id": "join", "type": "add_to_list", "project_id": 1, "next": "sync"},
            {"id": "sync", "type": "run_script", "script": "sync_webinar_attendee", "next": "done"},
            DONE,
        ],
        success={"criteria": [{"kind": "link_clicked", "link": "https://example.com/offer"}]},
    )
    found = {(p.step, p.field): p.message for p in warnings(document)}
    assert set(found) == {
        ("vip", "rows.0.value"),
        ("ticket", "request_type"),
        ("join", "project_id"),
        ("sync", "script"),
    }
    source = "link 'https://example.com/offer' ('Offer', used in success.criteria.0, step 'wait')"
    assert found["vip", "rows.0.value"] == (
        f"{source} sets extra field 'x_vip' to 'true', and this step sets extra field 'x_vip' to "
        "'False': they undo each other"
    )
    assert found["ticket", "request_type"] == (
        f"{source} also creates a request, as this step does: the contact gets two"
    )
    assert found["sync", "script"] == (
        f"{source} also runs a script 'sync_webinar_attendee', as this step does: it runs twice"
    )
    assert (
        "removes the contact from project 1, and this step adds the contact to project 1"
        in found["join", "project_id"]
    )


def test_no_overlap_no_warning() -> None:
    document = flow(
        [
            {"id": "tag", "type": "add_to_list", "selection_id": 4, "next": "done"},
            {"id": "done", "type": "finish", "add_to_selection": 3},
        ],
        triggers=[{"kind": "form_submitted", "form_id": 9}],  # a form the catalogue lacks
    )
    assert warnings(document) == []
    assert warnings(document, ActionCatalogue()) == []
    assert [p for p in check_flow(document).problems if p.level == "warning"] == []


def test_exit_handoffs_count_as_steps_adding_to_a_selection() -> None:
    document = flow(
        [
            {
                "id": "sort",
                "type": "split",
                "basis": "form_submitted",
                "form_id": 1,
                "branches": [
                    {"name": "yes", "submitted": True, "next": "done"},
                    {"name": "no", "submitted": False, "next": "done"},
                ],
                "everyone_else": {"exit": {"add_to_selection": 3}},
            },
            {"id": "done", "type": "finish", "add_to_selection": 3},
        ]
    )
    assert [(p.step, p.field) for p in warnings(document)] == [
        ("sort", "everyone_else.exit.add_to_selection"),
        ("done", "add_to_selection"),
    ]


def test_the_starter_warns_with_the_forms_and_links_in_the_database(
    engine: Engine,
    settings_env: Callable[..., Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings_env(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    document = flow(
        [
            {
                "id": "vip",
                "type": "add_to_list",
                "selection_id": VIP_SELECTION_ID,
                "next": "spring",
            },
            {
                "id": "spring",
                "type": "remove_from_list",
                "project_id": DEMO_PROJECT_ID,
                "next": "done",
            },
            DONE,
        ],
        triggers=[
            {"kind": "form_submitted", "form_id": DEMO_FORM_ID},
            {"kind": "link_clicked", "link": SPRING_OFFER_URL},
        ],
    )
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(document))
    assert starter.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: step 'vip', selection_id: form {DEMO_FORM_ID} ('Webinar sign-up'" in out
    assert "warning: step 'spring', project_id: link" in out and "undo each other" in out
    assert "valid, ready to run" in out


def test_an_action_without_its_details_is_reported_and_skipped(engine: Engine) -> None:
    with session(engine) as db:
        db.add(
            Form(
                name="Callback",
                actions=[
                    {"kind": "add_interest", "interest": "Calls"},
                    {"kind": "create_follow_up"},
                    {"kind": "send_reply_email", "reply": {"from": {"address": "a@example.com"}}},
                ],
            )
        )
        db.flush()
        catalogue = action_catalogue(db)
    [(form_id, own)] = [(k, v) for k, v in catalogue.forms.items() if v.name == "Callback"]
    assert [action.kind for action in own.actions] == ["add_interest"]
    document = flow([DONE], triggers=[{"kind": "form_submitted", "form_id": form_id}])
    source = f"form {form_id} ('Callback', used in triggers.0)"
    assert [(p.step, p.message) for p in warnings(document, catalogue)] == [
        (
            None,
            f"{source}: action 1: a create_follow_up action needs its details in 'follow_up'; "
            "it is skipped when carried out",
        ),
        (
            None,
            f"{source}: action 2: reply.subject: Field required; it is skipped when carried out",
        ),
    ]
