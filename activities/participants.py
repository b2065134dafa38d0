"""Keeping the participants table current, and the checks made before every step (spec §8)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from sqlalchemy import Engine, Executable, Table, bindparam
from sqlalchemy import select as select_columns
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, SQLModel
from temporalio import activity

from models.crm import Contact, SelectionMember
from models.database import session, utcnow
from models.engine import (
    Departure,
    Participant,
    ParticipantStatus,
    StepChange,
    StepVisit,
    change_made_before,
)
from models.ledger import DeliveryOutcome, known_in, known_under
from models.participant import ParticipantState, Standing, participant_workflow_id

# What a step's activity returns when it can make the participant's last record too.
Departing = TypeVar("Departing", DeliveryOutcome, StepChange)


class ParticipantRecord(BaseModel):
    state: ParticipantState
    exclusion_selections: list[int] = []


class ParticipantActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def record_participant(self, record: ParticipantRecord) -> Standing:
        """Upsert the participant's row (the workflow is its only writer, so the last call wins)
        and report whether the contact may go on: one database round trip for both, at every
        step entry."""
        with session(self._engine) as db:
            return record_in(db, record)


def record_in(db: Session, record: ParticipantRecord) -> Standing:
    """``record_participant`` inside the caller's transaction."""
    _write_row(db, record.state)
    return Standing(leave_reason=leave_reason(db, record))


def departed(engine: Engine, record: ParticipantRecord | None, result: Departing) -> Departing:
    """``result`` with the participant's last record made (``depart_in``, a transaction of its
    own) when the step was given the row it leaves with (``record``), and goes on to that
    finish: not when the checks at its entry made it leave, nor when a cap holds it back."""
    if record is None or result.leave_reason is not None:
        return result
    if isinstance(result, DeliveryOutcome) and result.retry_at is not None:
        return result  # held back by a frequency cap: the participant waits, then sends again
    with session(engine) as db:
        departure = depart_in(db, record)
    return result.model_copy(update={"departure": departure})


def depart_in(db: Session, record: ParticipantRecord) -> Departure:
    """The participant's last record, made for the finish after this step: the finish's checks
    (as its own record would make them), then the row as it leaves, dropped out if they say
    so. The workflow compares what it was told with how it left, and records again if they
    differ (a signal came in between)."""
    reason = leave_reason(db, record)
    at = utcnow()
    update: dict[str, object] = {"finished_at": at, "wait_until": None}
    if reason is not None:
        update |= {"status": ParticipantStatus.dropped_out, "drop_out_reason": reason}
    # Made by the step before the finish: the finish is the participant's next step.
    _write_row(db, record.state.model_copy(update=update), record.state.steps_taken + 1)
    return Departure(at=at, leave_reason=reason)


# The participant's row, upserted in one statement (a record per step makes this the engine's most
# frequent write), built once per dialect so SQLAlchemy reuses its compiled form.
_ROWS = SQLModel.metadata.tables[str(Participant.__tablename__)]
_COLUMNS = (
    "id",
    "workflow_id",
    "flow_id",
    "flow_version",
    "contact_id",
    "status",
    "current_step",
    "wait_until",
    "waiting_for",
    "drop_out_reason",
    "enrolled_at",
    "finished_at",
    "updated_at",
)
# What a record changes; the rest is set once, by the participant's first record.
_MOVING = (
    "flow_version",
    "status",
    "current_step",
    "wait_until",
    "waiting_for",
    "drop_out_reason",
    "finished_at",
    "updated_at",
)


def _upsert(insert: Callable[[Table], Any]) -> Executable:
    statement = insert(_ROWS).values({name: bindparam(name) for name in _COLUMNS})
    changed = {name: statement.excluded[name] for name in _MOVING}
    return cast("Executable", statement.on_conflict_do_update(index_elements=["id"], set_=changed))


_UPSERT = {"sqlite": _upsert(sqlite_insert), "postgresql": _upsert(postgresql_insert)}

# The step's visit, inserted once: every later record of the same visit (a wait's, a retry's, the
# participant leaving from it) finds its row and changes nothing.
_VISITS = SQLModel.metadata.tables[str(StepVisit.__tablename__)]
_VISIT_COLUMNS = ("participant_id", "ordinal", "flow_id", "step_id", "entered_at")


def _visit(insert: Callable[[Table], Any]) -> Executable:
    statement = insert(_VISITS).values({name: bindparam(name) for name in _VISIT_COLUMNS})
    keys = ["participant_id", "ordinal"]
    return cast("Executable", statement.on_conflict_do_nothing(index_elements=keys))


_VISIT = {"sqlite": _visit(sqlite_insert), "postgresql": _visit(postgresql_insert)}


