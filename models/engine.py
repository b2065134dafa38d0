"""The flow engine's own tables: flows and their versions, participants, deliveries, CRM events."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.database import UTCDateTime, utcnow


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


class Participant(SQLModel, table=True):
    """A contact travelling a flow: the queryable mirror of one participant workflow."""

    __tablename__ = "participants"
    __table_args__ = (
        Index("ix_participants_flow_id_status", "flow_id", "status"),
        # "never active twice in the same flow" looks participants up by flow and contact.
        Index("ix_participants_flow_id_contact_id", "flow_id", "contact_id"),
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
    drop_out_reason: str | None = None
    enrolled_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"onupdate": utcnow}
    )


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


class CrmEvent(SQLModel, table=True):
    """Something that happened in the CRM or on a form/link; for triggers and success criteria."""

    __tablename__ = "crm_events"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)  # idempotency: the same event is recorded once
    kind: str = Field(index=True)
    contact_id: int | None = Field(default=None, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    occurred_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    # When activities.events delivered it to participants and triggers; None: not (yet) done.
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
