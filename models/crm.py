"""The CRM that flow steps read and change: contacts, companies, associates and their records."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ValidationError, model_validator
from sqlalchemy import JSON, Select, UniqueConstraint, bindparam, or_
from sqlalchemy import select as sa_select
from sqlalchemy.ext.mutable import MutableDict, MutableList
from sqlmodel import Field, Session, SQLModel, col, select

from models.database import UTCDateTime, utcnow
from models.flow import (
    Definition,
    FieldErrors,
    FollowUpDetails,
    ReplyTo,
    RequestDetails,
    Sender,
)

# In-place changes (contact.interests.append(...)) are persisted only if the column tracks them.
# Tracking is shallow: mutate nested values (e.g. one consent dict) by reassigning the list.
JSON_DICT = MutableDict.as_mutable(JSON)
JSON_LIST = MutableList.as_mutable(JSON)


class Availability(StrEnum):
    normal = "normal"
    absent = "absent"
    busy = "busy"


class UserGroup(SQLModel, table=True):
    __tablename__ = "user_groups"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)


class Associate(SQLModel, table=True):
    """A CRM user: owner of contacts, follow-ups, sales and requests."""

    __tablename__ = "associates"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    email: str | None = None
    mobile: str | None = None
    user_group_id: int | None = Field(default=None, foreign_key="user_groups.id", index=True)
    availability: str = Field(default=Availability.normal.value)


class AssociateGroupMembership(SQLModel, table=True):
    """Extra user-group memberships beyond the associate's primary group."""

    __tablename__ = "associate_group_memberships"
    __table_args__ = (UniqueConstraint("associate_id", "user_group_id"),)

    id: int | None = Field(default=None, primary_key=True)
    associate_id: int = Field(foreign_key="associates.id", index=True)
    user_group_id: int = Field(foreign_key="user_groups.id", index=True)


class Company(SQLModel, table=True):
    __tablename__ = "companies"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    category: str | None = None
    business: str | None = None
    country: str | None = None
    phone: str | None = None
    email: str | None = None
    website: str | None = None
    our_contact_id: int | None = Field(default=None, foreign_key="associates.id", index=True)
    user_defined: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_DICT)
    extra_fields: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_DICT)


class Contact(SQLModel, table=True):
    """A person. `email`/`mobile` are the primary ones; `emails`/`phones` hold the rest."""

    __tablename__ = "contacts"

    id: int | None = Field(default=None, primary_key=True)
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    first_name: str = ""
    last_name: str = ""
    title: str | None = None
    department: str | None = None
    email: str | None = Field(default=None, index=True)
    emails: list[str] = Field(default_factory=list, sa_type=JSON_LIST)
    mobile: str | None = None
    phones: list[str] = Field(default_factory=list, sa_type=JSON_LIST)
    position: str | None = None
    category: str | None = None
    our_contact_id: int | None = Field(default=None, foreign_key="associates.id", index=True)
    our_service_contact_id: int | None = Field(
        default=None, foreign_key="associates.id", index=True
    )
    no_mailings: bool = False
    retired: bool = False  # former employee
    interests: list[str] = Field(default_factory=list, sa_type=JSON_LIST)
    subscriptions: list[str] = Field(default_factory=list, sa_type=JSON_LIST)
    # Each: {"purpose", "legal_basis", "source", "comment"}.
    consents: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON_LIST)
    user_defined: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_DICT)
    extra_fields: dict[str, Any] = Field(default_factory=dict, sa_type=JSON_DICT)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, sa_column_kwargs={"onupdate": utcnow}
    )

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


class Selection(SQLModel, table=True):
    """A static selection (a fixed list of contacts)."""

    __tablename__ = "selections"

    id: int | None = Field(default=None, primary_key=True)
    name: str


class SelectionMember(SQLModel, table=True):
    __tablename__ = "selection_members"
    __table_args__ = (UniqueConstraint("selection_id", "contact_id"),)

    id: int | None = Field(default=None, primary_key=True)
    selection_id: int = Field(foreign_key="selections.id", index=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: int | None = Field(default=None, primary_key=True)
    name: str


class ProjectMember(SQLModel, table=True):
    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "contact_id"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)