def entry_ordinal(state: ParticipantState) -> int:
    """The ordinal of the visit a record of ``state`` belongs to: the steps taken before the
    current one. An active participant counts its steps when it leaves one, so a record made
    after it left (a status other than Active) is one step further: the step it left from.
    A participant that left before entering the step it was headed for (a signal between
    steps) thereby stays at the step it last entered."""
    if state.status is ParticipantStatus.active:
        return state.steps_taken
    return state.steps_taken - 1


def _write_row(db: Session, state: ParticipantState, ordinal: int | None = None) -> None:
    """The participant's row and, at a step, its visit (``entry_ordinal`` unless given): two
    statements in the caller's transaction."""
    connection = db.connection()
    now = utcnow()
    values = {
        "id": state.participant_id,
        "workflow_id": participant_workflow_id(state.flow_id, state.contact_id),
        "flow_id": state.flow_id,
        "flow_version": state.flow_version,
        "contact_id": state.contact_id,
        "status": state.status.value,
        "current_step": state.current_step,
        "wait_until": state.wait_until,
        "waiting_for": None if state.waiting_for is None else state.waiting_for.value,
        "drop_out_reason": state.drop_out_reason,
        "enrolled_at": state.enrolled_at,
        "finished_at": state.finished_at,
        "updated_at": now,
    }
    connection.execute(_UPSERT[connection.dialect.name], values)
    ordinal = entry_ordinal(state) if ordinal is None else ordinal
    if state.current_step is None or ordinal < 0:
        return  # not at a step yet, or left before its first (moved to finish as it entered)
    visit = {
        "participant_id": state.participant_id,
        "ordinal": ordinal,
        "flow_id": state.flow_id,
        "step_id": state.current_step,
        "entered_at": now,
    }
    connection.execute(_VISIT[connection.dialect.name], visit)


def _never() -> bool:
    return False


def enter_step(
    db: Session, record: ParticipantRecord | None, done_before: Callable[[], bool] = _never
) -> str | None:
    """A step's entry, recorded and checked by the step's own activity in its own transaction:
    the reason the participant leaves instead of doing the step, or None to go on (also when
    the entry was recorded already: ``record`` None).

    The checks belong to the step's entry, so they are made once per step: a retry that finds
    the step's work done (an earlier attempt passed them) goes on whatever they would say now."""
    if record is None:
        return None
    reason = record_in(db, record).leave_reason
    return None if reason is None or done_before() else reason


def enter_changing_step(
    db: Session, record: ParticipantRecord | None, event_id: str
) -> StepChange | None:
    """``enter_step`` for a step that changes the CRM once per visit (its change recorded as
    the event ``event_id``): what the step reports without doing its work (the participant
    leaves, or an earlier attempt made the change), or None to make it."""
    done = change_made_before(db, event_id)
    reason = enter_step(db, record, lambda: done is not None)
    if reason is not None:
        return StepChange.left(reason)
    return done


def enter_message_step(
    db: Session,
    record: ParticipantRecord,
    delivery_key: str,
    channel: str,
    *,
    per_recipient: bool = False,
) -> DeliveryOutcome | None:
    """``enter_step`` for a send: None to go on, or an outcome that sends nothing and says why
    the participant leaves. A send found in the ledger (an earlier attempt claimed it; for a
    notify step, ``per_recipient``, any of its recipients' sends) goes on, so a retry never
    disowns a message that may have left."""
    known = known_under if per_recipient else known_in
    reason = enter_step(db, record, lambda: known(db, delivery_key))
    return None if reason is None else DeliveryOutcome.left(delivery_key, channel, reason)


_CONTACTS = SQLModel.metadata.tables[str(Contact.__tablename__)]
_MEMBERS = SQLModel.metadata.tables[str(SelectionMember.__tablename__)]
_RETIRED = select_columns(_CONTACTS.c.retired).where(_CONTACTS.c.id == bindparam("contact"))
_EXCLUDED = (
    select_columns(_MEMBERS.c.contact_id)
    .where(
        _MEMBERS.c.contact_id == bindparam("contact"),
        _MEMBERS.c.selection_id.in_(bindparam("selections", expanding=True)),
    )
    .limit(1)
)


def leave_reason(db: Session, record: ParticipantRecord) -> str | None:
    """The checks before every step (spec §8): why the contact may not go on, or None."""
    db.flush()  # the checks read with SQL: they must see what the step changed in this session
    connection = db.connection()
    contact = record.state.contact_id
    retired = connection.execute(_RETIRED, {"contact": contact}).first()
    if retired is None:
        return "the contact no longer exists"
    if retired.retired:
        return "former employee"
    if record.exclusion_selections:
        selections = {"contact": contact, "selections": record.exclusion_selections}
        if connection.execute(_EXCLUDED, selections).first() is not None:
            return "on the exclusion list"
    return None
