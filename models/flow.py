"""A flow definition: settings, triggers and a graph of steps, as one JSON document.

Each step kind is one model tagged by ``type``; together they form the ``Step`` discriminated
union. Every step has an ``id``; a step names its successor in ``next`` (a split names one per
branch, and ``finish`` ends the path). Structural checks that need the whole graph live in
``models.validation``.
"""

from __future__ import annotations

import re
import typing
from datetime import date, datetime, time
from enum import StrEnum
from typing import Annotated, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from models.criteria import Criteria
from models.schedule import NOTHING_CLOSED, ClosedDays, IntervalUnit, holiday_calendar_problem

StepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
FlowId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class FieldErrors(ValueError):
    """Mistakes found by a model-level check, each with the field it concerns.

    pydantic reports an error raised in a model validator at the model itself, without a field;
    ``models.validation`` reads ``problems`` back from the error to name the field of each one.
    """

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems

    def __reduce__(self) -> tuple[type[FieldErrors], tuple[tuple[str, str], ...]]:
        return FieldErrors, self.problems


class Definition(BaseModel):
    """Base of every part of a flow document: unknown keys are mistakes, not extensions."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Interval(Definition):
    amount: int = Field(ge=1, le=100_000)
    unit: IntervalUnit


class Handoffs(Definition):
    """What happens to a contact leaving the flow at an exit (spec §7)."""

    suggest_flow: FlowId | None = None
    add_to_selection: int | None = None


class StepGroup(StrEnum):
    """The product's five groups of step kinds (spec §3), plus finish."""

    send_message = "send_message"
    flow_control = "flow_control"
    update_participant = "update_participant"
    create_activity = "create_activity"
    internal_action = "internal_action"
    finish = "finish"


class StepBase(Definition):
    group: ClassVar[StepGroup]  # set by each kind; the diagram colours steps by it
    id: StepId
    name: str | None = Field(default=None, max_length=200, description="Shown in status and the UI")

    @property
    def label(self) -> str:
        return self.name or self.id


# --- Send message ------------------------------------------------------------------------------


class Attachment(Definition):
    path: str = Field(min_length=1, description="A file in the content folder (CONTENT_ROOT)")
    filename: str | None = None


class SendEmail(StepBase):
    group: ClassVar[StepGroup] = StepGroup.send_message
    type: Literal["send_email"]
    next: StepId
    subject: str = Field(min_length=1, max_length=998)
    html: str | None = None
    text: str | None = None
    content_file: str | None = Field(
        default=None,
        description="An HTML file in the content folder (CONTENT_ROOT), used when html is unset",
    )
    attachments: list[Attachment] = []
    track_opens: bool = True
    transactional: bool = Field(
        default=False, description="A receipt or confirmation: the frequency caps never hold it"
    )

    @model_validator(mode="after")
    def _has_body(self) -> SendEmail:
        if self.html is None and self.text is None and self.content_file is None:
            raise FieldErrors(("html", "needs a body: html, text or content_file"))
        return self


class SendSms(StepBase):
    group: ClassVar[StepGroup] = StepGroup.send_message
    type: Literal["send_sms"]
    next: StepId
    sender: str | None = Field(default=None, description="Defaults to the flow's SMS sender")
    transactional: bool = Field(
        default=False, description="A receipt or confirmation: the frequency caps never hold it"
    )
    text: str = Field(min_length=1, max_length=1600)
    exit_if_no_mobile: bool = False
    exit: Handoffs = Handoffs()


# --- Flow control ------------------------------------------------------------------------------


