"""Steps that create CRM records for the contact: create_follow_up, create_request, create_sale.

Each creation is one transaction: the record, its notification and its CRM event, keyed by the
step's delivery key. A retry finds the event and returns the outcome it recorded, so a retried
step creates one record. Dates count from ``at``, the participant's ``workflow.now()`` when it
reached the step, so every attempt computes the same dates.

What happens when something named does not exist:

- the contact: non-retryable failure (the participant drops out, as on every CRM step);
- a project, request type, status, priority, category, sale type or stage (validation checks them
  against the CRM before a flow is deployed; the CRM may have changed since): non-retryable
  failure with the reason;
- the owner (no our contact, no our service contact, a named associate gone): the step goes on
  and says so in its outcome. A follow-up needs an owner, so none is created; a sale or request
  is created without one.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, time, timedelta

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.crm import missing_contact
from activities.participants import ParticipantRecord, enter_changing_step
from models import diary, schedule
from models.crm import (
    Associate,
    Availability,
    Contact,
    FollowUp,
    Notification,
    Project,
    Request,
    RequestCategory,
    RequestType,
    Sale,
    SaleType,
    contact_facts,
    group_members,
)
from models.engine import StepChange, record_step_event, serialize_on, transact
from models.events import EventKind
from models.flow import (
    CreateFollowUp,
    CreateRequest,
    CreateSale,
    FollowUpDetails,
    HolidayCalendar,
    Interval,
    Owner,
    RequestDetails,
)
from models.merge_tags import MergeTagError, render, render_header


class Creation(BaseModel):
    event_key: str
    flow_id: str
    flow_name: str
    time_zone: str
    holidays: HolidayCalendar | None = None  # the flow's: working days skip its closed days
    contact_id: int
    at: datetime  # the participant's now when it reached the step
    record: ParticipantRecord | None = None  # the step's entry, to record and check first


class FollowUpCreation(Creation):
    step: CreateFollowUp


class RequestCreation(Creation):
    step: CreateRequest


class SaleCreation(Creation):
    step: CreateSale


def _missing(what: str) -> ApplicationError:
    return ApplicationError(f"{what} does not exist", type="MissingCrmRecord", non_retryable=True)


def _contact(db: Session, contact_id: int) -> tuple[Contact, dict[str, object]]:
    contact = db.get(Contact, contact_id)
    facts = contact_facts(db, contact_id)
    if contact is None or facts is None:
        raise missing_contact(contact_id)
    return contact, facts


def _text(
    template: str, facts: dict[str, object], *, html: bool = False, line: bool = False
) -> str:
    try:
        return render_header(template, facts) if line else render(template, facts, html=html)
    except MergeTagError as error:
        raise ApplicationError(str(error), type="MergeTagError", non_retryable=True) from None


def _owner(db: Session, contact: Contact, owner: Owner) -> tuple[Associate | None, str]:
    """The owner the step names, or None and why not."""
    if owner.kind == "associate":
        wanted, absent = owner.associate_id, f"associate {owner.associate_id} does not exist"
    elif owner.kind == "our_contact":
        wanted, absent = contact.our_contact_id, "the contact has no our contact"
    else:
        wanted, absent = contact.our_service_contact_id, "the contact has no our service contact"
    found = db.get(Associate, wanted) if wanted is not None else None
    return found, absent


def _project(db: Session, project_id: int | None) -> None:
    if project_id is not None and db.get(Project, project_id) is None:
        raise _missing(f"project {project_id}")


def _after(at: datetime, interval: Interval | None, request: Creation) -> datetime:
    if interval is None:
        return at
    return schedule.add_interval(
        at, interval.amount, interval.unit, request.time_zone, _closed(request)
    )


def _closed(request: Creation) -> schedule.ClosedDays:
    return schedule.NOTHING_CLOSED if request.holidays is None else request.holidays.closed_days


def make_follow_up(
    db: Session, request: Creation, step: FollowUpDetails, step_id: str
) -> StepChange:
    """The follow-up ``step`` describes, in ``db``'s transaction, once per ``request.event_key``:
    a create_follow_up step's, or a form's or tracked link's own action's."""
    zone = request.time_zone
    event_id = f"{request.event_key}/{EventKind.follow_up_created.value}"
    settled = enter_changing_step(db, request.record, event_id)
    if settled is not None:
        return settled
    contact, facts = _contact(db, request.contact_id)
    _project(db, step.project_id)
    owner, absent = _owner(db, contact, step.owner)
    if owner is None:
        return StepChange(outcome=f"no follow-up created: {absent}")
    assert owner.id is not None
    starts_at: datetime
    ends_at: datetime | None = None
    if step.kind == "todo":
        due = schedule.local_date(_after(request.at, step.after, request), zone)
        starts_at = schedule.local_to_instant(datetime.combine(due, time()), zone)
        when = f"due {due.isoformat()}"
    else:
        # Bookings in one diary take turns, or two could take the same free slot.
        serialize_on(db, f"diary/{owner.id}")
        duration = timedelta(minutes=step.duration_minutes)
        earliest = _after(request.at, step.after, request)
        booked = _booked(db, owner.id, earliest)
        slot = diary.first_free_slot(earliest, duration, booked, zone, closed=_closed(request))
        if slot is None:
            full = f"no follow-up created: {owner.name}'s diary is full for a year"
            return StepChange(outcome=full)
        starts_at, ends_at = slot, slot + duration
        when = f"at {schedule.describe_instant(slot, zone)}"
    title = _text(step.title, facts, line=True)
    follow_up = FollowUp(
        contact_id=request.contact_id,
        owner_id=owner.id,
        kind=step.kind,
        type=step.follow_up_type,
        title=title,
        agenda=_text(step.agenda, facts, html=True),
        project_id=step.project_id,
        starts_at=starts_at,
        ends_at=ends_at,
    )
    db.add(follow_up)
    db.flush()
    what = "meeting" if step.kind == "meeting" else "to-do"
    db.add(
        Notification(
            associate_id=owner.id,
            subject=f"New {what}: {title}",
            text=f"The flow {request.flow_name!r} gave you a {what} with "
            f"{contact.full_name} {when}.",
        )
    )
    # The record's id and the step's own title, not the title filled in with the
    # contact's data: the outcome is kept in the participant's history.
    outcome = f"{what} #{follow_up.id} {step.title!r} for {owner.name} {when}"
    event = record_step_event(
        db,
        EventKind.follow_up_created,
        event_id=event_id,
        contact_id=request.contact_id,
        flow_id=request.flow_id,
        step_id=step_id,
        follow_up_id=follow_up.id,
        owner_id=owner.id,
        follow_up_kind=step.kind,
        starts_at=starts_at.isoformat(),
        outcome=outcome,
    )
    return StepChange(outcome=outcome, event=event)


def make_request(db: Session, request: Creation, step: RequestDetails, step_id: str) -> StepChange:
    """A request of the ``step``'s type, status, category and priority, with its message, in
    ``db``'s transaction, once per ``request.event_key``: a create_request step's, or a form's or
    tracked link's own action's.

    Owner ``automatic`` follows this assignment rule: among the members of the category's
    user group whose availability is normal, the one with the fewest open requests (a
    request is open unless its status is one of its type's closed statuses); ties go to
    the lowest associate id. With no member available the request stays unassigned, and
    the category's members are responsible for it.
    """
    event_id = f"{request.event_key}/{EventKind.request_created.value}"
    settled = enter_changing_step(db, request.record, event_id)
    if settled is not None:
        return settled
    _, facts = _contact(db, request.contact_id)
    request_type = db.exec(select(RequestType).where(RequestType.name == step.request_type)).first()
    if request_type is None:
        raise _missing(f"request type {step.request_type!r}")
    for name, value, allowed in (
        ("status", step.status, request_type.statuses),
        ("priority", step.priority, request_type.priorities),
    ):
        if value not in allowed:
            raise ApplicationError(
                f"request type {step.request_type!r} has no {name} {value!r}",
                type="InvalidRequest",
                non_retryable=True,
            )
    category = db.exec(select(RequestCategory).where(RequestCategory.name == step.category)).first()
    if category is None:
        raise _missing(f"request category {step.category!r}")

    owner: Associate | None = None
    note = ""
    if step.owner == "associate":
        owner = db.get(Associate, step.associate_id)
        note = "" if owner else f" (associate {step.associate_id} does not exist)"
    elif step.owner == "automatic":
        # Assignments in one category take turns, so each sees the last one's count.
        serialize_on(db, f"request-category/{category.name}")
        owner = _least_busy(db, category)
        note = "" if owner else " (no member of the category is available)"
    request_row = Request(
        contact_id=request.contact_id,
        owner_id=owner.id if owner else None,
        title=_text(step.title, facts, line=True),
        type=step.request_type,
        status=step.status,
        category=step.category,
        priority=step.priority,
        messages=[
            {
                "author": f"flow {request.flow_name}",
                "text": _text(step.message, facts, html=True),
                "at": request.at.isoformat(),
            }
        ]
        if step.message
        else [],
    )
    db.add(request_row)
    db.flush()
    whose = f"assigned to {owner.name}" if owner else f"unassigned{note}"
    outcome = f"request #{request_row.id} {step.title!r} ({step.category}, {step.priority}) {whose}"
    event = record_step_event(
        db,
        EventKind.request_created,
        event_id=event_id,
        contact_id=request.contact_id,
        flow_id=request.flow_id,
        step_id=step_id,
        request_id=request_row.id,
        owner_id=request_row.owner_id,
        type=step.request_type,
        category=step.category,
        outcome=outcome,
    )
    return StepChange(outcome=outcome, event=event)


class RecordActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def create_follow_up(self, request: FollowUpCreation) -> StepChange:
        step = request.step
        return transact(self._engine, lambda db: make_follow_up(db, request, step, step.id))

    @activity.defn
    def create_request(self, request: RequestCreation) -> StepChange:
        step = request.step
        return transact(self._engine, lambda db: make_request(db, request, step, step.id))

    @activity.defn
    def create_sale(self, request: SaleCreation) -> StepChange:
        step, zone = request.step, request.time_zone
        event_id = f"{request.event_key}/{EventKind.sale_created.value}"

        def work(db: Session) -> StepChange:
            settled = enter_changing_step(db, request.record, event_id)
            if settled is not None:
                return settled
            contact, facts = _contact(db, request.contact_id)
            _project(db, step.project_id)
            sale_type = db.exec(select(SaleType).where(SaleType.name == step.sale_type)).first()
            if sale_type is None:
                raise _missing(f"sale type {step.sale_type!r}")
            stage = step.stage or sale_type.first_stage
            if stage not in sale_type.stages:
                raise ApplicationError(
                    f"sale type {step.sale_type!r} has no stage {stage!r}",
                    type="InvalidSale",
                    non_retryable=True,
                )
            estimate = step.after or Interval(
                amount=sale_type.estimate_amount,
                unit=sale_type.estimate_unit,
            )
            estimated_at = _after(request.at, estimate, request)
            owner, absent = _owner(db, contact, step.owner)
            sale = Sale(
                contact_id=request.contact_id,
                company_id=contact.company_id,
                owner_id=owner.id if owner else None,
                title=_text(step.title, facts, line=True),
                type=step.sale_type,
                stage=stage,
                amount=step.amount,
                currency=step.currency,
                description=_text(step.description, facts),
                project_id=step.project_id,
                estimated_at=estimated_at,
            )
            db.add(sale)
            db.flush()
            whose = f"for {owner.name}" if owner else f"without owner ({absent})"
            day = schedule.local_date(estimated_at, zone)
            outcome = (
                f"sale #{sale.id} {step.title!r} {sale.amount:g} {sale.currency}, {stage}, "
                f"estimated {day.isoformat()}, {whose}"
            )
            event = record_step_event(
                db,
                EventKind.sale_created,
                event_id=event_id,
                contact_id=request.contact_id,
                flow_id=request.flow_id,
                step_id=step.id,
                sale_id=sale.id,
                owner_id=sale.owner_id,
                company_id=sale.company_id,
                type=step.sale_type,
                stage=stage,
                outcome=outcome,
            )
            return StepChange(outcome=outcome, event=event)

        return transact(self._engine, work)


def _booked(db: Session, owner_id: int, since: datetime) -> list[tuple[datetime, datetime]]:
    """The owner's meetings that end after ``since`` (to-dos take no time in the diary)."""
    rows = db.exec(
        select(FollowUp).where(
            FollowUp.owner_id == owner_id,
            col(FollowUp.starts_at).is_not(None),
            col(FollowUp.ends_at) > since,
        )
    ).all()
    return [(row.starts_at, row.ends_at) for row in rows if row.starts_at and row.ends_at]


def _least_busy(db: Session, category: RequestCategory) -> Associate | None:
    if category.user_group_id is None:
        return None
    members = [
        a
        for a in group_members(db, category.user_group_id)
        if a.availability == Availability.normal
    ]
    if not members:
        return None
    closed = {
        (request_type.name, status)
        for request_type in db.exec(select(RequestType))
        for status in request_type.closed_statuses
    }
    open_requests = Counter(
        owner_id
        for owner_id, kind, status in db.exec(
            select(Request.owner_id, Request.type, Request.status).where(
                col(Request.owner_id).in_([a.id for a in members])
            )
        )
        if (kind, status) not in closed
    )
    return min(members, key=lambda a: (open_requests[a.id], a.id or 0))
