"""A form's or tracked link's own actions (spec §5), carried out when it is submitted or clicked.

The CRM defines them on the form (``models.crm.Form.actions``) or the link
(``models.crm.TrackedLink.actions``, by URL): add to or remove from a selection or project, add
or remove an interest, set an extra field, create a request or a follow-up, run a script.
``control.ingest`` carries them out for each form_submitted and link_clicked event, under the
event's delivery claim and before the event reaches participants and triggers, so a flow that
waits for the form and then splits on the selection the form adds to finds the contact in it.

Exactly once per event: every change of an event's actions commits in one transaction with the
record of what they did, kept in the event's own ``crm_events`` row (``ACTIONS_KEY`` in its
payload). A second run for the same event id (a delivery retried after Temporal could not be
reached, a sweep, the same click posted twice) finds that record and changes nothing; it only
announces again what the first run recorded and starts again the scripts it named, both of which
are idempotent (by event id and by workflow id). So a contact a user took out of the selection
in between stays out.

The changes are recorded as other CRM changes are: a new membership as ``added_to_selection`` /
``added_to_project`` (``activities.crm.ListMembership.join``), interests and extra fields
through the update rows of ``models.contact_update`` as one ``contact_updated`` event, each with
an id derived from the event's. ``control.ingest`` announces them like the event itself, so they
fire triggers and meet success criteria as any CRM change does.

A request or follow-up is made by the code the create_request and create_follow_up steps use
(``activities.records``), in the same transaction, keyed ``<event id>/actions/<n>`` and
recorded as ``request_created`` / ``follow_up_created``; its dates count from the event's time,
and what it cannot make (a request type the CRM no longer has) is reported in its line. A
script runs in its own ``Script`` workflow (``script-<event id>/actions/<n>``) and sees the
form or link as its flow.

A form's reply email is not sent here, in a transaction that may be retried: the record names
its send (``ActionsDone.replies``) and ``control.ingest`` starts a ``Reply`` workflow for it
(``workflows.reply``, ``reply-<event id>/actions/<n>``), which sends it through the delivery
ledger under the key ``<event id>/actions/<n>``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.exceptions import ApplicationError

from activities.crm import ListChange, memberships
from activities.email import EmailSend
from activities.records import Creation, make_follow_up, make_request
from activities.scripts import ScriptStart
from models.contact_update import apply_row, field_spec
from models.crm import (
    Contact,
    Form,
    OwnAction,
    Project,
    ReplyDetails,
    Selection,
    TrackedLink,
)
from models.database import utcnow
from models.engine import StepChange, find_event, record_event, serialize_on, transact
from models.events import EventKind, FlowEvent
from models.flow import EmailSettings, SendEmail, UpdateRow
from scripts import registered_scripts

# Where an event's crm_events row keeps what its own actions did.
ACTIONS_KEY = "own_actions"


class ActionsDone(BaseModel):
    """What one event's own actions did: a line per action, the CRM changes they recorded (to
    announce), the scripts they start and the reply emails they send."""

    source: str  # "form 1 ('Webinar sign-up')"
    outcomes: list[str] = []
    changes: list[FlowEvent] = []
    scripts: list[ScriptStart] = []
    replies: list[EmailSend] = []


def _source(db: Session, event: FlowEvent) -> tuple[str, str, str, list[dict[str, Any]]] | None:
    """(label, script flow id, name, raw actions) of the form or link the event names."""
    if event.kind is EventKind.form_submitted and event.form_id is not None:
        form = db.get(Form, event.form_id)
        if form is not None:
            return f"form {form.id} ({form.name!r})", f"form-{form.id}", form.name, form.actions
    elif event.kind is EventKind.link_clicked and event.link is not None:
        link = db.exec(select(TrackedLink).where(TrackedLink.url == event.link)).first()
        if link is not None:
            label = f"link {link.url!r} ({link.name!r})"
            return label, f"link-{link.id}", link.name, link.actions
    return None


def _list_change(db: Session, contact_id: int, action: OwnAction) -> tuple[ListChange, str | None]:
    """The membership change an action names, and why it cannot be made (its list is gone)."""
    if action.kind.endswith("selection"):
        change = ListChange(contact_id=contact_id, selection_id=action.selection_id)
        missing = action.selection_id is None or db.get(Selection, action.selection_id) is None
        return change, f"selection {action.selection_id} does not exist" if missing else None
    change = ListChange(contact_id=contact_id, project_id=action.project_id)
    missing = action.project_id is None or db.get(Project, action.project_id) is None
    return change, f"project {action.project_id} does not exist" if missing else None


def _row(action: OwnAction) -> UpdateRow:
    """The update_contact row an interest or extra-field action is."""
    if action.kind == "set_extra_field":
        field = action.field or ""
        field = field if field.startswith("extra.") else f"extra.{field}"
        spec = field_spec("contact", field)
        value: str | bool | None = action.value
        if spec is not None and spec.kind == "bool" and action.value is not None:
            value = action.value.strip().lower() in ("true", "1", "yes", "on")
        return UpdateRow(field=field, action="set", value=value)
    verb = "add" if action.kind == "add_interest" else "remove"
    return UpdateRow(field="interests", action=verb, value=[action.interest or ""])


def _create(
    db: Session,
    event: FlowEvent,
    key: str,
    step_id: str,
    flow_id: str,
    name: str,
    action: OwnAction,
) -> StepChange:
    """The request or follow-up the action describes, made as the create steps make theirs,
    keyed by the event: a second run for the same event finds it."""
    creation = Creation(
        event_key=key,
        flow_id=flow_id,
        flow_name=name,
        time_zone=action.time_zone,
        contact_id=event.contact_id,
        at=event.occurred_at,  # dates count from the submission or click
    )
    if action.request is not None:
        return make_request(db, creation, action.request, step_id)
    assert action.follow_up is not None  # the caller checked one of the two is there
    return make_follow_up(db, creation, action.follow_up, step_id)


def _reply(
    event: FlowEvent, key: str, index: int, flow_id: str, name: str, reply: ReplyDetails
) -> EmailSend:
    """The send of a form's reply: a send_email step's, transactional (it answers the contact's
    own submission, so no frequency cap holds it) and keyed by the event in the ledger."""
    step = SendEmail(
        id=f"action-{index}",
        type="send_email",
        next=f"action-{index}",
        subject=reply.subject,
        text=reply.text,
        html=reply.html,
        track_opens=False,
        transactional=True,
    )
    settings = EmailSettings(sender=reply.sender, reply_to=reply.reply_to)
    return EmailSend(
        delivery_key=key,
        flow_id=flow_id,
        flow_name=name,
        contact_id=event.contact_id,
        step=step,
        settings=settings,
    )


def _carry_out(
    db: Session,
    event: FlowEvent,
    done: ActionsDone,
    script_flow: str,
    name: str,
    actions: list[dict[str, Any]],
) -> None:
    contact = db.get(Contact, event.contact_id)
    if contact is None:
        done.outcomes.append(f"contact {event.contact_id} does not exist: nothing done")
        return
    fields: list[str] = []
    updates: list[str] = []
    for index, raw in enumerate(actions):
        key = f"{event.event_id}/actions/{index}"
        try:
            action = OwnAction.model_validate(raw)
        except ValidationError:
            done.outcomes.append(f"action {index} is not a valid action: skipped")
            continue
        kind = action.kind
        if action.request is not None or action.follow_up is not None:
            try:
                made = _create(db, event, key, f"action-{index}", script_flow, name, action)
            except ApplicationError as error:  # a request type the CRM no longer has, say
                done.outcomes.append(f"{kind}: {error.message}")
                continue
            done.outcomes.append(made.outcome)
            if made.event is not None:
                done.changes.append(made.event)
        elif action.reply is not None:
            if event.kind is not EventKind.form_submitted:
                done.outcomes.append(f"{kind}: only a form replies, to whoever submitted it")
                continue
            done.replies.append(_reply(event, key, index, script_flow, name, action.reply))
            done.outcomes.append(f"reply email {action.reply.subject!r} to be sent")
        elif kind in (
            "add_to_selection",
            "add_to_project",
            "remove_from_selection",
            "remove_from_project",
        ):
            change, problem = _list_change(db, event.contact_id, action)
            if problem is not None:
                done.outcomes.append(f"{kind}: {problem}")
                continue
            [membership] = memberships(db, change)
            if kind.startswith("add"):
                if not membership.exists:
                    done.changes.append(membership.join(db, f"{key}/joined"))
                done.outcomes.append(membership.added_or_found())
            else:
                if membership.exists:
                    membership.leave(db)
                done.outcomes.append(membership.removed_or_missing())
        elif kind == "run_script":
            script = action.script or ""
            if script not in registered_scripts():
                done.outcomes.append(f"run_script: no script named {script!r}")
                continue
            done.scripts.append(
                ScriptStart(
                    script=script,
                    run_key=key,
                    flow_id=script_flow,
                    flow_name=name,
                    step_id=f"action-{index}",
                    step_name=None,
                    contact_id=event.contact_id,
                )
            )
            done.outcomes.append(f"script {script!r} started")
        else:
            row = _row(action)
            try:
                changed = apply_row(contact, row)
            except ValueError as error:  # an extra field this CRM does not define, say
                done.outcomes.append(f"{kind}: {error}")
                continue
            done.outcomes.append(changed or f"{kind}: no change")
            if changed is not None:
                updates.append(changed)
                spec = field_spec("contact", row.field)
                fields.append(spec.label if spec is not None else row.field)
    if fields:
        db.add(contact)
        updated = FlowEvent(
            event_id=f"{event.event_id}/actions/contact_updated",
            kind=EventKind.contact_updated,
            contact_id=event.contact_id,
            occurred_at=utcnow(),
        )
        done.changes.append(record_event(db, updated, fields=fields, outcome="; ".join(updates)))


def carry_out(engine: Engine, event: FlowEvent) -> ActionsDone | None:
    """Carry out the own actions of the form or link the (recorded) event names, once per event
    id: what they did, now or on an earlier run; None when it names none with actions."""

    def work(db: Session) -> ActionsDone | None:
        # One writer per contact at a time, as update_contact steps: lists are read, changed
        # and written back whole; a concurrent second run waits here and then finds the record.
        serialize_on(db, f"contact/{event.contact_id}")
        row = find_event(db, event.event_id)
        if row is None:
            raise LookupError(f"event {event.event_id} is not recorded")
        if ACTIONS_KEY in row.payload:
            return ActionsDone.model_validate(row.payload[ACTIONS_KEY])
        found = _source(db, event)
        if found is None or not found[3]:
            return None
        label, script_flow, name, actions = found
        done = ActionsDone(source=label)
        _carry_out(db, event, done, script_flow, name, actions)
        row.payload = {**row.payload, ACTIONS_KEY: done.model_dump(mode="json")}
        db.add(row)
        return done

    return transact(engine, work)