class WaitTime(StepBase):
    group: ClassVar[StepGroup] = StepGroup.flow_control
    type: Literal["wait_time"]
    next: StepId
    mode: Literal["after", "until"] = "after"
    amount: int | None = Field(default=None, ge=1, le=100_000)
    unit: IntervalUnit | None = None
    until: datetime | None = Field(
        default=None, description="A local date-time in the flow's time zone, without offset"
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> WaitTime:
        problems: list[tuple[str, str]] = []
        if self.mode == "after":
            problems.extend(
                (name, f"mode 'after' needs {name}")
                for name in ("amount", "unit")
                if getattr(self, name) is None
            )
        elif self.until is None:
            problems.append(("until", "mode 'until' needs until"))
        elif self.until.tzinfo is not None:
            problems.append(
                ("until", "until is a local time in the flow's time zone: drop the offset")
            )
        if problems:
            raise FieldErrors(*problems)
        return self


class AwaitedAction(Definition):
    kind: Literal["form_submitted", "link_clicked"]
    form_id: int | None = None
    email_step: StepId | None = Field(default=None, description="The email whose links count")
    link: str | None = Field(default=None, description="A specific link; unset means any link")

    @model_validator(mode="after")
    def _target(self) -> AwaitedAction:
        if self.kind == "form_submitted" and self.form_id is None:
            raise FieldErrors(("form_id", "form_submitted needs form_id"))
        if self.kind == "link_clicked" and self.email_step is None:
            raise FieldErrors(("email_step", "link_clicked needs email_step"))
        return self


class WaitForAction(StepBase):
    group: ClassVar[StepGroup] = StepGroup.flow_control
    type: Literal["wait_for_action"]
    next: StepId
    actions: list[AwaitedAction] = Field(min_length=1)
    max_wait: Interval | None = Interval(amount=7, unit="days")
    exit_on_timeout: bool = False
    exit: Handoffs = Handoffs()


class SplitBasis(StrEnum):
    data = "data"
    form_submitted = "form_submitted"
    form_data = "form_data"
    link_clicked = "link_clicked"
    project = "project"
    selection = "selection"
    experiment = "experiment"


class ExperimentMetric(StrEnum):
    """What makes an experiment's path the winner: the share of its participants who opened an
    email of the flow, clicked a tracked link in one, or met a success criterion."""

    opens = "opens"
    clicks = "clicks"
    success = "success"


class Winner(Definition):
    metric: ExperimentMetric
    after: Interval = Field(
        default=Interval(amount=3, unit="days"),
        description="Decided this long after the experiment's first participant",
    )


class Experiment(Definition):
    """A split by percentage. A contact's path follows from (flow, experiment id, contact), so a
    replay, a re-run or a second enrollment lands on the same path (``models.experiments``)."""

    id: StepId = Field(description="Names the experiment: renaming it reshuffles the paths")
    holdout_percent: int = Field(
        default=0,
        ge=0,
        le=98,
        description="Share that leaves the flow at once as 'held out': the control group",
    )
    winner: Winner | None = Field(
        default=None, description="Unset: the split keeps its percentages for good"
    )


EXPERIMENT_PATHS = (2, 5)  # the fewest and the most paths an experiment has


class SplitBranch(Definition):
    name: str = Field(min_length=1, max_length=100)
    next: StepId
    criteria: Criteria | None = None
    submitted: bool | None = None
    link: str | None = None
    project_id: int | None = None
    selection_id: int | None = None
    percent: int | None = Field(
        default=None, ge=1, le=100, description="basis experiment: this path's share"
    )


class EveryoneElse(Definition):
    """The branch that always exists: continue at ``next``, or leave the flow when it is unset."""

    next: StepId | None = None
    exit: Handoffs = Handoffs()


class Split(StepBase):
    group: ClassVar[StepGroup] = StepGroup.flow_control
    type: Literal["split"]
    basis: SplitBasis = SplitBasis.data
    form_id: int | None = None
    email_step: StepId | None = Field(
        default=None, description="link_clicked: a specific email step; unset means any email"
    )
    branches: list[SplitBranch] = Field(min_length=1, max_length=20)
    everyone_else: EveryoneElse
    experiment: Experiment | None = Field(
        default=None, description="basis experiment: its id, holdout and winner"
    )

    @model_validator(mode="after")
    def _basis_fields(self) -> Split:
        needs = {
            SplitBasis.data: "criteria",
            SplitBasis.form_data: "criteria",
            SplitBasis.form_submitted: "submitted",
            SplitBasis.project: "project_id",
            SplitBasis.selection: "selection_id",
            SplitBasis.experiment: "percent",
        }
        problems: list[tuple[str, str]] = []
        field = needs.get(self.basis)
        if field is not None:
            for index, branch in enumerate(self.branches):
                if getattr(branch, field) is None:
                    problems.append(
                        (f"branches.{index}.{field}", f"{field} is required for basis {self.basis}")
                    )
        if self.basis in (SplitBasis.form_submitted, SplitBasis.form_data) and self.form_id is None:
            problems.append(("form_id", f"form_id is required for basis {self.basis}"))
        if self.basis is SplitBasis.form_submitted and sorted(
            b.submitted for b in self.branches if b.submitted is not None
        ) != [False, True]:
            problems.append(
                (
                    "branches",
                    "basis form_submitted has exactly two branches: submitted true and false",
                )
            )
        problems += self._experiment_problems()
        if problems:
            raise FieldErrors(*problems)
        return self

    def _experiment_problems(self) -> list[tuple[str, str]]:
        if self.basis is not SplitBasis.experiment:
            if self.experiment is not None:
                return [("experiment", f"experiment is for basis experiment, not {self.basis}")]
            return []
        problems: list[tuple[str, str]] = []
        if self.experiment is None:
            problems.append(("experiment", "basis experiment needs experiment (at least its id)"))
        fewest, most = EXPERIMENT_PATHS
        if not fewest <= len(self.branches) <= most:
            problems.append(
                (
                    "branches",
                    f"an experiment has {fewest} to {most} paths, not {len(self.branches)}",
                )
            )
        holdout = self.experiment.holdout_percent if self.experiment is not None else 0
        shares = [branch.percent for branch in self.branches]
        if None not in shares and sum(filter(None, shares)) + holdout != 100:
            total = sum(filter(None, shares))
            with_holdout = f" and the holdout's {holdout}" if holdout else ""
            problems.append(
                (
                    "branches",
                    f"the paths' percentages ({total}){with_holdout} must add up to 100",
                )
            )
        if self.everyone_else.next is not None:
            problems.append(
                (
                    "everyone_else.next",
                    "an experiment's everyone else is its holdout, which leaves the flow",
                )
            )
        return problems


# --- Update participant ------------------------------------------------------------------------


class UpdateRow(Definition):
    target: Literal["contact", "company"] = "contact"
    field: str = Field(min_length=1)
    action: str = Field(min_length=1, description="set, clear, replace, regex_replace, add, ...")
    value: str | int | float | bool | list[str] | dict[str, str] | None = None
    find: str | None = None
    match_case: bool = False
    whole_word: bool = False
    enabled: bool = True


class UpdateContact(StepBase):
    group: ClassVar[StepGroup] = StepGroup.update_participant
    type: Literal["update_contact"]
    next: StepId
    rows: list[UpdateRow] = Field(min_length=1)


class ListMembership(StepBase):
    group: ClassVar[StepGroup] = StepGroup.update_participant
    next: StepId
    selection_id: int | None = None
    project_id: int | None = None

    @model_validator(mode="after")
    def _some_list(self) -> ListMembership:
        if self.selection_id is None and self.project_id is None:
            raise FieldErrors(("selection_id", "needs selection_id, project_id or both"))
        return self


class AddToList(ListMembership):
    type: Literal["add_to_list"]


class RemoveFromList(ListMembership):
    type: Literal["remove_from_list"]


class DistributeToOwner(StepBase):
    group: ClassVar[StepGroup] = StepGroup.update_participant
    type: Literal["distribute_to_owner"]
    next: StepId
    associate_ids: list[int] = []
    user_group_id: int | None = None
    only_if_unassigned: bool = True
    fallback_associate_id: int | None = None

    @model_validator(mode="after")
    def _pool(self) -> DistributeToOwner:
        if bool(self.associate_ids) == (self.user_group_id is not None):
            raise FieldErrors(("associate_ids", "choose either associate_ids or user_group_id"))
        return self


# --- Create activity ---------------------------------------------------------------------------


class Owner(Definition):
    kind: Literal["our_contact", "our_service_contact", "associate"] = "our_contact"
    associate_id: int | None = None

    @model_validator(mode="after")
    def _named(self) -> Owner:
        if self.kind == "associate" and self.associate_id is None:
            raise FieldErrors(("associate_id", "owner kind 'associate' needs associate_id"))
        return self


class FollowUpDetails(Definition):
    """What a follow-up is: a create_follow_up step's, or a form's or link's own action's."""

    title: str = Field(min_length=1, max_length=200)
    follow_up_type: str = Field(min_length=1)
    kind: Literal["todo", "meeting"] = "todo"
    project_id: int | None = None
    agenda: str = ""
    after: Interval | None = Field(
        default=None, description="todo: due after this (unset: today); meeting: first free after"
    )
    duration_minutes: int = Field(default=30, ge=5, le=24 * 60)
    owner: Owner = Owner()


class CreateFollowUp(FollowUpDetails, StepBase):
    group: ClassVar[StepGroup] = StepGroup.create_activity
    type: Literal["create_follow_up"]
    next: StepId


class RequestDetails(Definition):
    """What a request is: a create_request step's, or a form's or tracked link's own action's."""

    title: str = Field(min_length=1, max_length=200)
    request_type: str = Field(min_length=1)
    status: str = Field(min_length=1)
    category: str = Field(min_length=1)
    priority: str = Field(min_length=1)
    owner: Literal["associate", "automatic", "unassigned"] = "automatic"
    associate_id: int | None = None
    message: str = ""

    @model_validator(mode="after")
    def _owner(self) -> RequestDetails:
        if self.owner == "associate" and self.associate_id is None:
            raise FieldErrors(("associate_id", "owner 'associate' needs associate_id"))
        return self


class CreateRequest(RequestDetails, StepBase):
    group: ClassVar[StepGroup] = StepGroup.create_activity
    type: Literal["create_request"]
    next: StepId


class CreateSale(StepBase):
    group: ClassVar[StepGroup] = StepGroup.create_activity
    type: Literal["create_sale"]
    next: StepId
    title: str = Field(min_length=1, max_length=200)
    sale_type: str = Field(min_length=1)
    stage: str | None = Field(default=None, description="Defaults to the sale type's first stage")
    amount: float = Field(default=0, ge=0)
    currency: str = Field(default="SEK", pattern=r"^[A-Z]{3}$")
    description: str = ""
    project_id: int | None = None
    after: Interval | None = Field(default=None, description="Unset: estimated by the sale type")
    owner: Owner = Owner()


# --- Internal action ---------------------------------------------------------------------------


class RunScript(StepBase):
    group: ClassVar[StepGroup] = StepGroup.internal_action
    type: Literal["run_script"]
    next: StepId
    script: str = Field(min_length=1, max_length=200)


class Recipients(Definition):
    our_contact: bool = False
    our_service_contact: bool = False
    addresses: list[str] = Field(default=[], description="E-mail addresses or mobile numbers")

    @model_validator(mode="after")
    def _someone(self) -> Recipients:
        if not (self.our_contact or self.our_service_contact or self.addresses):
            raise ValueError("name at least one recipient")
        return self


class NotifyEmail(StepBase):
    group: ClassVar[StepGroup] = StepGroup.internal_action
    type: Literal["notify_email"]
    next: StepId
    to: Recipients
    subject: str = Field(min_length=1, max_length=998)
    text: str = Field(min_length=1)


class NotifySms(StepBase):
    group: ClassVar[StepGroup] = StepGroup.internal_action
    type: Literal["notify_sms"]
    next: StepId
    to: Recipients
    sender: str | None = None
    text: str = Field(min_length=1, max_length=1600)


class Finish(StepBase):
    group: ClassVar[StepGroup] = StepGroup.finish
    type: Literal["finish"]
    suggest_flow_on_success: FlowId | None = None
    suggest_flow_otherwise: FlowId | None = None
    add_to_selection: int | None = None


Step = Annotated[
    SendEmail
    | SendSms
    | WaitTime
    | WaitForAction
    | Split
    | UpdateContact
    | AddToList
    | RemoveFromList
    | DistributeToOwner
    | CreateFollowUp
    | CreateRequest
    | CreateSale
    | RunScript
    | NotifyEmail
    | NotifySms
    | Finish,
    Field(discriminator="type"),
]

# Every other list of step kinds derives from the union, so a new kind is one model and one line
# above; mypy then points at the step dispatch (workflows.steps.run_step) until it handles it.
STEP_MODELS: tuple[type[StepBase], ...] = typing.get_args(typing.get_args(Step)[0])


def _kind(model: type[StepBase]) -> str:
    (kind,) = typing.get_args(model.model_fields["type"].annotation)
    return str(kind)


STEP_KINDS: tuple[str, ...] = tuple(_kind(model) for model in STEP_MODELS)
STEP_GROUPS: dict[StepGroup, tuple[str, ...]] = {
    group: tuple(_kind(model) for model in STEP_MODELS if model.group is group)
    for group in StepGroup
}
MESSAGE_STEP_TYPES = frozenset(STEP_GROUPS[StepGroup.send_message])
WAIT_STEP_TYPES = frozenset({"wait_time", "wait_for_action"})


def successors(step: Step) -> list[StepId]:
    """The step ids a step can lead to, in branch order."""
    if isinstance(step, Finish):
        return []
    if isinstance(step, Split):
        targets = [branch.next for branch in step.branches]
        if step.everyone_else.next is not None:
            targets.append(step.everyone_else.next)
        return targets
    return [step.next]


# --- Flow settings -----------------------------------------------------------------------------


class Weekday(StrEnum):
    mon = "mon"
    tue = "tue"
    wed = "wed"
    thu = "thu"
    fri = "fri"
    sat = "sat"
    sun = "sun"


WEEKDAY_NUMBERS = {day: number for number, day in enumerate(Weekday)}
WEEKDAY_PRESETS = {
    "workdays": [Weekday.mon, Weekday.tue, Weekday.wed, Weekday.thu, Weekday.fri],
    "all_days": list(Weekday),
}


class SendingWindow(Definition):
    """Only send email and SMS on these days between start and end, in the flow's time zone
    (or the contact's, with a recipient clock), and not on the holiday calendar's closed days."""

    weekdays: list[Weekday] = Field(default=WEEKDAY_PRESETS["workdays"], min_length=1)
    start: time = time(8, 0)
    end: time = time(17, 0)
    open_on_holidays: bool = Field(
        default=False, description="Open on the holiday calendar's closed days too"
    )

    @field_validator("weekdays", mode="before")
    @classmethod
    def _preset(cls, value: object) -> object:
        if isinstance(value, str):
            if value not in WEEKDAY_PRESETS:
                raise ValueError(
                    f"unknown preset {value!r}: use a list of days or workdays/all_days"
                )
            return WEEKDAY_PRESETS[value]
        return value

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time) -> time:
        # A wall-clock time in the flow's time zone. (An offset also made start and end
        # incomparable when only one had it: the validator crashed instead of answering.)
        if value.tzinfo is not None:
            raise ValueError("a local time of day in the flow's time zone, like '08:00': no offset")
        return value

    @model_validator(mode="after")
    def _range(self) -> SendingWindow:
        if self.start >= self.end:
            raise FieldErrors(("end", "the window must end after it starts"))
        return self

    @property
    def weekday_numbers(self) -> frozenset[int]:
        return frozenset(WEEKDAY_NUMBERS[day] for day in self.weekdays)


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date(value: object) -> object:
    """A closed date is written as in ISO 8601, 2026-12-28: not a number, not a date-time."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and ISO_DATE.fullmatch(value):
        return value
    raise ValueError(f"a date written as YYYY-MM-DD, not {value!r}")


ClosedDate = Annotated[date, BeforeValidator(_iso_date)]


class HolidayCalendar(Definition):
    """The days the flow keeps closed besides weekends: working-day waits and the create steps'
    working days skip them, meetings are not booked on them, and the sending window stays shut
    on them (unless it is open on holidays)."""

    country: str | None = Field(
        default=None,
        description="The public holidays of this country (ISO 3166 code, as the holidays "
        "package names its calendars, e.g. SE), and the days its law treats as holidays",
    )
    subdivision: str | None = Field(
        default=None, description="A state or province of the country's calendar, e.g. BY"
    )
    closed_dates: list[ClosedDate] = Field(
        default=[], max_length=366, description="Further closed dates, e.g. 2026-12-28"
    )

    @model_validator(mode="after")
    def _known_calendar(self) -> HolidayCalendar:
        if self.country is None:
            if self.subdivision is not None:
                raise FieldErrors(("subdivision", "a subdivision needs its country"))
            return self
        problem = holiday_calendar_problem(self.country, self.subdivision)
        if problem is not None:
            raise FieldErrors(problem)
        return self

    @property
    def closed_days(self) -> ClosedDays:
        return ClosedDays(self.country, self.subdivision, frozenset(self.closed_dates))


class RecipientClock(Definition):
    """The sending window and "until" waits follow the contact's own time zone: the one in
    ``field``, else the one of the contact's company's country, else the one of the contact's
    mobile number, else the flow's (``models.time_zones``)."""

    field: str = Field(
        default="contact.extra.time_zone",
        description="The contact's fact that holds an IANA time zone name",
    )


