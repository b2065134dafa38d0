"""Contact/company criteria: the filter of a flow and the branches of a data split.

A criterion names a fact (``contact.first_name``, ``company.category``,
``contact.user_defined.score``) and compares it with a value. Facts come from
``models.crm.contact_facts``; evaluation is pure so the same rule gives the same answer in an
activity, a dry run or a test.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.patterns import PatternError, compile_pattern

Scalar = str | int | float | bool | None


class Operator(StrEnum):
    equals = "equals"
    not_equals = "not_equals"
    contains = "contains"
    not_contains = "not_contains"
    starts_with = "starts_with"
    ends_with = "ends_with"
    is_empty = "is_empty"
    is_not_empty = "is_not_empty"
    greater_than = "greater_than"
    less_than = "less_than"
    one_of = "one_of"
    matches = "matches"


# Operators that compare with nothing: a value given with them is a mistake worth reporting.
UNARY_OPERATORS = frozenset({Operator.is_empty, Operator.is_not_empty})


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(
        min_length=1, description="A fact name such as contact.email or company.name"
    )
    operator: Operator
    value: Scalar | list[Scalar] = None
    match_case: bool = False


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: Literal["all", "any"] = "all"
    conditions: list[Condition] = Field(min_length=1)


def _fold(value: object, match_case: bool) -> object:
    return value if match_case or not isinstance(value, str) else value.casefold()


def _number(value: object) -> float | None:
    """The value as a number: ints, floats and numeric text (booleans are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _same(fact: object, want: object, match_case: bool) -> bool:
    """Equality as a user means it: a number equals the same number written as text (5, 5.0 and
    "5"); everything else compares as text, case-folded unless ``match_case``."""
    if fact is None or want is None:
        return fact is want
    if isinstance(fact, int | float) or isinstance(want, int | float):
        left, right = _number(fact), _number(want)
        if left is not None and right is not None:
            return left == right
    return _fold(str(fact), match_case) == _fold(str(want), match_case)


def _is_empty(fact: object) -> bool:
    return fact is None or fact == "" or (isinstance(fact, list | tuple | dict) and not fact)


def _holds(condition: Condition, facts: dict[str, object]) -> bool:
    fact = facts.get(condition.field)
    op = condition.operator
    if op is Operator.is_empty:
        return _is_empty(fact)
    if op is Operator.is_not_empty:
        return not _is_empty(fact)
    want = condition.value
    if isinstance(fact, list):
        # A multi-value fact (interests, selections, e-mail addresses) holds if any item does.
        if op in (Operator.not_equals, Operator.not_contains):
            positive = Condition(
                field="item",
                operator=Operator.equals if op is Operator.not_equals else Operator.contains,
                value=want,
                match_case=condition.match_case,
            )
            return not any(_holds(positive, {"item": item}) for item in fact)
        item_condition = condition.model_copy(update={"field": "item"})
        return any(_holds(item_condition, {"item": item}) for item in fact)
    if op is Operator.one_of:
        options = want if isinstance(want, list) else [want]
        return any(_same(fact, option, condition.match_case) for option in options)
    if op is Operator.equals:
        return _same(fact, want, condition.match_case)
    if op is Operator.not_equals:
        return not _same(fact, want, condition.match_case)
    if fact is None:
        # A missing fact contains nothing, like an empty text or an empty list.
        return op is Operator.not_contains
    text = str(_fold(fact, condition.match_case))
    needle = str(_fold(want, condition.match_case))
    if op is Operator.contains:
        return needle in text
    if op is Operator.not_contains:
        return needle not in text
    if op is Operator.starts_with:
        return text.startswith(needle)
    if op is Operator.ends_with:
        return text.endswith(needle)
    if op is Operator.matches:
        return _matches(str(want), str(fact), condition.match_case)
    return _ordered(fact, want, op)


def _matches(pattern: str, text: str, match_case: bool) -> bool:
    try:
        compiled = compile_pattern(pattern, ignore_case=not match_case)
    except PatternError:
        return False  # validation refuses such a pattern; one stored before never matches
    return compiled.search(text)


def _ordered(fact: object, want: object, op: Operator) -> bool:
    try:
        left, right = float(fact), float(want)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        left_s, right_s = str(fact), str(want)  # ISO dates compare correctly as text
        return left_s > right_s if op is Operator.greater_than else left_s < right_s
    return left > right if op is Operator.greater_than else left < right


def evaluate(criteria: Criteria, facts: dict[str, object]) -> bool:
    results = (_holds(c, facts) for c in criteria.conditions)
    return all(results) if criteria.match == "all" else any(results)
