"""The flow engine's own tables: flows and their versions, participants, deliveries, CRM events,
and the write locks and owner shares that keep concurrent steps exact."""

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, Self, TypeVar

from pydantic import BaseModel, model_validator
from sqlalchemy import JSON, Engine, Index, UniqueConstraint, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from models.database import UTCDateTime, session, utcnow
from models.events import EventKind, FlowEvent

T = TypeVar("T")


class FlowStatus(StrEnum):
    not_running = "not_running"
    running = "running"
    paused = "paused"


class FlowRecord(SQLModel, table=True):
    """A deployed flow; its documents live in `FlowVersion`."""

    __tablename__ = "flows"

    id: str = Field(primary_key=True)  # the slug id from the flow's JSON
    name: str
    status: str = Field(default=FlowStatus.not_running.value)
    latest_version: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"onupdate": utcnow}
    )


class FlowVersion(SQLModel, table=True):
    """One immutable flow document. Participants stay on the version they were enrolled in."""

    __tablename__ = "flow_versions"
    __table_args__ = (UniqueConstraint("flow_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    flow_id: str = Field(foreign_key="flows.id", index=True)
    version: int
    definition: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # sha256 of the canonical JSON: re-deploying an identical document adds no version.
    checksum: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ParticipantStatus(StrEnum):
    active = "Active"
    finished = "Finished"
    finished_with_success = "Finished with success"
    dropped_out = "Dropped out"
    cancelled = "Cancelled"


class WaitReason(StrEnum):
    """Why a message step holds its participant back before sending."""

    sending_window = "sending window"
    frequency_cap = "frequency cap"
    holiday = "holiday"


class Participant(SQLModel, table=True):
    """A contact travelling a flow: the queryable mirror of one participant workflow."""

    __tablename__ = "participants"
    __table_args__ = (
        Index("ix_participants_flow_id_status", "flow_id", "status"),
        # "never active twice in the same flow" looks participants up by flow and contact.
        Index("ix_participants_flow_id_contact_id", "flow_id", "contact_id"),
        # The console's participant table: a flow's participants at one step, newest first.
        Index("ix_participants_flow_id_current_step", "flow_id", "current_step"),
        Index("ix_participants_flow_id_enrolled_at", "flow_id", "enrolled_at"),
    )

    # No foreign keys on flow_id / contact_id: the workflow writes this row and must not fail
    # because a flow or contact row was deleted or not yet written.
    id: str = Field(primary_key=True)  # the workflow's run-chain id
    workflow_id: str = Field(index=True)
    flow_id: str = Field(index=True)
    flow_version: int
    contact_id: int = Field(index=True)
    status: str = Field(default=ParticipantStatus.active.value)
    current_step: str | None = None
    wait_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Why a message step waits (models.participant.WaitReason): statistics count it per step.
    waiting_for: str | None = None
    drop_out_reason: str | None = None
    enrolled_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"onupdate": utcnow}
    )


class StepVisit(SQLModel, table=True):
    """A participant's entry into a step, for the funnel: one row per step it entered, written
    with the participant's row by the step's entry record, in the record's transaction
    (``activities.participants``), and never changed. ``ordinal`` is the steps the participant
    had taken before it, so its rows in order are its path, loops included."""

    __tablename__ = "step_visits"
    __table_args__ = (Index("ix_step_visits_flow_id_step_id", "flow_id", "step_id"),)

    participant_id: str = Field(primary_key=True)
    ordinal: int = Field(primary_key=True)
    flow_id: str
    step_id: str
    entered_at: datetime = Field(sa_type=UTCDateTime)


class Delivery(SQLModel, table=True):
    """Ledger of external sends: the unique key makes each send happen at most once."""

    __tablename__ = "deliveries"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True)  # participant, step and visit
    channel: str  # "email" | "sms"
    recipient: str
    status: str = "pending"  # "pending" | "sent" | "bounced" | "failed" | "skipped"
    provider_id: str | None = None  # Message-ID or Twilio SID
    detail: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"onupdate": utcnow}
    )


class CountedSend(SQLModel, table=True):
    """A marketing message that counts toward its contact's frequency caps: added in the
    transaction that claims its delivery (``models.send_counts``); it stops counting if the
    delivery ends without reaching the provider."""

    __tablename__ = "counted_sends"
    __table_args__ = (
        Index(
            "ix_counted_sends_contact_id_channel_counted_at", "contact_id", "channel", "counted_at"
        ),
    )

    key: str = Field(primary_key=True)  # the delivery's key
    contact_id: int
    channel: str
    counted_at: datetime = Field(sa_type=UTCDateTime)