class FollowUp(SQLModel, table=True):
    """A to-do or a meeting in an associate's diary."""

    __tablename__ = "follow_ups"

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    owner_id: int = Field(foreign_key="associates.id", index=True)
    kind: str = "todo"  # "todo" | "meeting"
    type: str | None = None
    title: str = ""
    agenda: str = ""
    project_id: int | None = Field(default=None, foreign_key="projects.id", index=True)
    starts_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ends_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Request(SQLModel, table=True):
    """A support ticket."""

    __tablename__ = "requests"

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    owner_id: int | None = Field(default=None, foreign_key="associates.id", index=True)
    title: str = ""
    type: str | None = None
    status: str | None = None
    category: str | None = None
    priority: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON_LIST)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Sale(SQLModel, table=True):
    __tablename__ = "sales"

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    company_id: int | None = Field(default=None, foreign_key="companies.id", index=True)
    owner_id: int | None = Field(default=None, foreign_key="associates.id", index=True)
    title: str = ""
    type: str | None = None
    stage: str | None = None
    amount: float = 0.0
    currency: str | None = None
    description: str = ""
    project_id: int | None = Field(default=None, foreign_key="projects.id", index=True)
    estimated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RequestType(SQLModel, table=True):
    """A request type limits the statuses and priorities a request of that type may have."""

    __tablename__ = "request_types"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    statuses: list[str] = Field(default_factory=list, sa_type=JSON_LIST)
    priorities: list[str] = Field(default_factory=list, sa_type=JSON_LIST)
    # Requests in these statuses are done: they do not count as an associate's open requests.
    closed_statuses: list[str] = Field(default_factory=list, sa_type=JSON_LIST)


class RequestCategory(SQLModel, table=True):
    """A request category; the members of its user group are responsible for its requests."""

    __tablename__ = "request_categories"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    user_group_id: int | None = Field(default=None, foreign_key="user_groups.id")


class SaleType(SQLModel, table=True):
    """A sale type gives the stages a sale moves through, its default stage and its estimated
    date (``estimate_amount`` ``estimate_unit`` after creation)."""

    __tablename__ = "sale_types"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    stages: list[str] = Field(default_factory=list, sa_type=JSON_LIST)
    default_stage: str | None = None  # None: the first stage
    estimate_amount: int = 30
    estimate_unit: str = "days"  # a models.schedule.IntervalUnit

    @property
    def first_stage(self) -> str | None:
        return self.default_stage or (self.stages[0] if self.stages else None)


class Notification(SQLModel, table=True):
    """An internal notification to an associate (new owner, new follow-up, ...)."""

    __tablename__ = "notifications"

    id: int | None = Field(default=None, primary_key=True)
    associate_id: int = Field(foreign_key="associates.id", index=True)
    subject: str = ""
    text: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    read: bool = False


class ReplyDetails(Definition):
    """The email a form's send_reply_email action sends to whoever submitted it: its From and
    Reply-To as a flow's email settings name them, its subject and body as a send_email step's
    (merge tags filled with the contact's data)."""

    sender: Sender = Field(alias="from")
    reply_to: ReplyTo = ReplyTo()
    subject: str = Field(min_length=1, max_length=998)
    text: str | None = None
    html: str | None = None

    @model_validator(mode="after")
    def _has_body(self) -> "ReplyDetails":
        if self.html is None and self.text is None:
            raise FieldErrors(("html", "needs a body: html or text"))
        return self


class OwnAction(BaseModel):
    """One of a form's or tracked link's own actions (spec §5), carried out when the form is
    submitted or the link clicked (``control.own_actions``), whatever flows do. Only the fields
    its kind needs are set; a request, a follow-up and a reply email keep their details in
    ``request``, ``follow_up`` and ``reply``."""

    kind: Literal[
        "add_to_selection",
        "remove_from_selection",
        "add_to_project",
        "remove_from_project",
        "add_interest",
        "remove_interest",
        "set_extra_field",
        "send_reply_email",
        "create_request",
        "create_follow_up",
        "run_script",
    ]
    selection_id: int | None = None
    project_id: int | None = None
    interest: str | None = None
    field: str | None = None  # set_extra_field: "x_vip"
    value: str | None = None
    script: str | None = None
    request: RequestDetails | None = None
    follow_up: FollowUpDetails | None = None
    reply: ReplyDetails | None = None
    # Follow-ups: due dates and free diary slots are counted in this zone, as a flow's.
    time_zone: str = "Europe/Stockholm"

    @model_validator(mode="after")
    def _has_details(self) -> "OwnAction":
        needed = DETAILS.get(self.kind)
        if needed is not None and getattr(self, needed) is None:
            raise FieldErrors((needed, f"a {self.kind} action needs its details in {needed!r}"))
        return self


