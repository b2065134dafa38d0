"""Steps that read or change the CRM: list membership, data splits and form-data splits.

Each activity is idempotent, so Temporal may retry it freely: adding a member that is already
there, or removing one that is gone, is a no-op that reports what it found. Joining a selection
or project records an ``added_to_selection`` / ``added_to_project`` event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, model_validator
from sqlalchemy import Delete, Engine, Insert, Select, bindparam, literal
from sqlalchemy import delete as sa_delete
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel
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
            _require_contact(db, change, checked=change.record is not None)
            outcome: list[str] = []
            for membership in memberships(db, change):
                if not membership.exists:
                    membership.join(db)
                outcome.append(membership.added_or_found())
            return _done(db, change, "; ".join(outcome))

    @activity.defn
    def remove_from_list(self, change: ListChange) -> StepChange:
        with session(self._engine) as db:
            reason = enter_step(db, change.record)
            if reason is not None:
                return StepChange.left(reason)
            _require_contact(db, change, checked=change.record is not None)
            outcome: list[str] = []
            for membership in memberships(db, change):
                if membership.exists:
                    membership.leave(db)
                outcome.append(membership.removed_or_missing())
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


@dataclass(frozen=True)
class _Lists:
    """One kind of list (selections or projects): its membership statements, built once so
    SQLAlchemy reuses their compiled form (a list step runs them at every participant)."""

    column: str  # the list's id column in the membership table, and the event's field
    joined: EventKind
    find: Select[Any]
    insert: Insert
    delete: Delete

    @property
    def kind(self) -> str:
        return self.column.removesuffix("_id")

    @classmethod
    def of(
        cls, lists: type[SQLModel], member: type[SQLModel], column: str, joined: EventKind
    ) -> _Lists:
        listed = SQLModel.metadata.tables[str(lists.__tablename__)]
        table = SQLModel.metadata.tables[str(member.__tablename__)]
        of_contact = table.c.contact_id == bindparam("contact")
        return cls(
            column=column,
            joined=joined,
            # The list and the contact's membership of it in one statement: no row, no list.
            find=sa_select(listed.c.id, table.c.id)
            .select_from(listed.outerjoin(table, (table.c[column] == listed.c.id) & of_contact))
            .where(listed.c.id == bindparam("list"))
            .limit(1),
            insert=sa_insert(table).values(
                {column: bindparam("list"), "contact_id": bindparam("contact")}
            ),
            delete=sa_delete(table).where(table.c.id == bindparam("id")),
        )


_SELECTIONS = _Lists.of(Selection, SelectionMember, "selection_id", EventKind.added_to_selection)
_PROJECTS = _Lists.of(Project, ProjectMember, "project_id", EventKind.added_to_project)


@dataclass(frozen=True)
class ListMembership:
    """A contact's membership of one list a change names, as found in the caller's
    transaction."""

    lists: _Lists
    list_id: int
    contact_id: int
    member_id: int | None  # the membership row; None: not a member

    @property
    def label(self) -> str:
        return f"{self.lists.kind} {self.list_id}"

    @property
    def exists(self) -> bool:
        return self.member_id is not None

    def join(self, db: Session, event_id: str | None = None) -> FlowEvent:
        """Add the membership and record its added_to_selection / added_to_project event in the
        same transaction.

        For a step the membership row is the idempotency: the event commits with it, and a
        retry that finds the member adds neither, so a unique id will do. A form's or link's
        actions pass an id derived from their event, to announce it again if that was cut
        short."""
        ids = {"list": self.list_id, "contact": self.contact_id}
        db.connection().execute(self.lists.insert, ids)
        kind = self.lists.joined
        event = FlowEvent(
            event_id=event_id or f"{kind.value}/{uuid.uuid4()}",
            kind=kind,
            contact_id=self.contact_id,
            occurred_at=utcnow(),
            **{self.lists.column: self.list_id},
        )
        return record_event(db, event)

    def leave(self, db: Session) -> None:
        db.connection().execute(self.lists.delete, {"id": self.member_id})

    def added_or_found(self) -> str:
        return f"{self.label}: {'already member' if self.exists else 'added'}"

    def removed_or_missing(self) -> str:
        return f"{self.label}: {'removed' if self.exists else 'not a member'}"


def memberships(db: Session, change: ListChange) -> list[ListMembership]:
    """The contact's membership of each list the change names; a list that is not there is an
    error retrying cannot mend."""
    named = [(_SELECTIONS, change.selection_id), (_PROJECTS, change.project_id)]
    found: list[ListMembership] = []
    for lists, list_id in named:
        if list_id is None:
            continue
        ids = {"list": list_id, "contact": change.contact_id}
        row = db.connection().execute(lists.find, ids).first()
        if row is None:
            raise ApplicationError(
                f"{lists.kind} {list_id} does not exist", type="MissingList", non_retryable=True
            )
        found.append(ListMembership(lists, list_id, change.contact_id, row[1]))
    return found


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


# Whether the contact exists, without loading it (a contact's load coerces its JSON columns),
# built once so SQLAlchemy reuses its compiled form.
_CONTACT = sa_select(literal(1)).where(
    SQLModel.metadata.tables[str(Contact.__tablename__)].c.id == bindparam("id")
)


def _require_contact(db: Session, change: ListChange, *, checked: bool) -> None:
    """The contact is there (the lists are checked with the memberships). ``checked``: the
    checks at the step's entry found it in this transaction (they make the participant leave
    when it is gone)."""
    if not checked and db.connection().execute(_CONTACT, {"id": change.contact_id}).first() is None:
        raise missing_contact(change.contact_id)
