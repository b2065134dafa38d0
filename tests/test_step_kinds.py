"""The step kinds are listed once, by the ``Step`` union; everything else that names kinds derives
from it. These checks fail when a kind is left out of one of those places. (That the workflow's
dispatch, ``workflows.steps.run_step``, handles every kind is proven by mypy.)"""

from __future__ import annotations

import inspect
import typing

from models.flow import STEP_GROUPS, STEP_KINDS, STEP_MODELS, StepGroup
from reports.diagram import GROUP_COLOURS
from workflows import steps


def test_every_kind_has_one_model_and_one_tag() -> None:
    assert len(STEP_KINDS) == len(set(STEP_KINDS)) == len(STEP_MODELS) == 16
    for model, kind in zip(STEP_MODELS, STEP_KINDS, strict=True):
        assert typing.get_args(model.model_fields["type"].annotation) == (kind,)


def test_every_kind_belongs_to_one_group() -> None:
    for model in STEP_MODELS:
        assert isinstance(getattr(model, "group", None), StepGroup), model.__name__
    grouped = [kind for kinds in STEP_GROUPS.values() for kind in kinds]
    assert sorted(grouped) == sorted(STEP_KINDS)
    assert all(STEP_GROUPS[group] for group in StepGroup), "a group without kinds"


def test_every_group_has_a_colour_in_the_diagram() -> None:
    assert set(GROUP_COLOURS) == set(StepGroup)


def test_every_kind_has_its_step_function() -> None:
    """One function per kind in workflows/steps.py, named after the kind, taking its model."""
    for model, kind in zip(STEP_MODELS, STEP_KINDS, strict=True):
        function = getattr(steps, kind, None)
        assert function is not None and inspect.iscoroutinefunction(function), kind
        assert typing.get_type_hints(function)["step"] is model, kind