class Sender(Definition):
    kind: Literal["address", "our_contact", "our_service_contact"] = "address"
    address: str | None = Field(default=None, description="The address, or the fallback")
    name: str | None = None

    @model_validator(mode="after")
    def _address(self) -> Sender:
        if self.address is None:
            raise FieldErrors(("address", "needs address (the fixed address, or the fallback)"))
        return self


class ReplyTo(Definition):
    kind: Literal["address", "our_contact", "our_service_contact", "same_as_from", "none"] = "none"
    address: str | None = None

    @model_validator(mode="after")
    def _address(self) -> ReplyTo:
        if self.kind in ("address", "our_contact", "our_service_contact") and self.address is None:
            raise FieldErrors(
                ("address", f"reply-to kind {self.kind!r} needs address (or its fallback)")
            )
        return self


class EmailSettings(Definition):
    subscription_type: str | None = None
    sender: Sender = Field(alias="from")
    reply_to: ReplyTo = ReplyTo()


class TriggerKind(StrEnum):
    contact_created = "contact_created"
    contact_updated = "contact_updated"
    sale_created = "sale_created"
    sale_sold = "sale_sold"
    sale_lost = "sale_lost"
    added_to_project = "added_to_project"
    added_to_selection = "added_to_selection"
    request_created = "request_created"
    form_submitted = "form_submitted"
    link_clicked = "link_clicked"


