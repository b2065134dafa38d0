"""Regular expressions from flow documents (models.patterns): linear-time matching on RE2, with
Python's meaning of ``\\w``, ``\\d`` and ``\\s``; what RE2 cannot take is refused at validate with
the reason, and is a clear outcome at run time; texts are capped."""

from __future__ import annotations

import re
from typing import Any

import pytest

from models.contact_update import apply_row, row_problems
from models.criteria import Condition, Criteria, Operator, evaluate
from models.crm import Contact
from models.flow import UpdateRow
from models.patterns import MAX_TEXT_LENGTH, PatternError, compile_pattern
from models.validation import check_flow

# Backtracking engines take time exponential in the text for this pattern (2.7 s at 25
# characters, doubling with each one more); RE2 takes microseconds.
CATASTROPHIC = r"^(\w+\s?)*$"
HOSTILE_TEXT = "a" * 40 + "!"


def matches(pattern: str, text: object, *, match_case: bool = False) -> bool:
    condition = Condition(
        field="contact.title", operator=Operator.matches, value=pattern, match_case=match_case
    )
    return evaluate(Criteria(conditions=[condition]), {"contact.title": text})


def replaced(text: str, find: str, value: str, **fields: Any) -> str:
    contact = Contact(first_name="Karin", last_name="Svensson", title=text)
    row = UpdateRow(field="title", action="regex_replace", find=find, value=value, **fields)
    apply_row(contact, row)
    assert contact.title is not None
    return contact.title


# --- no pattern holds a worker -----------------------------------------------------------------


@pytest.mark.timeout(10)
def test_a_catastrophic_pattern_in_a_criterion_answers_at_once() -> None:
    assert matches(CATASTROPHIC, HOSTILE_TEXT) is False
    assert matches(CATASTROPHIC, "Head of sales") is True


@pytest.mark.timeout(10)
def test_a_catastrophic_pattern_in_an_update_row_answers_at_once() -> None:
    assert replaced(HOSTILE_TEXT, CATASTROPHIC, "x") == HOSTILE_TEXT
    assert replaced("Head of sales", CATASTROPHIC, "x") == "x"


# --- what RE2 cannot take is refused at validate, with the reason --------------------------------


def flow_with(*, criterion: str | None = None, find: str | None = None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    if criterion is not None:
        condition = {"field": "contact.title", "operator": "matches", "value": criterion}
        branch = {"name": "Hit", "next": "done", "criteria": {"conditions": [condition]}}
        steps.append(
            {
                "id": "choose",
                "type": "split",
                "branches": [branch],
                "everyone_else": {"next": "done"},
            }
        )
    if find is not None:
        row = {"field": "title", "action": "regex_replace", "find": find, "value": "x"}
        steps.append({"id": "update", "type": "update_contact", "next": "done", "rows": [row]})
    steps.append({"id": "done", "type": "finish"})
    return {"id": "patterns", "name": "Patterns", "start": steps[0]["id"], "steps": steps}


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(\w)\1", "backreferences are not supported"),
        (r"(?P<c>\w)(?P=c)", "backreferences are not supported"),
        (r"(?<=Mr )\w+", "look-behind (?<=…) is not supported"),
        (r"CEO(?! of)", "look-ahead (?!…) is not supported"),
        ("x" * 1001, "a regular expression has at most 1,000 characters"),
    ],
)
def test_a_pattern_re2_cannot_take_is_refused_with_the_reason(pattern: str, reason: str) -> None:
    report = check_flow(flow_with(criterion=pattern))
    [problem] = report.problems
    assert (problem.step, problem.field) == ("choose", "branches.0.criteria.conditions.0.value")
    assert problem.message.startswith(f"not a regular expression: {reason}")
    [problem] = check_flow(flow_with(find=pattern)).problems
    assert (problem.step, problem.field) == ("update", "rows.0.find")
    assert problem.message.startswith(f"not a regular expression: {reason}")


def test_a_pattern_stored_before_the_rule_never_matches_and_its_row_fails() -> None:
    assert matches(r"(\w)\1", "Anna") is False
    contact = Contact(first_name="Anna", last_name="Berg", title="Anna")
    with pytest.raises(ValueError, match="backreferences are not supported"):
        apply_row(
            contact, UpdateRow(field="title", action="regex_replace", find=r"(n)\1", value="")
        )