# The actions whose details sit in a field of their own: kind -> that field.
DETAILS = {
    "create_request": "request",
    "create_follow_up": "follow_up",
    "send_reply_email": "reply",
}


class Form(SQLModel, table=True):
    """A web form; its submissions arrive as form_submitted events."""

    __tablename__ = "forms"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    actions: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON_LIST)  # OwnAction


class TrackedLink(SQLModel, table=True):
    """A link with actions of its own; flows name it by its URL (triggers, waits, splits)."""

    __tablename__ = "tracked_links"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    url: str = Field(unique=True)
    actions: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON_LIST)  # OwnAction


class OwnActions(BaseModel):
    name: str
    actions: list[OwnAction] = []
    invalid: list[str] = []  # why each action that is not valid is skipped when carried out


class ActionCatalogue(BaseModel):
    """Every form's and tracked link's own actions, for validation's overlap warnings."""

    forms: dict[int, OwnActions] = {}
    links: dict[str, OwnActions] = {}  # by URL


def _own(name: str, actions: list[dict[str, Any]]) -> OwnActions:
    own = OwnActions(name=name)
    for index, raw in enumerate(actions):
        try:
            own.actions.append(OwnAction.model_validate(raw))
        except ValidationError as error:
            reasons = "; ".join(
                ": ".join([*filter(None, [".".join(map(str, e["loc"]))]), e["msg"]]).replace(
                    "Value error, ", ""
                )
                for e in error.errors()
            )
            own.invalid.append(f"action {index}: {reasons}")
    return own


def action_catalogue(db: Session) -> ActionCatalogue:
    return ActionCatalogue(
        forms={
            form.id: _own(form.name, form.actions)
            for form in db.exec(select(Form))
            if form.id is not None
        },
        links={link.url: _own(link.name, link.actions) for link in db.exec(select(TrackedLink))},
    )


# Field catalogue for criteria, merge tags and update rows: name -> value kind.
# Kinds: "text", "list" (pick one), "multi" (multi-value), "bool", "date", "number", "tags".
# Names under OPEN_FIELD_PREFIXES ("user_defined.<name>", "extra.<name>") are open-ended.
CONTACT_FIELDS: dict[str, str] = {
    "first_name": "text",
    "last_name": "text",
    "title": "text",
    "department": "text",
    "email": "text",
    "emails": "multi",
    "mobile": "text",
    "phones": "multi",
    "position": "list",
    "category": "list",
    "company_id": "list",
    "our_contact_id": "list",
    "our_service_contact_id": "list",
    "no_mailings": "bool",
    "retired": "bool",
    "interests": "tags",
    "subscriptions": "tags",
    "consents": "tags",  # facts expose the consented purposes
    "created_at": "date",
    "updated_at": "date",
}

COMPANY_FIELDS: dict[str, str] = {
    "name": "text",
    "category": "list",
    "business": "list",
    "country": "list",
    "phone": "text",
    "email": "text",
    "website": "text",
    "our_contact_id": "list",
}

OPEN_FIELD_PREFIXES: tuple[str, ...] = ("user_defined.", "extra.")

# The user-defined and extra fields this CRM defines, name -> value kind ("text", "number",
# "decimal", "date" as ISO yyyy-mm-dd, "bool"). Criteria may name any such field; update rows may
# only write the ones defined here, so a value of the wrong kind is caught before a flow runs.
USER_DEFINED_FIELDS: dict[str, dict[str, str]] = {
    "contact": {
        "score": "number",
        "lead_score": "number",
        "lead_status": "text",
        "birthday": "date",
        "budget": "decimal",
        "webinar_attended": "bool",
    },
    "company": {"segment": "text", "employees": "number"},
}
EXTRA_FIELDS: dict[str, dict[str, str]] = {
    "contact": {"x_lead_source": "text", "x_last_webinar": "date", "x_vip": "bool"},
    "company": {"x_org_number": "text"},
}


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _open_facts(
    prefix: str, user_defined: dict[str, Any], extra: dict[str, Any]
) -> dict[str, object]:
    facts: dict[str, object] = {}
    for key, value in user_defined.items():
        facts[f"{prefix}.user_defined.{key}"] = _jsonable(value)
    for key, value in extra.items():
        facts[f"{prefix}.extra.{key}"] = _jsonable(value)
    return facts