class CrmEvent(SQLModel, table=True):
    """Something that happened in the CRM or on a form/link; for triggers and success criteria.

    ``kind`` is a ``models.events.EventKind`` and ``payload`` the ``FlowEvent``'s JSON. Flow
    steps record the CRM changes they make here, in the same transaction as the change, keyed by
    the step's delivery key (participant, step, visit) so a retried step records, and changes,
    nothing twice; then they announce it through ``emit_event`` (participants, triggers). Their
    payloads carry ``flow_id`` and ``step_id`` (the step that made the change), and, beyond the
    ``FlowEvent`` fields:

    - every step's: ``outcome`` (the step's outcome text)
    - contact_updated: ``fields`` (``title``, ``company.category``, ...); by distribute_to_owner
      also ``our_contact_id`` and ``previous_our_contact_id``
    - added_to_selection / added_to_project: ``selection_id`` / ``project_id`` (add_to_list and
      exit hand-offs record them; they know no flow and announce nothing)
    - follow_up_created: ``follow_up_id``, ``owner_id``, ``follow_up_kind`` (todo/meeting),
      ``starts_at``
    - request_created: ``request_id``, ``owner_id``, ``type``, ``category``
    - sale_created: ``sale_id`` (a FlowEvent field), ``owner_id``, ``company_id``, ``type``,
      ``stage``
    """

    __tablename__ = "crm_events"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)  # idempotency: the same event is recorded once
    kind: str = Field(index=True)
    contact_id: int | None = Field(default=None, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    occurred_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    # When control.ingest delivered it to participants and triggers; None: not (yet) done.
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # When a delivery of it began (control.ingest claims it): another waits until it is
    # delivered, or until the claim is old enough to mean that delivery died.
    delivering_since: datetime | None = Field(default=None, sa_type=UTCDateTime)


_RECORD_EVENT = insert(SQLModel.metadata.tables[str(CrmEvent.__tablename__)])


def find_event(db: Session, event_id: str) -> CrmEvent | None:
    return db.exec(select(CrmEvent).where(CrmEvent.event_id == event_id)).first()


def record_event(db: Session, event: FlowEvent, **details: Any) -> FlowEvent:
    """Add an event to the caller's transaction: it commits with the change it describes, so the
    event exists exactly when the change does. The unique ``event_id`` refuses a second copy.
    The payload is the event's JSON, as ``control.ingest`` records it, plus ``details``. One
    statement built once, not the ORM's unit of work: steps record an event at every CRM change."""
    row = {
        "event_id": event.event_id,
        "kind": event.kind.value,
        "contact_id": event.contact_id,
        "payload": {**event.model_dump(mode="json"), **details},
        "occurred_at": event.occurred_at,
    }
    db.connection().execute(_RECORD_EVENT, row)
    return event


def record_step_event(
    db: Session,
    kind: EventKind,
    *,
    event_id: str,
    contact_id: int,
    flow_id: str,
    step_id: str,
    sale_id: int | None = None,
    **details: Any,
) -> FlowEvent:
    """The event a CRM-changing step records about its own change, in the change's transaction."""
    event = FlowEvent(
        event_id=event_id,
        kind=kind,
        contact_id=contact_id,
        occurred_at=utcnow(),
        flow_id=flow_id,
        step_id=step_id,
        sale_id=sale_id,
    )
    return record_event(db, event, **details)


class Departure(BaseModel):
    """The participant's last record, made by the activity of the step before a finish without
    hand-offs: when it left, and the reason the finish's checks gave to drop out instead."""

    at: datetime
    leave_reason: str | None = None


class StepChange(BaseModel):
    """What the activity of a step that changes the CRM reports: its outcome, and the event it
    recorded (None when it changed nothing), which the step then announces (``emit_event``).
    ``leave_reason`` is set when the checks the activity made at the step's entry say the
    participant leaves instead (nothing changed)."""

    outcome: str
    event: FlowEvent | None = None
    leave_reason: str | None = None
    # Set when the activity also made the participant's last record, for the finish after it.
    departure: Departure | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_outcome(cls, data: Any) -> Any:
        # List steps recorded before they made their entry's checks reported a bare outcome.
        return {"outcome": data} if isinstance(data, str) else data

    @classmethod
    def left(cls, reason: str) -> Self:
        return cls(outcome=reason, leave_reason=reason)


def change_made_before(db: Session, event_id: str) -> StepChange | None:
    """What an earlier attempt of the same step visit did, if it committed."""
    row = find_event(db, event_id)
    if row is None:
        return None
    outcome = str(row.payload.get("outcome", "done before"))
    return StepChange(outcome=outcome, event=FlowEvent.model_validate(row.payload))


class WriteLock(SQLModel, table=True):
    """One row per named critical section; see ``serialize_on``."""

    __tablename__ = "write_locks"

    name: str = Field(primary_key=True)
    taken: int = 0


def serialize_on(db: Session, name: str) -> None:
    """Make the rest of the caller's transaction run alone among transactions that name the same
    lock: the first statement bumps the lock's row.

    Writing first is what makes it portable. On PostgreSQL the UPDATE holds the row lock until
    commit, and under READ COMMITTED every later statement sees what earlier holders committed.
    On SQLite the UPDATE opens the write transaction (pysqlite begins one before the first write,
    not before reads), which waits on busy_timeout while another writer holds it. A first use
    inserts the row; two first uses racing on PostgreSQL end in an IntegrityError for one of them,
    whose ``transact`` redoes the whole transaction.
    """
    bump = update(WriteLock).where(col(WriteLock.name) == name).values(taken=WriteLock.taken + 1)
    if db.exec(bump).rowcount == 0:
        db.add(WriteLock(name=name, taken=1))
        db.flush()


def transact(engine: Engine, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction, redoing it once if it lost a race to insert a unique row
    (a lock's first use, an event another attempt recorded meanwhile): the redo sees that row."""
    for attempt in range(2):
        try:
            with session(engine) as db:
                return work(db)
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


class OwnerShare(SQLModel, table=True):
    """How many contacts one distribute_to_owner pool (flow and step) has given an associate."""

    __tablename__ = "owner_shares"
    __table_args__ = (UniqueConstraint("pool", "associate_id"),)

    id: int | None = Field(default=None, primary_key=True)
    pool: str = Field(index=True)
    associate_id: int = Field(index=True)
    assigned: int = 0