class Trigger(Definition):
    kind: TriggerKind
    form_id: int | None = None
    link: str | None = None
    selection_id: int | None = None
    project_id: int | None = None


class SuccessKind(StrEnum):
    contact_updated = "contact_updated"
    sale_created = "sale_created"
    follow_up_created = "follow_up_created"
    request_created = "request_created"
    added_to_selection = "added_to_selection"
    added_to_project = "added_to_project"
    form_submitted = "form_submitted"
    link_clicked = "link_clicked"


class SuccessCriterion(Definition):
    kind: SuccessKind
    form_id: int | None = None
    link: str | None = None
    selection_id: int | None = None
    project_id: int | None = None


class SuccessCriteria(Definition):
    criteria: list[SuccessCriterion] = Field(min_length=1)
    move_to_finish: bool = False


class ReentryRule(StrEnum):
    """When a contact that took part before may enter the flow again (spec §2; ``only_once`` is
    the rule ``once``)."""

    once = "once"  # only once ever
    after_leaving = "after_leaving"  # again once it has left (never active twice)
    after_cooldown = "after_cooldown"  # again once cooldown_days have passed since it left
    restart = "restart"  # again at any time: an active participant starts over


class Reentry(Definition):
    rule: ReentryRule = ReentryRule.after_leaving
    cooldown_days: int | None = Field(
        default=None, ge=1, le=3650, description="after_cooldown: days from leaving"
    )

    @model_validator(mode="after")
    def _cooldown(self) -> Reentry:
        if (self.rule is ReentryRule.after_cooldown) != (self.cooldown_days is not None):
            raise FieldErrors(("cooldown_days", "cooldown_days goes with rule after_cooldown"))
        return self