def _associate_facts(prefix: str, associate: Associate | None) -> dict[str, object]:
    if associate is None:
        return {}
    return {
        f"{prefix}.name": associate.name,
        f"{prefix}.email": associate.email,
        f"{prefix}.mobile": associate.mobile,
    }


def _lists_of(member: type[SelectionMember] | type[ProjectMember], column: str) -> Select[Any]:
    """A contact's list ids, as a Core statement built once: every send and split reads them."""
    table = SQLModel.metadata.tables[str(member.__tablename__)]
    return sa_select(table.c[column]).where(table.c.contact_id == bindparam("contact"))


_SELECTIONS_OF = _lists_of(SelectionMember, "selection_id")
_PROJECTS_OF = _lists_of(ProjectMember, "project_id")


def contact_facts(session: Session, contact_id: int) -> dict[str, object] | None:
    """Flat, JSON-serialisable facts about one contact for criteria and merge tags.

    Keys: `contact.<field>` and `company.<field>` for the catalogue fields (company values are
    None without a company), `contact.id`, `company.id`, `contact.full_name`,
    `contact.user_defined.<k>`, `contact.extra.<k>` (same for company), `contact.selections`
    and `contact.projects` (sorted ids), and `contact.our_contact.name|email|mobile` and
    `contact.our_service_contact.*` when set. `contact.consents` is the list of purposes.
    """
    contact = session.get(Contact, contact_id)
    if contact is None:
        return None

    facts: dict[str, object] = {"contact.id": contact.id, "contact.full_name": contact.full_name}
    for name in CONTACT_FIELDS:
        facts[f"contact.{name}"] = _jsonable(getattr(contact, name))
    facts["contact.consents"] = sorted(
        {str(c.get("purpose")) for c in contact.consents if c.get("purpose")}
    )
    facts.update(_open_facts("contact", contact.user_defined, contact.extra_fields))

    company = session.get(Company, contact.company_id) if contact.company_id is not None else None
    facts["company.id"] = company.id if company is not None else None
    for name in COMPANY_FIELDS:
        facts[f"company.{name}"] = _jsonable(getattr(company, name)) if company else None
    if company is not None:
        facts.update(_open_facts("company", company.user_defined, company.extra_fields))

    session.flush()  # as the ORM's own query would: members added in this session count
    connection = session.connection()
    for key, lists in (("contact.selections", _SELECTIONS_OF), ("contact.projects", _PROJECTS_OF)):
        facts[key] = sorted(connection.execute(lists, {"contact": contact_id}).scalars())

    for prefix, associate_id in (
        ("contact.our_contact", contact.our_contact_id),
        ("contact.our_service_contact", contact.our_service_contact_id),
    ):
        if associate_id is not None:
            facts.update(_associate_facts(prefix, session.get(Associate, associate_id)))
    return facts


def group_members(db: Session, user_group_id: int) -> list[Associate]:
    """The associates of a user group, primary or extra members, by id."""
    extra = select(AssociateGroupMembership.associate_id).where(
        AssociateGroupMembership.user_group_id == user_group_id
    )
    return list(
        db.exec(
            select(Associate)
            .where(
                or_(
                    col(Associate.user_group_id) == user_group_id,
                    col(Associate.id).in_(extra),
                )
            )
            .order_by(col(Associate.id))
        ).all()
    )


class CrmLists(BaseModel):
    """The CRM's request and sale lists, for checking a flow's combinations before it runs."""

    request_types: dict[str, tuple[list[str], list[str]]] = {}  # name -> (statuses, priorities)
    request_categories: set[str] = set()
    sale_types: dict[str, list[str]] = {}  # name -> stages


def crm_lists(db: Session) -> CrmLists:
    return CrmLists(
        request_types={
            t.name: (list(t.statuses), list(t.priorities)) for t in db.exec(select(RequestType))
        },
        request_categories={c.name for c in db.exec(select(RequestCategory))},
        sale_types={t.name: list(t.stages) for t in db.exec(select(SaleType))},
    )
