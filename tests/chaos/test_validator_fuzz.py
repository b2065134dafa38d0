"""Fuzz the flow-definition validator: random documents and mutations of the example flows get a
clear report (a valid flow, or problems of one line each), never an exception.

``check_flow`` is what `starter.py validate`, `deploy` and enrollment run on documents people
write by hand, so whatever the JSON holds it must answer with a report.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.flow import Flow
from models.validation import FlowReport, check_flow

pytestmark = pytest.mark.chaos

FLOWS = Path(__file__).resolve().parents[2] / "flows"
EXAMPLES = {
    name: json.loads((FLOWS / name).read_text()) for name in ("every-step.json", "welcome.json")
}
STEP_TYPES = sorted(
    {str(step["type"]) for document in EXAMPLES.values() for step in document["steps"]}
)
# Keys the documents use anywhere: mutations put them where they do not belong, too.
KEYS = sorted(
    {
        key
        for document in EXAMPLES.values()
        for key in json.dumps(document).split('"')[1::2]
        if key.isidentifier()
    }
)

# Bounded: about 20 s for the whole module on a 2-core machine. New examples on every local run;
# in CI (CI=true) the same ones every time, so a submission is never failed by the draw.
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # no .hypothesis folder in the work tree; failures print their example
    derandomize=os.environ.get("CI") == "true",
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from([*KEYS, *STEP_TYPES, "", " ", "\n", "[[customer.firstname]]", "[[nope"]),
    st.sampled_from(["2026-01-01T10:00:00", "2026-01-01T10:00:00+02:00", "25:99", "PT1H"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), inner, max_size=6),
    ),
    max_leaves=25,
)


def assert_clear(report: object) -> None:
    """A report whose problems each read as one line; no report without a flow and no error."""
    assert isinstance(report, FlowReport)
    assert report.flow is None or isinstance(report.flow, Flow)
    for problem in report.problems:
        text = str(problem)
        assert len(text.splitlines()) == 1 and text.strip(), repr(text)
        assert "Traceback" not in text, text
    if report.flow is None:
        assert report.errors, "no flow, and not one error saying why"
    assert isinstance(report.can_save, bool) and isinstance(report.can_run, bool)


@FUZZ
@given(json_values)
def test_any_json_value_gets_a_report(document: Any) -> None:
    assert_clear(check_flow(document))


flow_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "name": json_values,
        "time_zone": st.one_of(st.sampled_from(["UTC", "Europe/Stockholm", "Mars/Base"]), scalars),
        "start": json_values,
        "steps": st.lists(
            st.fixed_dictionaries(
                {"type": st.one_of(st.sampled_from(STEP_TYPES), scalars)},
                optional={key: json_values for key in ("id", "next", "amount", "unit", "text")},
            ),
            max_size=6,
        ),
        "email": json_values,
        "sending_window": json_values,
        "success": json_values,
        "filter": json_values,
    },
)


@settings(FUZZ, max_examples=150)  # the slowest kind to draw and to check
@given(flow_like)
def test_flow_shaped_documents_get_a_report(document: dict[str, Any]) -> None:
    assert_clear(check_flow(document))


# --- mutations of the example flows -------------------------------------------------------------


def _containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every dict and list in the document, the document itself first."""
    if not isinstance(value, dict | list):
        return []
    found = [path]
    for key, child in value.items() if isinstance(value, dict) else enumerate(value):
        found += _containers(child, (*path, key))
    return found


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    document: dict[str, Any] = copy.deepcopy(EXAMPLES[name])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        steps = document.get("steps") if isinstance(document, dict) else None
        steps = steps if isinstance(steps, list) else []
        step_dicts = [step for step in steps if isinstance(step, dict)]
        kind = draw(
            st.sampled_from(
                ["drop", "retype", "set", "duplicate_id", "dangling_next", "step_type", "copy_step"]
            )
        )
        if kind == "duplicate_id" and len(step_dicts) >= 2:
            first, second = draw(st.permutations(step_dicts))[:2]
            second["id"] = first.get("id")
        elif kind == "dangling_next" and step_dicts:
            step = draw(st.sampled_from(step_dicts))
            step["next"] = draw(st.one_of(st.text(max_size=12), scalars))
        elif kind == "step_type" and step_dicts:
            step = draw(st.sampled_from(step_dicts))
            step["type"] = draw(st.one_of(st.sampled_from(STEP_TYPES), st.text(max_size=12)))
        elif kind == "copy_step" and steps:
            twin = copy.deepcopy(draw(st.sampled_from(steps)))
            steps.insert(draw(st.integers(0, len(steps))), twin)
        else:
            container = _at(document, draw(st.sampled_from(_containers(document))))
            keys = list(container) if isinstance(container, dict) else list(range(len(container)))
            if not keys:
                continue
            key = draw(st.sampled_from(keys))
            if kind == "drop":
                del container[key]
            elif kind == "retype":  # the same place, a value of another kind
                before = type(container[key])
                replacement = draw(json_values)
                if type(replacement) is before:  # wrap it rather than draw again
                    replacement = {"value": replacement} if before is list else [replacement]
                container[key] = replacement
            else:
                container[key] = draw(json_values)
    return document


@settings(FUZZ, max_examples=800)  # the kind that found the crashes
@given(mutated())
def test_mutated_example_flows_get_a_report(document: dict[str, Any]) -> None:
    assert_clear(check_flow(document))


def test_the_examples_themselves_are_valid() -> None:
    for name, document in EXAMPLES.items():
        report = check_flow(copy.deepcopy(document))
        assert report.can_save, (name, [str(p) for p in report.problems])