class Flow(Definition):
    id: FlowId
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    time_zone: str = "Europe/Stockholm"
    owner_id: int | None = None
    visible_for: Literal["owner", "group", "everyone"] = "everyone"
    email: EmailSettings | None = None
    sms_sender: str | None = None
    sending_window: SendingWindow | None = None
    when_capped: Literal["wait", "skip"] = Field(
        default="wait",
        description="A message over a frequency cap of the sending settings waits until the cap "
        "allows it, or is skipped (recorded as capped) and the participant moves on",
    )
    holidays: HolidayCalendar | None = None
    recipient_clock: RecipientClock | None = None
    scheduled_start: datetime | None = Field(default=None, description="Local, flow's time zone")
    enrollment_end: datetime | None = Field(default=None, description="Local, flow's time zone")
    success: SuccessCriteria | None = None
    exclusion_selections: list[int] = []
    only_once: bool = False
    reentry: Reentry = Field(
        default=Reentry(), description="Whether and when a contact may enter again"
    )
    remove_from_flows: list[FlowId] = []
    filter: Criteria | None = None
    triggers: list[Trigger] = []
    start: StepId = Field(description="The id of the first step")
    steps: list[Step] = Field(min_length=1)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_reentry_rule(self) -> Flow:
        # The default rule (after_leaving) gives way to only_once; another one contradicts it.
        if self.only_once and self.reentry.rule not in (
            ReentryRule.once,
            ReentryRule.after_leaving,
        ):
            raise FieldErrors(("reentry", "only_once says once: drop one of the two"))
        return self

    @property
    def reentry_rule(self) -> ReentryRule:
        return ReentryRule.once if self.only_once else self.reentry.rule

    @property
    def closed_days(self) -> ClosedDays:
        """The holiday calendar's closed days; none without one."""
        return NOTHING_CLOSED if self.holidays is None else self.holidays.closed_days

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)
