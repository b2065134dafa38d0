"""Steps that read or change the CRM: list membership, data splits and form-data splits.

Each activity is idempotent, so Temporal may retry it freely: adding a member that is already
there, or removing one that is gone, is a no-op that reports what it found. Joining a selection
or project records an ``added_to_selection`` / ``added_to_project`` event.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, model_validator
from sqlalchemy import Engine, Select, bindparam, literal
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.participants import ParticipantRecord, depart_in, enter_step
from models.criteria import evaluate
from models.crm import Contact, Project, ProjectMember, Selection, SelectionMember, contact_facts
from models.database import session, utcnow
from models.engine import StepChange, find_event, record_event
from models.events import EventKind, FlowEvent, choose_by_form_data
from models.flow import Split, SplitBasis


class ListChange(BaseModel):
    contact_id: int
    selection_id: int | None = None
    project_id: int | None = None
    record: ParticipantRecord | None = None  # the step's entry, to record and check first
    departure: ParticipantRecord | None = None  # the row it leaves with, to record last


class SplitQuestion(BaseModel):
    contact_id: int
    split: Split
    record: ParticipantRecord | None = None  # the step's entry, to record and check first


class SplitAnswer(BaseModel):
    """The branch whose rule holds (None: everyone else), or why the participant leaves at the
    split's entry instead (checks made with its record)."""

    branch: int | None = None
    leave_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_branch(cls, data: Any) -> Any:
        # Splits asked before they made their entry's checks answered a bare branch index (or
        # null, which decodes to None whatever the type: the workflow takes that as no branch).
        return {"branch": data} if isinstance(data, int) else data


class FormDataQuestion(BaseModel):
    """A form-data split, asked of the stored submission it decides on (by event id)."""

    event_id: str
    split: Split


class CrmActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def add_to_list(self, change: ListChange) -> StepChange:
        with session(self._engine) as db:
            # Membership is the idempotency: a retry re-checks the entry and finds the member.
            reason = enter_step(db, change.record)
            if reason is not None:
                return StepChange.left(reason)
            _require(db, change)
            outcome: list[str] = []
            for name, member, existing in memberships(db, change):
                if existing is None:
                    db.add(member)
                    record_joining(db, member)
                outcome.append(f"{name}: {'already member' if existing else 'added'}")
            return _done(db, change, "; ".join(outcome))

    @activity.defn
    def remove_from_list(self, change: ListChange) -> StepChange:
        with session(self._engine) as db:
            reason = enter_step(db, change.record)
            if reason is not None:
                return StepChange.left(reason)
            _require(db, change)
            outcome: list[str] = []
            for name, _, existing in memberships(db, change):
                if existing is not None:
                    db.delete(existing)
                outcome.append(f"{name}: {'removed' if existing else 'not a member'}")
            return _done(db, change, "; ".join(outcome))

    @activity.defn
    def choose_split_branch(self, question: SplitQuestion) -> SplitAnswer:
        """The first branch whose rule holds for the contact, or None for everyone else."""
        with session(self._engine) as db:
            reason = enter_step(db, question.record)  # reads only: a retry asks again
            facts = contact_facts(db, question.contact_id) if reason is None else None
        if reason is not None:
            return SplitAnswer(leave_reason=reason)
        if facts is None:
            raise missing_contact(question.contact_id)
        return SplitAnswer(branch=_first_branch(question.split, facts))

    @activity.defn
    def choose_form_data_branch(self, question: FormDataQuestion) -> int | None:
        """The first branch whose criteria the stored submission's fields meet, or None for
        everyone else. A submission that was never stored is decided on no fields, as one
        posted without any."""
        with session(self._engine) as db:
            row = find_event(db, question.event_id)
        stored = row.payload.get("data") if row is not None else None
        data = {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}
        return choose_by_form_data(question.split, data)


