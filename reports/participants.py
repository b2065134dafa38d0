"""What the console lists: each flow's figures, a flow's participants a page at a time, and one
participant's messages and events. Every read is a few indexed queries whatever the number of
participants (counts grouped in SQL, pages with LIMIT/OFFSET); nothing here asks Temporal.

Names are masked as in Temporal summaries (``models.personal_data``): the console shows who a
participant is to someone who knows, not the contact's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time

from sqlalchemy import Engine, func
from sqlmodel import col, select

from models.crm import Contact
from models.database import session
from models.engine import CrmEvent, Delivery, FlowRecord, Participant, ParticipantStatus
from models.personal_data import mask_email, mask_phone, short_name

PAGE_SIZE = 50
# A ledger key starts with the participant id, the first run's id: a UUID, 36 characters.
RUN_ID_LENGTH = 36
SENT = "sent"


@dataclass(frozen=True)
class FlowSummary:
    id: str
    name: str
    status: str
    latest_version: int
    active: int
    finished: int  # Finished and Finished with success
    enrolled: int
    success_rate: float | None  # Finished with success / enrolled
    sent_today: int  # emails and SMS handed over since local midnight (UTC on the server)


def flow_summaries(engine: Engine, now: datetime | None = None) -> list[FlowSummary]:
    """Every deployed flow with its participant figures: one grouped query per table."""
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.astimezone(UTC).date(), time(0), tzinfo=UTC)
    with session(engine) as db:
        flows = db.exec(select(FlowRecord).order_by(col(FlowRecord.name))).all()
        counts: dict[str, dict[str, int]] = {}
        for flow_id, status, n in db.exec(
            select(Participant.flow_id, Participant.status, func.count()).group_by(
                col(Participant.flow_id), col(Participant.status)
            )
        ).all():
            counts.setdefault(flow_id, {})[status] = n
        sent = dict(
            db.exec(
                select(Participant.flow_id, func.count())
                .join(
                    Delivery,
                    col(Participant.id) == func.substr(Delivery.key, 1, RUN_ID_LENGTH),
                )
                .where(Delivery.status == SENT, col(Delivery.updated_at) >= midnight)
                .group_by(col(Participant.flow_id))
            ).all()
        )
    summaries = []
    for flow in flows:
        by_status = counts.get(flow.id, {})
        enrolled = sum(by_status.values())
        success = by_status.get(ParticipantStatus.finished_with_success.value, 0)
        summaries.append(
            FlowSummary(
                id=flow.id,
                name=flow.name,
                status=flow.status,
                latest_version=flow.latest_version,
                active=by_status.get(ParticipantStatus.active.value, 0),
                finished=by_status.get(ParticipantStatus.finished.value, 0) + success,
                enrolled=enrolled,
                success_rate=success / enrolled if enrolled else None,
                sent_today=sent.get(flow.id, 0),
            )
        )
    return summaries


def active_participants(engine: Engine, flow_id: str) -> int:
    """How many participants a pause, resume or end would reach (the confirmation says it)."""
    with session(engine) as db:
        return db.exec(
            select(func.count()).where(
                Participant.flow_id == flow_id,
                Participant.status == ParticipantStatus.active.value,
            )
        ).one()


@dataclass(frozen=True)
class ParticipantRow:
    id: str
    workflow_id: str
    contact_id: int
    name: str  # "Karin S."
    email: str  # "k…@example.com"
    flow_version: int
    status: str
    current_step: str | None
    wait_until: datetime | None
    drop_out_reason: str | None
    enrolled_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class ParticipantPage:
    rows: list[ParticipantRow]
    total: int
    page: int  # from 1
    pages: int


def _row(participant: Participant, contact: Contact | None) -> ParticipantRow:
    return ParticipantRow(
        id=participant.id,
        workflow_id=participant.workflow_id,
        contact_id=participant.contact_id,
        name=short_name(contact.first_name, contact.last_name) if contact else "(no contact)",
        email=mask_email(contact.email) if contact and contact.email else "",
        flow_version=participant.flow_version,
        status=participant.status,
        current_step=participant.current_step,
        wait_until=participant.wait_until,
        drop_out_reason=participant.drop_out_reason,
        enrolled_at=participant.enrolled_at,
        finished_at=participant.finished_at,
    )


def participant_page(
    engine: Engine,
    flow_id: str,
    *,
    step: str | None = None,
    status: str | None = None,
    page: int = 1,
    size: int = PAGE_SIZE,
) -> ParticipantPage:
    """One page of a flow's participants, newest first, at ``step`` and in ``status`` if given."""
    conditions = [Participant.flow_id == flow_id]
    if step:
        conditions.append(Participant.current_step == step)
    if status:
        conditions.append(Participant.status == status)
    with session(engine) as db:
        total = db.exec(select(func.count()).where(*conditions)).one()
        pages = max(1, -(-total // size))
        page = min(max(1, page), pages)
        rows = db.exec(
            select(Participant, Contact)
            .join(Contact, col(Contact.id) == Participant.contact_id, isouter=True)
            .where(*conditions)
            .order_by(col(Participant.enrolled_at).desc(), col(Participant.id))
            .limit(size)
            .offset((page - 1) * size)
        ).all()
    return ParticipantPage([_row(p, c) for p, c in rows], total, page, pages)


@dataclass(frozen=True)
class Message:
    key: str  # participant/step/visit
    step_id: str
    channel: str
    recipient: str  # masked
    status: str
    provider_id: str | None  # Message-ID or SMS sid: finds it in the dev stack's outbox
    detail: str | None
    at: datetime


@dataclass(frozen=True)
class EventSeen:
    kind: str
    at: datetime
    step_id: str | None
    detail: str


@dataclass
class ParticipantDetail:
    row: ParticipantRow
    messages: list[Message] = field(default_factory=list)
    events: list[EventSeen] = field(default_factory=list)


def participant_detail(
    engine: Engine, participant_id: str, events_limit: int = 100
) -> ParticipantDetail | None:
    """A participant's row, its sends from the delivery ledger (a key range on the unique key:
    an index scan) and the events of its contact since it was enrolled."""
    with session(engine) as db:
        found = db.exec(
            select(Participant, Contact)
            .join(Contact, col(Contact.id) == Participant.contact_id, isouter=True)
            .where(Participant.id == participant_id)
        ).first()
        if found is None:
            return None
        participant, contact = found
        # "/" sorts just before "0": every key that starts with "<id>/".
        deliveries = db.exec(
            select(Delivery)
            .where(
                col(Delivery.key) >= f"{participant_id}/", col(Delivery.key) < f"{participant_id}0"
            )
            .order_by(col(Delivery.created_at))
        ).all()
        end = participant.finished_at
        query = select(CrmEvent).where(
            CrmEvent.contact_id == participant.contact_id,
            col(CrmEvent.occurred_at) >= participant.enrolled_at,
        )
        if end is not None:
            query = query.where(col(CrmEvent.occurred_at) <= end)
        events = db.exec(query.order_by(col(CrmEvent.occurred_at)).limit(events_limit)).all()
    detail = ParticipantDetail(_row(participant, contact))
    for delivery in deliveries:
        detail.messages.append(
            Message(
                key=delivery.key,
                step_id=delivery.key.split("/")[1] if "/" in delivery.key else "",
                channel=delivery.channel,
                recipient=mask_email(delivery.recipient)
                if delivery.channel == "email"
                else mask_phone(delivery.recipient),
                status=delivery.status,
                provider_id=delivery.provider_id,
                detail=delivery.detail,
                at=delivery.updated_at,
            )
        )
    for event in events:
        payload = event.payload
        if payload.get("flow_id") not in (None, participant.flow_id):
            continue  # another flow's own change
        what = [
            f"{name} {payload[name]}"
            for name in ("form_id", "link", "selection_id", "project_id", "sale_id")
            if payload.get(name)
        ]
        detail.events.append(
            EventSeen(
                kind=event.kind,
                at=event.occurred_at,
                step_id=payload.get("step_id"),
                detail=", ".join(what) or str(payload.get("outcome", "")),
            )
        )
    return detail
