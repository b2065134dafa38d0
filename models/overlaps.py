"""Overlaps between a flow's steps and the own actions of the forms and links it uses (spec §5).

A form or tracked link acts on its own when it is submitted or clicked (``control.own_actions``
carries its actions out, before the flows hear of it): it may add the contact to a selection, set
an interest, run a script. A flow that is triggered by that form, waits for it, splits on it or
counts it as a success, and whose steps do the same thing (or the opposite), does it twice (or
undoes it). The product warns against that; validation reports each overlap as a warning on the
flow step concerned: a script runs twice; a request or follow-up is created twice; a membership,
an interest or a field set a second time is a step that changes nothing; opposite changes undo
each other. An action that is not valid (a request without its details, say) is warned about on
the flow as a whole: it is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from models.crm import ActionCatalogue, OwnAction, OwnActions
from models.flow import (
    AddToList,
    CreateFollowUp,
    CreateRequest,
    Finish,
    Flow,
    RemoveFromList,
    RunScript,
    SendSms,
    Split,
    SplitBasis,
    Step,
    UpdateContact,
    WaitForAction,
)

_OPPOSITE = {"add": "remove", "remove": "add"}


@dataclass(frozen=True)
class Effect:
    """One change to the contact: ``add``/``remove`` a selection, project or interest, ``set`` an
    extra field, ``run`` a script, ``create`` a request or follow-up."""

    verb: str
    what: str
    which: str | int | None = None
    value: str | None = None  # set: the value

    def __str__(self) -> str:
        which = f" {self.which!r}" if isinstance(self.which, str) else f" {self.which}"
        which = "" if self.which is None else which
        if self.verb == "add":
            return f"adds the contact to {self.what}{which}"
        if self.verb == "remove":
            return f"removes the contact from {self.what}{which}"
        if self.verb == "set":
            return f"sets {self.what}{which} to {self.value!r}"
        return f"{self.verb}s a {self.what}{which}"

    def same_target(self, other: Effect) -> bool:
        return (self.what, self.which) == (other.what, other.which)


def _own_effect(action: OwnAction) -> Effect | None:
    kind = action.kind
    if kind in ("add_to_selection", "remove_from_selection"):
        return Effect(kind.split("_", 1)[0], "selection", action.selection_id)
    if kind in ("add_to_project", "remove_from_project"):
        return Effect(kind.split("_", 1)[0], "project", action.project_id)
    if kind in ("add_interest", "remove_interest"):
        return Effect(kind.split("_", 1)[0], "interest", action.interest)
    if kind == "set_extra_field" and action.field is not None:
        return Effect("set", "extra field", action.field.removeprefix("extra."), action.value)
    if kind == "run_script":
        return Effect("run", "script", action.script)
    if kind == "create_request":
        return Effect("create", "request")
    if kind == "create_follow_up":
        return Effect("create", "follow-up")
    # A reply email answers the submission; a flow's emails are its own.
    return None


def _lists(verb: str, selection_id: int | None, project_id: int | None) -> Iterator[Effect]:
    if selection_id is not None:
        yield Effect(verb, "selection", selection_id)
    if project_id is not None:
        yield Effect(verb, "project", project_id)


def _step_effects(step: Step) -> Iterator[tuple[str, Effect]]:
    """(field, effect) for each change the step makes to the contact."""
    if isinstance(step, AddToList | RemoveFromList):
        verb = "add" if isinstance(step, AddToList) else "remove"
        for effect in _lists(verb, step.selection_id, step.project_id):
            yield f"{effect.what}_id", effect
    elif isinstance(step, UpdateContact):
        for index, row in enumerate(step.rows):
            if not row.enabled or row.target != "contact":
                continue
            if row.field == "interests" and row.action in _OPPOSITE:
                values = row.value if isinstance(row.value, list) else [row.value]
                for value in values:
                    yield f"rows.{index}.value", Effect(row.action, "interest", str(value))
            elif row.field.startswith("extra.") and row.action == "set":
                name = row.field.removeprefix("extra.")
                value = None if row.value is None else str(row.value)
                yield f"rows.{index}.value", Effect("set", "extra field", name, value)
    elif isinstance(step, RunScript):
        yield "script", Effect("run", "script", step.script)
    elif isinstance(step, CreateRequest):
        yield "request_type", Effect("create", "request")
    elif isinstance(step, CreateFollowUp):
        yield "follow_up_type", Effect("create", "follow-up")
    # Exit hand-offs add to a selection too.
    if isinstance(step, Finish) and step.add_to_selection is not None:
        yield "add_to_selection", Effect("add", "selection", step.add_to_selection)
    exits = {
        "exit": step.exit if isinstance(step, SendSms | WaitForAction) else None,
        "everyone_else.exit": step.everyone_else.exit if isinstance(step, Split) else None,
    }
    for where, handoffs in exits.items():
        if handoffs is not None and handoffs.add_to_selection is not None:
            effect = Effect("add", "selection", handoffs.add_to_selection)
            yield f"{where}.add_to_selection", effect


def _used(flow: Flow) -> Iterator[tuple[str, int | str, str]]:
    """("form", id, where) and ("link", url, where) for every use of a form or link."""
    for index, trigger in enumerate(flow.triggers):
        if trigger.form_id is not None:
            yield "form", trigger.form_id, f"triggers.{index}"
        if trigger.link is not None:
            yield "link", trigger.link, f"triggers.{index}"
    if flow.success is not None:
        for index, criterion in enumerate(flow.success.criteria):
            if criterion.form_id is not None:
                yield "form", criterion.form_id, f"success.criteria.{index}"
            if criterion.link is not None:
                yield "link", criterion.link, f"success.criteria.{index}"
    for step in flow.steps:
        if isinstance(step, WaitForAction):
            for action in step.actions:
                if action.form_id is not None:
                    yield "form", action.form_id, f"step {step.id!r}"
                if action.link is not None:
                    yield "link", action.link, f"step {step.id!r}"
        elif isinstance(step, Split):
            if step.form_id is not None:
                yield "form", step.form_id, f"step {step.id!r}"
            if step.basis is SplitBasis.link_clicked:
                for branch in step.branches:
                    if branch.link is not None:
                        yield "link", branch.link, f"step {step.id!r}"


def overlaps(flow: Flow, catalogue: ActionCatalogue) -> Iterator[tuple[str | None, str, str]]:
    """(step id, field, message) for each step effect that a used form or link duplicates or
    contradicts."""
    sources: dict[tuple[str, int | str], list[str]] = {}
    for kind, key, where in _used(flow):
        places = sources.setdefault((kind, key), [])
        if where not in places:
            places.append(where)
    for (kind, key), places in sources.items():
        own: OwnActions | None = (
            catalogue.forms.get(key) if isinstance(key, int) else catalogue.links.get(key)
        )
        if own is None:
            continue
        label = f"{kind} {key if kind == 'form' else repr(key)} ({own.name!r}, used in "
        label += ", ".join(places) + ")"
        for reason in own.invalid:
            yield None, "", f"{label}: {reason}; it is skipped when carried out"
        theirs = [e for e in map(_own_effect, own.actions) if e is not None]
        for step in flow.steps:
            for field, ours in _step_effects(step):
                for effect in theirs:
                    message = _overlap(label, effect, ours)
                    if message is not None:
                        yield step.id, field, message


def _overlap(source: str, theirs: Effect, ours: Effect) -> str | None:
    if not theirs.same_target(ours):
        return None
    if theirs.verb == ours.verb and theirs.value == ours.value:
        if theirs.verb == "run":
            return f"{source} also {theirs}, as this step does: it runs twice"
        if theirs.verb == "create":
            return f"{source} also {theirs}, as this step does: the contact gets two"
        return f"{source} also {theirs}, as this step does: whichever comes second changes nothing"
    if _OPPOSITE.get(theirs.verb) == ours.verb or theirs.verb == ours.verb == "set":
        return f"{source} {theirs}, and this step {ours}: they undo each other"
    return None