def _first_branch(split: Split, facts: dict[str, object]) -> int | None:
    for index, branch in enumerate(split.branches):
        if split.basis in (SplitBasis.data,) and branch.criteria is not None:
            if evaluate(branch.criteria, facts):
                return index
        elif split.basis is SplitBasis.project:
            if branch.project_id in _ids(facts["contact.projects"]):
                return index
        elif split.basis is SplitBasis.selection:
            if branch.selection_id in _ids(facts["contact.selections"]):
                return index
        else:
            raise ApplicationError(
                f"split basis {split.basis} is not supported", non_retryable=True
            )
    return None


def _ids(value: object) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else []


Membership = SelectionMember | ProjectMember


def memberships(db: Session, change: ListChange) -> list[tuple[str, Membership, Membership | None]]:
    """For each list the change names: its label, the membership row, and the existing one."""
    found: list[tuple[str, Membership, Membership | None]] = []
    if change.selection_id is not None:
        selection = SelectionMember(selection_id=change.selection_id, contact_id=change.contact_id)
        existing = db.exec(
            select(SelectionMember).where(
                SelectionMember.selection_id == change.selection_id,
                SelectionMember.contact_id == change.contact_id,
            )
        ).first()
        found.append((f"selection {change.selection_id}", selection, existing))
    if change.project_id is not None:
        project = ProjectMember(project_id=change.project_id, contact_id=change.contact_id)
        existing_member = db.exec(
            select(ProjectMember).where(
                ProjectMember.project_id == change.project_id,
                ProjectMember.contact_id == change.contact_id,
            )
        ).first()
        found.append((f"project {change.project_id}", project, existing_member))
    return found


def record_joining(db: Session, member: Membership, event_id: str | None = None) -> FlowEvent:
    """The added_to_selection / added_to_project event of a new membership, in its transaction.

    For a step the membership row is the idempotency: the event commits with it, and a retry
    that finds the member adds neither, so a unique id will do. A form's or link's actions pass
    an id derived from their event, to announce it again if that was cut short."""
    if isinstance(member, SelectionMember):
        kind, where = EventKind.added_to_selection, {"selection_id": member.selection_id}
    else:
        kind, where = EventKind.added_to_project, {"project_id": member.project_id}
    event = FlowEvent(
        event_id=event_id or f"{kind.value}/{uuid.uuid4()}",
        kind=kind,
        contact_id=member.contact_id,
        occurred_at=utcnow(),
        **where,
    )
    return record_event(db, event)


def missing_contact(contact_id: int) -> ApplicationError:
    # Non-retryable: retrying cannot make a deleted contact reappear; the participant drops out.
    return ApplicationError(
        f"contact {contact_id} does not exist", type="MissingContact", non_retryable=True
    )


def _done(db: Session, change: ListChange, outcome: str) -> StepChange:
    """The change made, and the participant's last record in its transaction when the step was
    given one (the finish after it checks the membership just changed, too)."""
    if change.departure is None:
        return StepChange(outcome=outcome)
    return StepChange(outcome=outcome, departure=depart_in(db, change.departure))


def _by_id(model: type[SQLModel]) -> Select[int]:
    """Whether a row exists, by id, without loading it (a contact's load coerces its JSON
    columns), built once so SQLAlchemy reuses its compiled form."""
    table = SQLModel.metadata.tables[str(model.__tablename__)]
    return sa_select(literal(1)).where(table.c.id == bindparam("id"))


_CONTACT, _SELECTION, _PROJECT = _by_id(Contact), _by_id(Selection), _by_id(Project)


def _exists(db: Session, statement: Select[int], row_id: int) -> bool:
    return db.connection().execute(statement, {"id": row_id}).first() is not None


def _require(db: Session, change: ListChange) -> None:
    if not _exists(db, _CONTACT, change.contact_id):
        raise missing_contact(change.contact_id)
    if change.selection_id is not None and not _exists(db, _SELECTION, change.selection_id):
        raise ApplicationError(
            f"selection {change.selection_id} does not exist",
            type="MissingList",
            non_retryable=True,
        )
    if change.project_id is not None and not _exists(db, _PROJECT, change.project_id):
        raise ApplicationError(
            f"project {change.project_id} does not exist", type="MissingList", non_retryable=True
        )
