"""Steps that change the participant's contact: update_contact and distribute_to_owner; and the
one read a flow with a recipient clock makes of it: the contact's time zone.

Each activity is one transaction that makes the change and records its CRM event, keyed by the
step's delivery key (participant, step, visit). A retry finds the event and returns the outcome
it recorded, so a toggle is toggled once and an owner is counted once however often Temporal
retries. The event comes back with the outcome for the step to announce.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.crm import missing_contact
from activities.participants import ParticipantRecord, enter_changing_step
from models.contact_update import apply_row, field_spec
from models.crm import (
    Associate,
    Availability,
    Company,
    Contact,
    Notification,
    contact_facts,
    group_members,
)
from models.database import session
from models.engine import (
    OwnerShare,
    StepChange,
    record_step_event,
    serialize_on,
    transact,
)
from models.events import EventKind
from models.flow import DistributeToOwner, UpdateRow
from models.settings import get_settings
from models.time_zones import RecipientZone, recipient_zone


class ContactUpdate(BaseModel):
    event_key: str
    flow_id: str
    step_id: str
    contact_id: int
    rows: list[UpdateRow]
    record: ParticipantRecord | None = None  # the step's entry, to record and check first


class OwnerDistribution(BaseModel):
    event_key: str
    flow_id: str
    flow_name: str
    contact_id: int
    step: DistributeToOwner
    record: ParticipantRecord | None = None  # the step's entry, to record and check first


class TimeZoneQuestion(BaseModel):
    contact_id: int
    field: str  # the fact that may name the zone (the flow's recipient_clock.field)
    flow_time_zone: str  # the answer when nothing on the contact says


class ContactActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def find_time_zone(self, question: TimeZoneQuestion) -> RecipientZone:
        """The contact's own time zone, by the rule of ``models.time_zones``. The answer is a
        zone name and where it came from: nothing of the contact's data reaches the history."""
        with session(self._engine) as db:
            facts = contact_facts(db, question.contact_id)
        if facts is None:
            raise missing_contact(question.contact_id)
        region = get_settings().sms_default_region
        return recipient_zone(facts, question.field, question.flow_time_zone, region)

    @activity.defn
    def update_contact(self, update: ContactUpdate) -> StepChange:
        """Apply the ticked rows in order; what changed, or "no changes"."""
        event_id = f"{update.event_key}/{EventKind.contact_updated.value}"

        def work(db: Session) -> StepChange:
            # One writer per contact at a time: rows read, change and write back whole lists.
            serialize_on(db, f"contact/{update.contact_id}")
            settled = enter_changing_step(db, update.record, event_id)
            if settled is not None:
                return settled
            contact = db.get(Contact, update.contact_id)
            if contact is None:
                raise missing_contact(update.contact_id)
            company = db.get(Company, contact.company_id) if contact.company_id else None
            changes: list[str] = []
            fields: list[str] = []
            notes: list[str] = []
            for index, row in enumerate(update.rows):
                if not row.enabled:
                    continue
                spec = field_spec(row.target, row.field)
                record: Contact | Company | None = contact if row.target == "contact" else company
                if record is None:
                    notes.append(f"row {index} skipped: the contact has no company")
                    continue
                if (
                    spec is not None
                    and spec.kind == "associate"
                    and row.action == "select"
                    and isinstance(row.value, int)
                    and db.get(Associate, row.value) is None
                ):
                    notes.append(f"row {index} skipped: associate {row.value} does not exist")
                    continue
                try:
                    change = apply_row(record, row)
                except ValueError as error:
                    # Validation refuses such rows; a flow stored before a rule changed may not.
                    raise ApplicationError(
                        f"row {index}: {error}", type="InvalidUpdateRow", non_retryable=True
                    ) from None
                if change is not None:
                    changes.append(change)
                    assert spec is not None
                    fields.append(spec.label)
            if not changes:
                return StepChange(outcome="; ".join(["no changes", *notes]))
            db.add(contact)
            if company is not None:
                db.add(company)
            outcome = "; ".join(changes + notes)
            event = record_step_event(
                db,
                EventKind.contact_updated,
                event_id=event_id,
                contact_id=update.contact_id,
                flow_id=update.flow_id,
                step_id=update.step_id,
                fields=fields,
                outcome=outcome,
            )
            return StepChange(outcome=outcome, event=event)

        return transact(self._engine, work)

    @activity.defn
    def distribute_to_owner(self, request: OwnerDistribution) -> StepChange:
        """Make the next associate of the pool the contact's our contact.

        The spread must be exact however many participants arrive at once (N contacts over k
        owners: each gets ⌊N/k⌋ or ⌈N/k⌉). The pool's counts live in ``owner_shares`` and every
        assignment happens under ``serialize_on`` the pool: read the counts, give the contact
        to the available associate with the fewest (ties: lowest id), count it, set the owner,
        notify and record the event, all in one transaction. Why a database lock rather than
        a single-writer workflow per pool: the counts and the contact's owner must change
        together, and only the database can commit both at once; a pool workflow would hand
        out a turn in one system and set the owner in another, so a failure between the two
        would skew the spread or need a compensation. The lock is held for a few
        milliseconds, and only participants of the same step wait on it.
        """
        step = request.step
        pool = f"{request.flow_id}/{step.id}"
        event_id = f"{request.event_key}/owner"

        def work(db: Session) -> StepChange:
            serialize_on(db, f"owner-pool/{pool}")
            settled = enter_changing_step(db, request.record, event_id)
            if settled is not None:
                return settled
            contact = db.get(Contact, request.contact_id)
            if contact is None:
                raise missing_contact(request.contact_id)
            if step.only_if_unassigned and contact.our_contact_id is not None:
                current = db.get(Associate, contact.our_contact_id)
                name = current.name if current is not None else f"#{contact.our_contact_id}"
                return StepChange(outcome=f"already owned by {name}: left as it is")
            owner = _next_owner(db, pool, step)
            how = "next in turn"
            if owner is None:
                fallback = (
                    db.get(Associate, step.fallback_associate_id)
                    if step.fallback_associate_id is not None
                    else None
                )
                if fallback is None:
                    return StepChange(outcome="no one available and no fallback: owner unchanged")
                owner, how = fallback, "fallback: no one available"
            assert owner.id is not None
            previous = contact.our_contact_id
            contact.our_contact_id = owner.id
            db.add(contact)
            db.add(
                Notification(
                    associate_id=owner.id,
                    subject=f"New contact: {contact.full_name}",
                    text=f"The flow {request.flow_name!r} made you our contact for "
                    f"{contact.full_name} (contact {contact.id}).",
                )
            )
            outcome = f"owner {owner.name} ({how})"
            event = record_step_event(
                db,
                EventKind.contact_updated,
                event_id=event_id,
                contact_id=request.contact_id,
                flow_id=request.flow_id,
                step_id=step.id,
                fields=["our_contact_id"],
                our_contact_id=owner.id,
                previous_our_contact_id=previous,
                outcome=outcome,
            )
            return StepChange(outcome=outcome, event=event)

        return transact(self._engine, work)


def _pool_members(db: Session, step: DistributeToOwner) -> list[Associate]:
    if step.user_group_id is not None:
        return group_members(db, step.user_group_id)
    return list(
        db.exec(
            select(Associate)
            .where(col(Associate.id).in_(step.associate_ids))
            .order_by(col(Associate.id))
        ).all()
    )


def _next_owner(db: Session, pool: str, step: DistributeToOwner) -> Associate | None:
    """The available member with the fewest contacts from this pool, counted; None if none."""
    available = [a for a in _pool_members(db, step) if a.availability == Availability.normal]
    if not available:
        return None
    shares = {
        share.associate_id: share
        for share in db.exec(
            select(OwnerShare).where(
                OwnerShare.pool == pool,
                col(OwnerShare.associate_id).in_([a.id for a in available]),
            )
        )
    }
    owner = min(
        available,
        key=lambda a: (shares[a.id].assigned if a.id in shares else 0, a.id or 0),
    )
    assert owner.id is not None
    share = shares.get(owner.id) or OwnerShare(pool=pool, associate_id=owner.id)
    share.assigned += 1
    db.add(share)
    return owner
