"""Keeping the participants table current, and the checks made before every step (spec §8)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio import activity

from models.crm import Contact, SelectionMember
from models.database import session
from models.engine import Participant
from models.ledger import DeliveryOutcome, known_in, known_under
from models.participant import ParticipantState, Standing, participant_workflow_id


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
    state = record.state
    row = db.get(Participant, state.participant_id) or Participant(
        id=state.participant_id,
        workflow_id=participant_workflow_id(state.flow_id, state.contact_id),
        flow_id=state.flow_id,
        flow_version=state.flow_version,
        contact_id=state.contact_id,
        enrolled_at=state.enrolled_at,
    )
    row.flow_version = state.flow_version
    row.status = state.status.value
    row.current_step = state.current_step
    row.wait_until = state.wait_until
    row.waiting_for = None if state.waiting_for is None else state.waiting_for.value
    row.drop_out_reason = state.drop_out_reason
    row.finished_at = state.finished_at
    db.add(row)
    return Standing(leave_reason=leave_reason(db, record))


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


def leave_reason(db: Session, record: ParticipantRecord) -> str | None:
    contact = db.get(Contact, record.state.contact_id)
    if contact is None:
        return "the contact no longer exists"
    if contact.retired:
        return "former employee"
    if record.exclusion_selections:
        excluded = db.exec(
            select(SelectionMember).where(
                SelectionMember.contact_id == contact.id,
                SelectionMember.selection_id.in_(record.exclusion_selections),  # type: ignore[attr-defined]
            )
        ).first()
        if excluded is not None:
            return "on the exclusion list"
    return None
