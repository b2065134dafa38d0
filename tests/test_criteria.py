"""Tests for models.criteria.evaluate: the rules behind a flow's filter and a data split.

Facts are the flat dictionary that models.crm.contact_facts builds; here they are written by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models.criteria import Condition, Criteria, Operator, Scalar, evaluate

FACTS: dict[str, object] = {
    "contact.first_name": "Åsa",
    "contact.email": "asa.lindstrom@nordlys.example",
    "contact.title": "Head of Marketing",
    "contact.department": "",
    "contact.mobile": None,
    "contact.no_mailings": False,
    "contact.interests": ["Durable workflows", "Email marketing"],
    "contact.selections": [5, 12],
    "contact.projects": [],
    "contact.created_at": "2026-03-14T09:30:00+00:00",
    "contact.user_defined.lead_score": 42,
    "contact.user_defined.visits": 0,
    "contact.user_defined.budget": "12500.50",
    "contact.extra.postcode": "01234",
    "company.name": "Nordlys AB",
    "company.country": "Sweden",
    "company.business": "Großhandel",
    "company.user_defined.employees": 250.0,
}


def holds(
    field: str,
    operator: str,
    value: Scalar | list[Scalar] = None,
    *,
    match_case: bool = False,
    facts: dict[str, object] = FACTS,
) -> bool:
    condition = Condition(
        field=field, operator=Operator(operator), value=value, match_case=match_case
    )
    return evaluate(Criteria(conditions=[condition]), facts)


# --- each operator -----------------------------------------------------------------------------

Case = tuple[str, str, Any, bool]


def cases(*rows: Case) -> list[Any]:
    return [pytest.param(*row, id=f"{row[0]} {row[1]} {row[2]!r}") for row in rows]


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    cases(
        ("contact.first_name", "equals", "Åsa", True),
        ("contact.first_name", "equals", "Asa", False),
        ("company.country", "equals", "Norway", False),
        ("company.country", "not_equals", "Norway", True),
        ("company.country", "not_equals", "Sweden", False),
        ("contact.email", "contains", "@nordlys.", True),
        ("contact.email", "contains", "acme", False),
        ("contact.email", "not_contains", "acme", True),
        ("contact.email", "not_contains", "lindstrom", False),
        ("contact.title", "starts_with", "Head of", True),
        ("contact.title", "starts_with", "Marketing", False),
        ("contact.email", "ends_with", ".example", True),
        ("contact.email", "ends_with", ".se", False),
        ("contact.department", "is_empty", None, True),
        ("contact.mobile", "is_empty", None, True),
        ("contact.projects", "is_empty", None, True),
        ("contact.title", "is_empty", None, False),
        ("contact.user_defined.visits", "is_empty", None, False),  # 0 is a value
        ("contact.no_mailings", "is_empty", None, False),  # so is False
        ("contact.department", "is_not_empty", None, False),
        ("contact.interests", "is_not_empty", None, True),
        ("contact.user_defined.lead_score", "greater_than", 40, True),
        ("contact.user_defined.lead_score", "greater_than", 42, False),
        ("contact.user_defined.lead_score", "less_than", 50, True),
        ("contact.user_defined.lead_score", "less_than", 42, False),
        ("company.country", "one_of", ["Norway", "Sweden"], True),
        ("company.country", "one_of", ["Norway", "Denmark"], False),
        ("company.country", "one_of", "Sweden", True),  # a single value is a list of one
        ("contact.email", "matches", r"^[a-z.]+@nordlys\.example$", True),
        ("contact.email", "matches", r"^\d", False),
        ("contact.title", "matches", "of (sales|marketing)", True),  # re.search, not fullmatch
    ),
)
def test_each_operator(field: str, operator: str, value: Any, expected: bool) -> None:
    assert holds(field, operator, value) is expected


def test_every_operator_is_covered() -> None:
    covered = {"equals", "not_equals", "contains", "not_contains", "starts_with", "ends_with"}
    covered |= {"is_empty", "is_not_empty", "greater_than", "less_than", "one_of", "matches"}
    assert {op.value for op in Operator} == covered


# --- match all / any ---------------------------------------------------------------------------

SWEDEN = Condition(field="company.country", operator=Operator.equals, value="Sweden")
NORWAY = Condition(field="company.country", operator=Operator.equals, value="Norway")
HOT = Condition(field="contact.user_defined.lead_score", operator=Operator.greater_than, value=40)


@pytest.mark.parametrize(
    ("match", "conditions", "expected"),
    [
        ("all", [SWEDEN, HOT], True),
        ("all", [SWEDEN, NORWAY], False),
        ("all", [NORWAY, HOT], False),
        ("any", [NORWAY, HOT], True),
        ("any", [SWEDEN, NORWAY], True),
        ("any", [NORWAY], False),
        ("all", [SWEDEN], True),
    ],
)
def test_match_all_or_any(match: str, conditions: list[Condition], expected: bool) -> None:
    criteria = Criteria.model_validate({"match": match, "conditions": conditions})
    assert evaluate(criteria, FACTS) is expected


def test_match_defaults_to_all() -> None:
    assert Criteria(conditions=[SWEDEN]).match == "all"
    assert evaluate(Criteria(conditions=[SWEDEN, NORWAY]), FACTS) is False


# --- case folding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "operator", "value"),
    [
        ("contact.first_name", "equals", "ÅSA"),
        ("company.business", "equals", "GROSSHANDEL"),  # casefold, not lower: ß == ss
        ("contact.email", "contains", "NORDLYS"),
        ("contact.title", "starts_with", "HEAD"),
        ("contact.email", "ends_with", ".EXAMPLE"),
        ("company.country", "one_of", ["norway", "SWEDEN"]),
        ("contact.title", "matches", "^head of"),
        ("contact.interests", "equals", "email MARKETING"),
    ],
)
def test_case_is_ignored_unless_asked(field: str, operator: str, value: Any) -> None:
    assert holds(field, operator, value) is True
    assert holds(field, operator, value, match_case=True) is False


def test_negative_operators_honour_case_too() -> None:
    assert holds("company.country", "not_equals", "SWEDEN") is False
    assert holds("company.country", "not_equals", "SWEDEN", match_case=True) is True
    assert holds("contact.email", "not_contains", "NORDLYS") is False
    assert holds("contact.email", "not_contains", "NORDLYS", match_case=True) is True


# --- list-valued facts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    cases(
        # Any item decides for the positive operators ...
        ("contact.interests", "equals", "Email marketing", True),
        ("contact.interests", "equals", "Email", False),
        ("contact.interests", "contains", "workflow", True),
        ("contact.interests", "starts_with", "Durable", True),
        ("contact.interests", "ends_with", "SMS", False),
        ("contact.interests", "one_of", ["SMS", "durable workflows"], True),
        ("contact.interests", "matches", "^email", True),
        # ... and no item may match for the negative ones.
        ("contact.interests", "not_equals", "Email marketing", False),
        ("contact.interests", "not_equals", "SMS", True),
        ("contact.interests", "not_contains", "EMAIL", False),
        ("contact.interests", "not_contains", "sms", True),
        ("contact.selections", "equals", 12, True),
        ("contact.selections", "equals", "12", True),
        ("contact.selections", "equals", 7, False),
        ("contact.selections", "one_of", [3, 5], True),
        ("contact.selections", "one_of", [3, 4], False),
        ("contact.selections", "not_equals", 7, True),
        ("contact.selections", "not_equals", 5, False),
        ("contact.selections", "greater_than", 10, True),
        ("contact.selections", "less_than", 5, False),
        # An empty list holds nothing.
        ("contact.projects", "equals", 3, False),
        ("contact.projects", "one_of", [3], False),
        ("contact.projects", "contains", "3", False),
        ("contact.projects", "not_equals", 3, True),
        ("contact.projects", "not_contains", "3", True),
    ),
)
def test_list_valued_facts(field: str, operator: str, value: Any, expected: bool) -> None:
    assert holds(field, operator, value) is expected


# --- numbers and strings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    cases(
        # A number equals the same number, however it is written.
        ("contact.user_defined.lead_score", "equals", 42, True),
        ("contact.user_defined.lead_score", "equals", "42", True),
        ("contact.user_defined.lead_score", "equals", 42.0, True),
        ("contact.user_defined.lead_score", "equals", "42.0", True),
        ("contact.user_defined.lead_score", "equals", 43, False),
        ("contact.user_defined.lead_score", "not_equals", "42.0", False),
        ("contact.user_defined.lead_score", "one_of", ["41", "42"], True),
        ("company.user_defined.employees", "equals", 250, True),
        ("company.user_defined.employees", "equals", "250", True),
        ("contact.user_defined.budget", "equals", 12500.5, True),
        # Two texts compare as text: a postcode keeps its leading zero.
        ("contact.extra.postcode", "equals", "1234", False),
        ("contact.extra.postcode", "equals", "01234", True),
        ("contact.user_defined.budget", "equals", "12500.5", False),
        # A checkbox is not a number.
        ("contact.no_mailings", "equals", False, True),
        ("contact.no_mailings", "equals", True, False),
        ("contact.no_mailings", "equals", 0, False),
        ("contact.no_mailings", "equals", "false", True),
        # Ordering compares numbers as numbers, even when both are written as text ...
        ("contact.user_defined.budget", "greater_than", "9999", True),
        ("contact.user_defined.budget", "greater_than", 12500.5, False),
        ("contact.user_defined.lead_score", "greater_than", "41.5", True),
        ("company.user_defined.employees", "less_than", "1000", True),
        # ... and other text as text, which orders ISO dates correctly.
        ("contact.created_at", "greater_than", "2026-01-01", True),
        ("contact.created_at", "less_than", "2026-03-14T09:00", False),
        ("contact.created_at", "less_than", "2026-03-15", True),
        # Text operators read a number as its digits.
        ("contact.user_defined.lead_score", "contains", 4, True),
        ("contact.user_defined.lead_score", "starts_with", "42", True),
        ("contact.user_defined.lead_score", "matches", r"^\d+$", True),
    ),
)
def test_numbers_and_strings(field: str, operator: str, value: Any, expected: bool) -> None:
    assert holds(field, operator, value) is expected


# --- missing facts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("equals", "x", False),
        ("equals", 0, False),
        ("not_equals", "x", True),
        ("contains", "x", False),
        ("not_contains", "x", True),  # like an empty text or an empty list
        ("starts_with", "x", False),
        ("ends_with", "x", False),
        ("matches", ".*", False),
        ("greater_than", 0, False),
        ("less_than", 0, False),
        ("one_of", ["x", 0], False),
        ("is_empty", None, True),
        ("is_not_empty", None, False),
    ],
)
@pytest.mark.parametrize("facts", [{}, {"company.name": None}], ids=["absent", "null (no company)"])
def test_missing_facts(operator: str, value: Any, expected: bool, facts: dict[str, object]) -> None:
    assert holds("company.name", operator, value, facts=facts) is expected


def test_missing_facts_under_match_any_and_all() -> None:
    conditions = [
        SWEDEN,
        Condition(field="contact.mobile", operator=Operator.starts_with, value="+46"),
    ]
    assert evaluate(Criteria(match="any", conditions=conditions), FACTS) is True
    assert evaluate(Criteria(match="all", conditions=conditions), FACTS) is False


def test_evaluation_leaves_the_facts_alone() -> None:
    facts: dict[str, object] = {"contact.interests": ["A", "b"], "company.name": "Nordlys AB"}
    before = {k: list(v) if isinstance(v, list) else v for k, v in facts.items()}
    holds("contact.interests", "equals", "a", facts=facts)
    holds("company.name", "contains", "NORDLYS", facts=facts)
    assert facts == before


# --- the models --------------------------------------------------------------------------------


def test_criteria_need_at_least_one_condition() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        Criteria(conditions=[])


def test_conditions_refuse_unknown_keys_and_operators() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Condition.model_validate({"field": "company.name", "operator": "equals", "valeu": "x"})
    with pytest.raises(ValidationError, match="operator"):
        Condition.model_validate({"field": "company.name", "operator": "like", "value": "x"})


def test_condition_values_keep_their_kind() -> None:
    values = [42, "42", 4.5, True, None, ["a", 1]]
    kinds = [Condition(field="f", operator=Operator.equals, value=v).value for v in values]
    assert kinds == values
    assert [type(k) for k in kinds] == [type(v) for v in values]
