"""Events: what happens to a contact outside its participant workflows (spec §5).

Forms submitted, tracked links clicked, emails opened and CRM changes enter the engine as one
``FlowEvent``. Each is recorded once in the ``crm_events`` table (idempotent by ``event_id``) and
then reaches every participant it concerns as the ``event`` signal, and every running flow whose
triggers it matches. Participants keep recent events in their state, so waits, splits and success
criteria decide from their own history, deterministically.

The signal is the event's ``reference()``: what happened, when and where, without the form's
data, which stays in ``crm_events`` (participants' histories are read outside the CRM). A split
on form data reads the stored submission by its event id (``choose_by_form_data``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from models.criteria import evaluate
from models.flow import AwaitedAction, Split, SplitBasis, SuccessCriterion


class EventKind(StrEnum):
    form_submitted = "form_submitted"
    link_clicked = "link_clicked"
    email_opened = "email_opened"
    contact_created = "contact_created"
    contact_updated = "contact_updated"
    sale_created = "sale_created"
    sale_sold = "sale_sold"
    sale_lost = "sale_lost"
    added_to_project = "added_to_project"
    added_to_selection = "added_to_selection"
    request_created = "request_created"
    follow_up_created = "follow_up_created"


class FlowEvent(BaseModel):
    event_id: str = Field(min_length=1, max_length=200, description="Idempotency key")
    kind: EventKind
    contact_id: int
    occurred_at: datetime
    # Where a tracked email's link or pixel came from: the flow and its send_email step.
    flow_id: str | None = None
    step_id: str | None = None
    link: str | None = None
    form_id: int | None = None
    selection_id: int | None = None
    project_id: int | None = None
    sale_id: int | None = None
    data: dict[str, str] = Field(default={}, description="Form fields, as submitted")
    received_at: datetime | None = Field(
        default=None,
        description="Set by a participant when the event reaches it: its own clock, which the "
        "rules compare with, rather than the sender's",
    )
    by_import: bool = Field(
        default=False, description="Created/updated by import or bulk update: triggers ignore it"
    )

    def reference(self) -> FlowEvent:
        """The event as participants get it: its form data left in ``crm_events``."""
        return self.model_copy(update={"data": {}}) if self.data else self


class IngestReport(BaseModel):
    """What one ingest of an event did: recorded it (or found it recorded), and whom it reached."""

    event_id: str
    new: bool  # False: the event id was recorded before
    delivered: bool  # False: an earlier ingest had delivered it already; nothing was done
    signalled: list[str] = []  # workflow ids of the active participants that got it
    enrolled: list[str] = []  # flows whose triggers enrolled the contact
    refused: dict[str, str] = {}  # flow id -> why its trigger did not enroll the contact
    actions: list[str] = []  # what the form's or link's own actions did, one line each


def meets(criterion: SuccessCriterion, event: FlowEvent) -> bool:
    """Whether an event meets one of the flow's success criteria (spec §6), whoever caused it."""
    if criterion.kind.value != event.kind.value:
        return False
    wanted = {
        "form_id": criterion.form_id,
        "link": criterion.link,
        "selection_id": criterion.selection_id,
        "project_id": criterion.project_id,
    }
    return all(value is None or getattr(event, name) == value for name, value in wanted.items())


def answers(action: AwaitedAction, event: FlowEvent, flow_id: str) -> bool:
    """Whether an event is the action a wait_for_action step awaits."""
    if action.kind == "form_submitted":
        return event.kind is EventKind.form_submitted and event.form_id == action.form_id
    return (
        event.kind is EventKind.link_clicked
        and event.flow_id == flow_id
        and event.step_id == action.email_step
        and (action.link is None or event.link == action.link)
    )


# Split bases decided from the participant's own events rather than from CRM data.
EVENT_SPLIT_BASES = frozenset(
    {SplitBasis.form_submitted, SplitBasis.form_data, SplitBasis.link_clicked}
)


def choose_by_events(split: Split, events: list[FlowEvent], flow_id: str) -> int | None:
    """The first branch an event-based split takes, or None for everyone else."""
    if split.basis is SplitBasis.link_clicked:
        clicks = [
            event
            for event in events
            if event.kind is EventKind.link_clicked
            and event.flow_id == flow_id
            and (split.email_step is None or event.step_id == split.email_step)
        ]
        for index, branch in enumerate(split.branches):
            if any(branch.link is None or click.link == branch.link for click in clicks):
                return index
        return None
    submission = last_submission(split, events)
    if split.basis is SplitBasis.form_submitted:
        submitted = submission is not None
        return next(
            (i for i, branch in enumerate(split.branches) if branch.submitted is submitted), None
        )
    if submission is None:
        return None  # form data: everyone else also catches those who never submitted
    return choose_by_form_data(split, submission.data)


def last_submission(split: Split, events: list[FlowEvent]) -> FlowEvent | None:
    """The newest submission of the split's form among a participant's events."""
    return next(
        (
            event
            for event in reversed(events)
            if event.kind is EventKind.form_submitted and event.form_id == split.form_id
        ),
        None,
    )


def choose_by_form_data(split: Split, data: dict[str, str]) -> int | None:
    """The first branch of a form-data split whose criteria the submitted fields meet."""
    facts: dict[str, object] = {f"form.{k}": v for k, v in data.items()}
    for index, branch in enumerate(split.branches):
        if branch.criteria is not None and evaluate(branch.criteria, facts):
            return index
    return None
