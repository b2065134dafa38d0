"""update_contact rows (models.contact_update): the actions each field type allows, the values they
take, what they do, and how validation names the step and row of a mistake."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from models.contact_update import apply_row, row_problems
from models.crm import Company, Contact
from models.flow import UpdateRow
from models.validation import Problem, check_flow


def row(**fields: Any) -> UpdateRow:
    return UpdateRow.model_validate(fields)


def karin() -> Contact:
    return Contact(
        first_name="Karin",
        last_name="Svensson",
        title="Marketing manager, Nordic managers' club",
        email="karin@example.com",
        emails=["karin@example.org", "ks@example.net"],
        phones=["+46812345601"],
        category="Decision maker",
        interests=["Webinars", "Product news"],
        subscriptions=["newsletter"],
        consents=[{"purpose": "emarketing", "legal_basis": "consent", "source": "", "comment": ""}],
        user_defined={"score": 82, "birthday": "1985-04-12"},
        extra_fields={"x_lead_source": "webinar"},
    )


def applied(contact: Contact, **fields: Any) -> str | None:
    return apply_row(contact, row(**fields))


# --- what each type of field does --------------------------------------------------------------


def test_text_set_clear_and_search_and_replace() -> None:
    contact = karin()
    assert applied(contact, field="department", action="set", value="Sales") is not None
    assert contact.department == "Sales"
    applied(contact, field="department", action="clear")
    assert contact.department is None
    applied(contact, field="first_name", action="clear")
    assert contact.first_name == ""  # a required column clears to empty text

    contact = karin()
    applied(contact, field="title", action="replace", find="manager", value="director")
    assert contact.title == "Marketing director, Nordic directors' club"
    contact = karin()
    applied(contact, field="title", action="replace", find="MANAGER", value="lead", match_case=True)
    assert contact.title == "Marketing manager, Nordic managers' club"  # case differs: no match
    applied(contact, field="title", action="replace", find="manager", value="lead", whole_word=True)
    assert contact.title == "Marketing lead, Nordic managers' club"  # "managers" is another word


def test_regex_replace_with_groups_and_case() -> None:
    contact = karin()
    applied(contact, field="first_name", action="regex_replace", find=r"^k(\w+)", value=r"C\1")
    assert contact.first_name == "Carin"
    applied(
        contact, field="last_name", action="regex_replace", find="^s", value="Z", match_case=True
    )
    assert contact.last_name == "Svensson"


def test_list_fields_select_and_clear() -> None:
    contact = karin()
    applied(contact, field="category", action="select", value="Customer")
    assert contact.category == "Customer"
    applied(contact, field="our_contact_id", action="select", value=3)
    assert contact.our_contact_id == 3
    applied(contact, field="our_contact_id", action="clear")
    assert contact.our_contact_id is None


def test_multi_value_fields() -> None:
    contact = karin()
    assert applied(contact, field="emails", action="add", value="KARIN@example.org") is None
    applied(contact, field="emails", action="add", value="karin@nordljus.example")
    assert contact.emails == ["karin@example.org", "ks@example.net", "karin@nordljus.example"]
    applied(contact, field="emails", action="remove", value="ks@example.net")
    assert contact.emails == ["karin@example.org", "karin@nordljus.example"]
    applied(contact, field="emails", action="replace", find="example.org", value="example.com")
    assert contact.emails == ["karin@example.com", "karin@nordljus.example"]
    applied(contact, field="emails", action="regex_replace", find=r"@.*\.example$", value="")
    assert contact.emails == ["karin@example.com", "karin"]
    applied(contact, field="emails", action="replace_with", value="only@example.com")
    assert contact.emails == ["only@example.com"]
    applied(contact, field="phones", action="clear")
    assert contact.phones == []


def test_interests_and_subscriptions_add_and_remove_items() -> None:
    contact = karin()
    applied(contact, field="interests", action="add", value=["webinars", "Durable workflows"])
    assert contact.interests == ["Webinars", "Product news", "Durable workflows"]
    applied(contact, field="interests", action="remove", value="product NEWS")
    assert contact.interests == ["Webinars", "Durable workflows"]
    applied(contact, field="subscriptions", action="remove", value=["newsletter"])
    assert contact.subscriptions == []


def test_consent_add_replaces_the_same_purpose_and_remove_takes_it_away() -> None:
    contact = karin()
    consent = {"purpose": "sms", "legal_basis": "consent", "source": "flow"}
    applied(contact, field="consents", action="add", value=consent)
    assert contact.consents[-1] == {**consent, "comment": ""}
    assert applied(contact, field="consents", action="add", value=consent) is None
    applied(
        contact,
        field="consents",
        action="add",
        value={"purpose": "emarketing", "legal_basis": "legitimate_interest"},
    )
    assert [(c["purpose"], c["legal_basis"]) for c in contact.consents] == [
        ("sms", "consent"),
        ("emarketing", "legitimate_interest"),
    ]
    applied(contact, field="consents", action="remove", value="sms")
    assert [c["purpose"] for c in contact.consents] == ["emarketing"]


def test_checkboxes_dates_numbers_and_extra_fields() -> None:
    contact = karin()
    applied(contact, field="no_mailings", action="check")
    assert contact.no_mailings is True
    applied(contact, field="user_defined.webinar_attended", action="toggle")
    assert contact.user_defined["webinar_attended"] is True
    applied(contact, field="user_defined.webinar_attended", action="toggle")
    assert contact.user_defined["webinar_attended"] is False
    applied(contact, field="user_defined.birthday", action="set", value="1985-04-13")
    applied(contact, field="user_defined.score", action="set", value=90)
    applied(contact, field="user_defined.budget", action="set", value=1250.5)
    applied(contact, field="extra.x_vip", action="set", value=True)
    applied(contact, field="extra.x_lead_source", action="clear")
    assert contact.user_defined == {
        "score": 90,
        "birthday": "1985-04-13",
        "webinar_attended": False,
        "budget": 1250.5,
    }
    assert contact.extra_fields == {"x_vip": True}


def test_company_rows_change_the_company() -> None:
    company = Company(name="Nordljus AB", category="Customer", website="http://nordljus.example")
    apply_row(company, row(target="company", field="category", action="select", value="Partner"))
    apply_row(
        company,
        row(
            target="company",
            field="website",
            action="regex_replace",
            find="^http:",
            value="https:",
        ),
    )
    assert (company.category, company.website) == ("Partner", "https://nordljus.example")


def test_a_row_that_changes_nothing_says_so() -> None:
    contact = karin()
    assert applied(contact, field="category", action="select", value="Decision maker") is None
    assert applied(contact, field="title", action="replace", find="nowhere", value="x") is None
    change = applied(contact, field="category", action="select", value="User")
    assert change == "category: 'Decision maker' → 'User'"


# --- what a row may not be ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"field": "shoe_size", "action": "set", "value": "42"}, "field", "no field 'shoe_size'"),
        ({"field": "user_defined.mood", "action": "set", "value": "ok"}, "field", "no field"),
        ({"field": "created_at", "action": "set", "value": "2026-01-01"}, "field", "no field"),
        ({"field": "category", "action": "set", "value": "x"}, "action", "'set' is not"),
        ({"field": "title", "action": "toggle"}, "action", "for a text field"),
        ({"field": "retired", "action": "toggle"}, "action", "(check, uncheck)"),
        ({"field": "user_defined.score", "action": "clear"}, "action", "a number field (set)"),
        ({"field": "interests", "action": "clear"}, "action", "(add, remove)"),
        ({"field": "extra.x_vip", "action": "toggle"}, "action", "an extra field (clear, set)"),
        ({"field": "title", "action": "set", "value": 3}, "value", "takes a text value"),
        ({"field": "title", "action": "set"}, "value", "set needs a value"),
        ({"field": "title", "action": "clear", "value": "x"}, "value", "clear takes no value"),
        ({"field": "our_contact_id", "action": "select", "value": "Anna"}, "value", "associate id"),
        ({"field": "our_contact_id", "action": "select", "value": True}, "value", "associate id"),
        ({"field": "emails", "action": "add", "value": "not-an-address"}, "value", "not an email"),
        ({"field": "interests", "action": "add", "value": []}, "value", "an item or a list"),
        ({"field": "consents", "action": "add", "value": "sms"}, "value", "{purpose, legal_basis"),
        (
            {"field": "consents", "action": "add", "value": {"purpose": "sms"}},
            "value",
            "legal_basis must be one of",
        ),
        (
            {"field": "consents", "action": "add", "value": {"purpose": "x", "basis": "consent"}},
            "value",
            "unknown consent keys: basis",
        ),
        ({"field": "user_defined.birthday", "action": "set", "value": "12/4"}, "value", "yyyy"),
        ({"field": "user_defined.score", "action": "set", "value": "90"}, "value", "a number"),
        ({"field": "user_defined.score", "action": "set", "value": 9.5}, "value", "whole numbers"),
        ({"field": "user_defined.budget", "action": "set", "value": False}, "value", "a number"),
        ({"field": "extra.x_vip", "action": "set", "value": "yes"}, "value", "true or false"),
        ({"field": "extra.x_last_webinar", "action": "set", "value": 20260520}, "value", "a date"),
        ({"field": "title", "action": "replace", "value": "x"}, "find", "replace needs find"),
        (
            {"field": "title", "action": "regex_replace", "find": "(unclosed", "value": "x"},
            "find",
            "not a regular expression",
        ),
        (
            {"field": "title", "action": "regex_replace", "find": "(a)", "value": r"\2"},
            "value",
            "not a valid replacement",
        ),
        ({"field": "title", "action": "set", "value": "x", "find": "y"}, "find", "only replace"),
    ],
)
def test_row_problems(fields: dict[str, Any], where: str, message: str) -> None:
    problems = row_problems(row(**fields))
    assert [p[0] for p in problems] == [where]
    assert message in problems[0][1]
    with pytest.raises(ValueError):
        apply_row(karin(), row(**fields))


def test_company_fields_are_their_own() -> None:
    assert row_problems(row(target="company", field="business", action="select", value="IT")) == []
    assert row_problems(row(target="contact", field="business", action="select", value="IT"))
    assert row_problems(row(target="company", field="interests", action="add", value="x"))


# --- in a flow ---------------------------------------------------------------------------------

FLOW: dict[str, Any] = {
    "id": "updates",
    "name": "Updates",
    "start": "mark",
    "steps": [
        {
            "id": "mark",
            "type": "update_contact",
            "next": "done",
            "rows": [
                {"field": "title", "action": "set", "value": "CTO"},
                {"field": "category", "action": "toggle"},
                {"field": "first_name", "action": "regex_replace", "find": "[", "value": "x"},
                {"field": "user_defined.score", "action": "set", "value": "high"},
                {"field": "shoe_size", "action": "set", "value": 42, "enabled": False},
            ],
        },
        {"id": "done", "type": "finish"},
    ],
}


def test_validation_names_the_step_and_the_row() -> None:
    report = check_flow(copy.deepcopy(FLOW))
    assert [(p.level, p.step, p.field) for p in report.problems] == [
        ("error", "mark", "rows.1.action"),
        ("error", "mark", "rows.2.find"),
        ("error", "mark", "rows.3.value"),
    ]
    assert not report.can_save
    assert str(report.problems[1]).startswith(
        "error: step 'mark', rows.2.find: not a regular expression"
    )


def test_a_flow_of_valid_rows_can_run() -> None:
    document = copy.deepcopy(FLOW)
    document["steps"][0]["rows"] = [
        {"field": "title", "action": "replace", "find": "cto", "value": "CTO", "whole_word": True},
        {"target": "company", "field": "category", "action": "select", "value": "Customer"},
        {"field": "interests", "action": "add", "value": ["Durable workflows"]},
    ]
    report = check_flow(document)
    assert report.problems == []
    assert report.can_run


def test_an_unticked_row_is_not_checked() -> None:
    document = copy.deepcopy(FLOW)
    document["steps"][0]["rows"] = [FLOW["steps"][0]["rows"][4]]
    assert check_flow(document).problems == []
    assert Problem("error", "mark", "rows.0.field", "x") not in check_flow(document).problems