# --- Python's meaning, on RE2 --------------------------------------------------------------------


@pytest.mark.parametrize("shorthand", ["w", "W", "d", "D", "s", "S"])
def test_shorthand_classes_mean_what_python_means(shorthand: str) -> None:
    """Every character of the Basic Multilingual Plane, outside and inside a class."""
    patterns = [f"^\\{shorthand}$"]
    if shorthand in "wdsD":  # \W and \S inside a class are refused (RE2 cannot say them there)
        patterns.append(f"^[#\\{shorthand}]$")
    for pattern in patterns:
        ours, python = compile_pattern(pattern), re.compile(pattern)
        differ = [
            hex(code)
            for code in range(0x10000)
            if not 0xD800 <= code < 0xE000
            and ours.search(chr(code)) != bool(python.search(chr(code)))
        ]
        assert differ == [], pattern


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (r"^\w+$", "Åsa", True),
        (r"^\w+$", "Åsa-Lena", False),
        (r"^[\w-]+$", "Åsa-Lena", True),
        (r"^\d+$", "٣٤", True),  # Arabic-Indic digits are digits to Python
        (r"^åsa$", "ÅSA", True),  # case-insensitive unless match_case, in every script
        (r"^\u00c5sa\Z", "Åsa", True),  # Python's \u escape and \Z
        (r"(?i)^head", "HEAD of sales", True),
    ],
)
def test_patterns_mean_what_they_meant(pattern: str, text: str, expected: bool) -> None:
    assert matches(pattern, text) is expected
    assert bool(re.search(pattern, text, re.IGNORECASE)) is expected


@pytest.mark.parametrize(
    ("text", "find", "value", "expected"),
    [
        ("Karin", r"^K(\w+)", r"C\1", "Carin"),
        ("Karin", r"^k(?P<rest>\w+)", r"Å\g<rest>", "Åarin"),  # non-ASCII replacement text
        ("Karin", r"^(K)(x)?", r"[\2]\g<1>\n", "[]K\narin"),  # an unmatched group is empty
        ("a.b", r"\.", r"\\", "a\\b"),
        ("abxd", "x*", "-", "-a-b--d-"),  # empty matches as re.sub places them
    ],
)
def test_replacements_read_as_re_sub_reads_them(
    text: str, find: str, value: str, expected: str
) -> None:
    assert re.sub(find, value, text, flags=re.IGNORECASE) == expected
    assert replaced(text, find, value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (r"\2", "invalid group reference 2"),
        (r"\g<name>", "unknown group name 'name'"),
        (r"\q", "bad escape \\q"),
        ("\\", "bad escape (end of replacement)"),
    ],
)
def test_a_bad_replacement_is_refused(value: str, message: str) -> None:
    row = UpdateRow(field="title", action="regex_replace", find="(a)", value=value)
    assert row_problems(row) == [("value", f"not a valid replacement: {message}")]
    with pytest.raises((re.error, IndexError)):  # as Python's re refuses it
        re.sub("(a)", value, "a")


# --- texts are capped ----------------------------------------------------------------------------


def test_a_criterion_reads_the_first_ten_thousand_characters() -> None:
    long_text = "x" * MAX_TEXT_LENGTH + "needle"
    assert matches("needle", long_text) is False
    assert matches("needle", "x" * (MAX_TEXT_LENGTH - 6) + "needle") is True


def test_an_update_row_refuses_a_text_longer_than_the_cap_or_a_result_that_would_be() -> None:
    with pytest.raises(ValueError, match="longer than regular expressions read"):
        replaced("x" * (MAX_TEXT_LENGTH + 1), "x", "y")
    with pytest.raises(ValueError, match="would be longer than 10,000 characters"):
        replaced("ab" * 3000, "(a)", r"\1\1\1")
    assert replaced("ab" * 3000, "(a)", r"\1\1") == "aab" * 3000


def test_compile_errors_are_pattern_errors_and_value_errors() -> None:
    with pytest.raises(PatternError):
        compile_pattern("(unclosed")
    assert issubclass(PatternError, ValueError)
