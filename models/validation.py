"""Checking a flow document: every problem at once, each named by step id and field.

Two levels, as in the reference product: a flow that is *valid to save* may still not be *ready to
run* (for instance email steps before the email settings are filled in). ``check_flow`` never
raises on bad input: whatever the document holds, it returns a report.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import TypeAdapter, ValidationError

from models.contact_update import row_problems
from models.content import MissingContentFile, OutsideContentFolder, content_path, path_problem
from models.criteria import UNARY_OPERATORS, Criteria, Operator
from models.crm import (
    COMPANY_FIELDS,
    CONTACT_FIELDS,
    OPEN_FIELD_PREFIXES,
    ActionCatalogue,
    CrmLists,
)
from models.diary import working_day_length
from models.flow import (
    WAIT_STEP_TYPES,
    CreateFollowUp,
    CreateRequest,
    CreateSale,
    EmailSettings,
    ExperimentMetric,
    FieldErrors,
    Flow,
    NotifyEmail,
    NotifySms,
    RecipientClock,
    ReplyTo,
    RunScript,
    SendEmail,
    SendSms,
    Split,
    SplitBasis,
    Step,
    UpdateContact,
)
from models.merge_tags import TAG_PATTERN, template_problems, unknown_tags
from models.overlaps import overlaps
from models.patterns import PatternError, compile_pattern
from models.sending import SendingSettings
from models.settings import get_settings
from models.sms import is_mobile, normalise_number, number_kind, too_long

Level = Literal["error", "not_ready", "warning"]
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    level: Level
    step: str | None
    field: str
    message: str
    document: str = "flow"  # what the problem is in when no step names it

    def __str__(self) -> str:
        tag = {"error": "error", "not_ready": "not ready to run", "warning": "warning"}[self.level]
        where = f"step {self.step!r}" if self.step else self.document
        if self.field:
            where = f"{where}, {_printable(self.field)}"
        return f"{tag}: {where}: {_printable(self.message)}"


def _printable(text: str) -> str:
    """One line whatever the document held: a key or value with a line break (or another
    control character) is shown escaped, as in a repr, so a report stays one problem a line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class FlowReport:
    flow: Flow | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def can_save(self) -> bool:
        return self.flow is not None and not any(p.level == "error" for p in self.problems)

    @property
    def can_run(self) -> bool:
        return self.can_save and not any(p.level == "not_ready" for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]


def check_flow(
    document: object,
    crm: CrmLists | None = None,
    *,
    actions: ActionCatalogue | None = None,
    known_scripts: Collection[str] | None = None,
    content_folder: Path | None = None,
    sms_region: str | None = None,
) -> FlowReport:
    """Validate a parsed JSON document; return the flow (if it parses) and every problem found.

    Every problem, whatever else is wrong: when the document does not parse as a whole, each step
    and setting that parses on its own is still checked (graph, fields, merge tags, readiness).

    With ``crm`` (``models.crm.crm_lists``, when a database is at hand) the request and sale
    steps' types, statuses, priorities, categories and stages are checked against the CRM too.
    With ``actions`` (``models.crm.action_catalogue``) steps that duplicate or contradict the own
    actions of a form or link the flow uses are warned about (``models.overlaps``). With
    ``known_scripts`` (the names of the registered scripts) run_script steps must name one.
    With ``content_folder`` (``models.content.content_folder``) email content files and
    attachments are looked up there too. SMS numbers without a country code are read in
    ``sms_region`` (unset: ``SMS_DEFAULT_REGION``).
    """
    if not isinstance(document, dict):
        return FlowReport(None, [Problem("error", None, "", "a flow document is a JSON object")])
    oversized = _document_size_problems(document)
    if oversized:  # refused before the expensive parts: parsing and checking every step
        return FlowReport(None, oversized)
    flow: Flow | None = None
    try:
        flow = Flow.model_validate(document)
    except ValidationError as exc:
        problems = list(_schema_problems(document, exc))
        parts = _Parts.of_document(document)
        graph = document
    else:
        problems = list(_payload_problems(flow))
        parts = _Parts.of_flow(flow)
        graph = flow.model_dump(mode="json", by_alias=True)
    problems += [
        *_graph_problems(graph),
        *_address_problems(parts),
        *_content_problems(parts),
        *_crm_step_problems(parts, crm, known_scripts),
        *_readiness_problems(parts),
        *_file_problems(parts, content_folder),
        *_header_problems(parts),
        *_sms_problems(parts, sms_region or get_settings().sms_default_region),
    ]
    if flow is not None:
        problems += _experiment_problems(flow)
    if actions is not None and flow is not None:
        problems += [Problem("warning", *found) for found in overlaps(flow, actions)]
    return FlowReport(flow, _unique(problems))


SENDING_SETTINGS = "sending settings"


def check_sending_settings(document: object) -> list[Problem]:
    """Every problem of a sending settings document (``models.sending``), each named by its
    field; an empty list: valid."""
    try:
        settings = SendingSettings.model_validate(document)
    except ValidationError as exc:
        return [
            Problem(
                "error",
                None,
                ".".join(str(part) for part in error["loc"]),
                error["msg"].removeprefix("Value error, "),
                SENDING_SETTINGS,
            )
            for error in exc.errors()
        ]
    problems: list[Problem] = []
    first: dict[tuple[str, int], int] = {}
    for index, cap in enumerate(settings.frequency_caps):
        same = first.setdefault((cap.channel, cap.days), index)
        if same != index:
            message = f"frequency_caps.{same} caps {cap.channel} over {cap.days} days already"
            problems.append(
                Problem("error", None, f"frequency_caps.{index}", message, SENDING_SETTINGS)
            )
    return problems


def _experiment_problems(flow: Flow) -> Iterator[Problem]:
    """What an experiment needs from the rest of the flow: an id of its own (paths, decisions
    and figures are kept by it), and success criteria when its winner is chosen by success."""
    seen: dict[str, str] = {}
    for step in flow.steps:
        if not isinstance(step, Split) or step.experiment is None:
            continue
        experiment = step.experiment
        if experiment.id in seen:
            yield Problem(
                "error",
                step.id,
                "experiment.id",
                f"experiment {experiment.id!r} is step {seen[experiment.id]!r}'s too",
            )
        seen.setdefault(experiment.id, step.id)
        winner = experiment.winner
        if winner is not None and winner.metric is ExperimentMetric.success and not flow.success:
            yield Problem(
                "error",
                step.id,
                "experiment.winner.metric",
                "a winner by success needs the flow's success criteria",
            )


@dataclass(frozen=True)
class _Parts:
    """What the checks after the schema read: the whole flow's, or, when the document does not
    parse, each step and setting that parses on its own (one that does not is None or left out,
    and its schema errors say why)."""

    steps: list[Step]
    filter: Criteria | None = None
    email: object = None  # only its presence counts
    sms_sender: object = None
    scheduled_start: datetime | None = None
    enrollment_end: datetime | None = None
    recipient_clock: RecipientClock | None = None

    @classmethod
    def of_flow(cls, flow: Flow) -> _Parts:
        return cls(
            flow.steps,
            flow.filter,
            flow.email,
            flow.sms_sender,
            flow.scheduled_start,
            flow.enrollment_end,
            flow.recipient_clock,
        )

    @classmethod
    def of_document(cls, document: dict[str, Any]) -> _Parts:
        raw_steps = document.get("steps")
        steps = [
            step
            for raw in (raw_steps if isinstance(raw_steps, list) else [])
            if (step := _parsed(_STEP, raw)) is not None
        ]
        return cls(
            steps,
            _parsed(_CRITERIA, document.get("filter")),
            document.get("email"),
            document.get("sms_sender"),
            _parsed(_INSTANT, document.get("scheduled_start")),
            _parsed(_INSTANT, document.get("enrollment_end")),
            _parsed(_CLOCK, document.get("recipient_clock")),
        )


_STEP: TypeAdapter[Step] = TypeAdapter(Step)
_EMAIL: TypeAdapter[EmailSettings | None] = TypeAdapter(EmailSettings | None)
_CRITERIA: TypeAdapter[Criteria | None] = TypeAdapter(Criteria | None)
_INSTANT: TypeAdapter[datetime | None] = TypeAdapter(datetime | None)
_REPLY_TO: TypeAdapter[ReplyTo] = TypeAdapter(ReplyTo)
_CLOCK: TypeAdapter[RecipientClock | None] = TypeAdapter(RecipientClock | None)


def _parsed(adapter: TypeAdapter[T], value: object) -> T | None:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


# --- sizes: what Temporal can carry ------------------------------------------------------------

# Temporal refuses a payload over 2 MiB and warns over 512 KiB. Every participant's workflow input
# carries its flow, and so does every continue-as-new, together with the participant's own state:
# the flow may take half of the limit, and a flow past the warning is worth a word.
TEMPORAL_PAYLOAD_LIMIT = 2 * 1024 * 1024
MAX_FLOW_BYTES = TEMPORAL_PAYLOAD_LIMIT // 2
FLOW_BYTES_WARNING = 512 * 1024
MAX_STEPS = 1_000
LARGE_TEXT_BYTES = 64 * 1024  # a too large flow names its texts of this size or more


def _kib(size: int) -> str:
    return f"{size / 1024:,.0f} KiB"


def _document_size_problems(document: dict[str, Any]) -> list[Problem]:
    """A document too large to ever run, found without parsing it: too many steps, or too many
    bytes (with the texts that make it so). Empty when the checks may go on."""
    steps = document.get("steps")
    if isinstance(steps, list) and len(steps) > MAX_STEPS:
        message = f"{len(steps):,} steps: a flow has at most {MAX_STEPS:,}"
        return [Problem("error", None, "steps", message)]
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)
    except (RecursionError, ValueError):
        return [Problem("error", None, "", "the document is nested too deeply to be a flow")]
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= MAX_FLOW_BYTES:
        return []
    texts: list[tuple[str | None, str, str]] = [
        (str(raw.get("id")) if "id" in raw else f"#{index}", name, value)
        for index, raw in enumerate(steps if isinstance(steps, list) else [])
        if isinstance(raw, dict)
        for name, value in raw.items()
        if isinstance(name, str) and isinstance(value, str)
    ]
    return _oversized(size, texts)


def _payload_problems(flow: Flow) -> list[Problem]:
    """The flow's size as participants carry it (every field, defaults included)."""
    size = len(flow.model_dump_json().encode())
    if size > MAX_FLOW_BYTES:
        return _oversized(
            size, [(step.id, name, text) for step in flow.steps for name, text in _texts(step)]
        )
    if size > FLOW_BYTES_WARNING:
        message = (
            f"the flow is {_kib(size)}: Temporal warns about payloads over "
            f"{_kib(FLOW_BYTES_WARNING)}, and every participant carries its flow"
        )
        return [Problem("warning", None, "", message)]
    return []


def _oversized(size: int, texts: Iterable[tuple[str | None, str, str]]) -> list[Problem]:
    found = [
        Problem(
            "error",
            None,
            "",
            f"the flow is {_kib(size)}: at most {_kib(MAX_FLOW_BYTES)}, half of the "
            f"{_kib(TEMPORAL_PAYLOAD_LIMIT)} Temporal carries in one payload, since every "
            "participant carries its flow together with its own state",
        )
    ]
    for step_id, name, text in texts:
        text_size = len(text.encode("utf-8", "surrogatepass"))
        if text_size >= LARGE_TEXT_BYTES:
            found.append(
                Problem("error", step_id, name, f"{_kib(text_size)} of the flow's {_kib(size)}")
            )
    return found


# --- addresses ---------------------------------------------------------------------------------


def _address_problem(address: str) -> str | None:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as error:
        return f"not an email address: {error}"
    return None


def _address_problems(flow: _Parts) -> Iterator[Problem]:
    """The flow's fixed email addresses other than its From: the reply-to address (or fallback)
    and notify_email recipients. Mail to a bad one would fail at every send."""
    if isinstance(flow.email, EmailSettings):
        reply_to: ReplyTo | None = flow.email.reply_to
    elif isinstance(flow.email, dict):
        reply_to = _parsed(_REPLY_TO, flow.email.get("reply_to", {}))
    else:
        reply_to = None
    if reply_to is not None and reply_to.address is not None:
        problem = _address_problem(reply_to.address)
        if problem is not None:
            yield Problem("error", None, "email.reply_to.address", problem)
    for step in flow.steps:
        if isinstance(step, NotifyEmail):
            for index, address in enumerate(step.to.addresses):
                problem = _address_problem(address)
                if problem is not None:
                    yield Problem("error", step.id, f"to.addresses.{index}", problem)


# --- schema errors, mapped back to step ids ----------------------------------------------------


def _schema_problems(document: dict[str, Any], exc: ValidationError) -> Iterator[Problem]:
    raw_steps = document.get("steps")
    for error in exc.errors():
        loc = list(error["loc"])
        step_id: str | None = None
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            raw = raw_steps[loc[1]] if isinstance(raw_steps, list) else None
            step_id = str(raw.get("id")) if isinstance(raw, dict) and "id" in raw else f"#{loc[1]}"
            loc = loc[2:]
            # The discriminated union puts the step type in the path: it names no field.
            if loc and isinstance(raw, dict) and loc[0] == raw.get("type"):
                loc = loc[1:]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "union_tag_invalid":
            message = f"unknown step type {error['input'].get('type')!r}"
            loc = ["type"]
        elif error["type"] == "union_tag_not_found":
            message = "every step needs a type"
            loc = ["type"]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldErrors):
            # A model-level check that names the field of each mistake it found.
            for name, text in cause.problems:
                yield Problem("error", step_id, ".".join(str(p) for p in [*loc, name]), text)
            continue
        yield Problem("error", step_id, ".".join(str(part) for part in loc), message)


def _graph_problems_raw(document: dict[str, Any]) -> Iterator[Problem]:
    """Duplicate ids and dangling references, read from the raw document so they are reported
    even when other fields of a step fail to parse."""
    steps = document.get("steps")
    if not isinstance(steps, list):
        return
    raw_steps = [raw for raw in steps if isinstance(raw, dict)]
    ids = {raw["id"] for raw in raw_steps if isinstance(raw.get("id"), str)}
    seen: set[str] = set()
    for raw in raw_steps:
        step_id = raw.get("id")
        if not isinstance(step_id, str):
            continue
        if step_id in seen:
            yield Problem("error", step_id, "id", "duplicate step id")
        seen.add(step_id)
        for where, target in _raw_references(raw):
            if isinstance(target, str) and target not in ids:
                yield Problem("error", step_id, where, f"no step has id {target!r}")
    start = document.get("start")
    if isinstance(start, str) and start not in ids:
        yield Problem("error", None, "start", f"no step has id {start!r}")


def _raw_edges(raw: dict[str, Any]) -> Iterator[tuple[str, object]]:
    """Where a raw step leads on to: (field, target id), in branch order."""
    if "next" in raw:
        yield "next", raw["next"]
    branches = raw.get("branches")
    for index, branch in enumerate(branches if isinstance(branches, list) else []):
        if isinstance(branch, dict) and "next" in branch:
            yield f"branches.{index}.next", branch["next"]
    everyone_else = raw.get("everyone_else")
    if isinstance(everyone_else, dict) and everyone_else.get("next") is not None:
        yield "everyone_else.next", everyone_else["next"]


def _raw_references(raw: dict[str, Any]) -> Iterator[tuple[str, object]]:
    yield from _raw_edges(raw)
    if "email_step" in raw:
        yield "email_step", raw["email_step"]
    actions = raw.get("actions")
    for index, action in enumerate(actions if isinstance(actions, list) else []):
        if isinstance(action, dict) and "email_step" in action:
            yield f"actions.{index}.email_step", action["email_step"]


# --- the graph ---------------------------------------------------------------------------------


def _graph_problems(document: dict[str, Any]) -> Iterator[Problem]:
    """References, reachability and loops, read from the raw document (the flow's dump when it
    parses) so that they are found whatever else is wrong with its steps."""
    yield from _graph_problems_raw(document)
    steps = document.get("steps")
    raw_steps: dict[str, dict[str, Any]] = {}
    for raw in steps if isinstance(steps, list) else []:
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            raw_steps.setdefault(raw["id"], raw)  # of duplicate ids, the first
    edges = _edges(raw_steps)
    start = document.get("start")
    if isinstance(start, str) and start in edges:
        reachable = _reachable(edges, start)
        for step_id in raw_steps:
            if step_id not in reachable:
                yield Problem("error", step_id, "id", "unreachable from the start step")
    for component in _cycles(edges):
        kinds = [raw_steps[step_id].get("type") for step_id in component]
        if not any(isinstance(kind, str) and kind in WAIT_STEP_TYPES for kind in kinds):
            first = sorted(component)[0]
            path = " → ".join(sorted(component))
            # The field of the first step that leads on into the loop (a split has no `next`).
            where = next(
                w for w, t in _raw_edges(raw_steps[first]) if isinstance(t, str) and t in component
            )
            yield Problem("error", first, where, f"a loop without a wait step: {path}")


def _edges(raw_steps: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    edges: dict[str, list[str]] = {}
    for step_id, raw in raw_steps.items():
        targets = [t for _, t in _raw_edges(raw) if isinstance(t, str) and t in raw_steps]
        edges[step_id] = list(dict.fromkeys(targets))
    return edges


def _reachable(edges: dict[str, list[str]], start: str) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for target in edges[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _cycles(edges: dict[str, list[str]]) -> list[set[str]]:
    """Strongly connected components that contain a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                target = edges[node][child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


# --- content: criteria fields, merge tags ------------------------------------------------------


# Facts that models.crm.contact_facts adds beyond the field catalogues (see its docstring).
DERIVED_FACTS = frozenset(
    {
        "contact.id",
        "company.id",
        "contact.full_name",
        "contact.selections",
        "contact.projects",
        *(
            f"contact.{who}.{what}"
            for who in ("our_contact", "our_service_contact")
            for what in ("name", "email", "mobile")
        ),
    }
)


def _known_fact(name: str) -> bool:
    if name in DERIVED_FACTS:
        return True
    group, _, rest = name.partition(".")
    catalogue = {"contact": CONTACT_FIELDS, "company": COMPANY_FIELDS}.get(group)
    if catalogue is None:
        return False
    if any(rest.startswith(p) and len(rest) > len(p) for p in OPEN_FIELD_PREFIXES):
        return True
    return rest in catalogue


FORM_FIELD_PREFIX = "form."


def _field_problem(name: str, form_data: bool) -> str | None:
    """What is wrong with a criterion's field: a form_data split reads the submitted form's
    fields (``form.NAME``, see models.events.choose_by_events); everything else reads the
    contact's and company's facts."""
    is_form_field = name.startswith(FORM_FIELD_PREFIX)
    if form_data:
        if is_form_field and len(name) > len(FORM_FIELD_PREFIX):
            return None
        return f"a form_data split reads the form's fields: form.NAME, not {name!r}"
    if is_form_field:
        return f"form fields ({name!r}) are read only by a split with basis form_data"
    return None if _known_fact(name) else f"unknown field {name!r}"


def _criteria_problems(
    criteria: Criteria, where: str, *, form_data: bool = False
) -> Iterator[tuple[str, str]]:
    for index, condition in enumerate(criteria.conditions):
        at = f"{where}.conditions.{index}"
        field_problem = _field_problem(condition.field, form_data)
        if field_problem is not None:
            yield f"{at}.field", field_problem
        if condition.operator in UNARY_OPERATORS and condition.value is not None:
            yield f"{at}.value", f"operator {condition.operator} takes no value"
        if condition.operator not in UNARY_OPERATORS and condition.value is None:
            yield f"{at}.value", f"operator {condition.operator} needs a value"
        if isinstance(condition.value, list) and condition.operator is not Operator.one_of:
            yield f"{at}.value", f"operator {condition.operator} takes one value, not a list"
        if condition.operator is Operator.matches and isinstance(condition.value, str):
            try:
                compile_pattern(condition.value, ignore_case=not condition.match_case)
            except PatternError as exc:
                yield f"{at}.value", f"not a regular expression: {exc}"


def _texts(step: Step) -> Iterator[tuple[str, str]]:
    for name in ("subject", "html", "text", "agenda", "message", "title", "description"):
        value = getattr(step, name, None)
        if isinstance(value, str):
            yield name, value


def _content_problems(flow: _Parts) -> Iterator[Problem]:
    if flow.filter is not None:
        for where, message in _criteria_problems(flow.filter, "filter"):
            yield Problem("error", None, where, message)
    for step in flow.steps:
        if isinstance(step, Split):
            for index, branch in enumerate(step.branches):
                if branch.criteria is not None:
                    for where, msg in _criteria_problems(
                        branch.criteria,
                        f"branches.{index}.criteria",
                        form_data=step.basis is SplitBasis.form_data,
                    ):
                        yield Problem("error", step.id, where, msg)
        for name, text in _texts(step):
            for tag in unknown_tags(text):
                yield Problem("error", step.id, name, f"unknown merge tag [[{tag}]]")
            for message in template_problems(text):
                yield Problem("error", step.id, name, message)


# --- update participant, create activity, internal action -------------------------------------

CALENDAR_UNITS = frozenset({"days", "working_days", "weeks"})


def _crm_step_problems(
    flow: _Parts, crm: CrmLists | None, scripts: Collection[str] | None
) -> Iterator[Problem]:
    for step in flow.steps:
        where: list[tuple[str, str]] = []
        if isinstance(step, UpdateContact):
            for index, row in enumerate(step.rows):
                if row.enabled:  # an unticked row is not applied, so it may be unfinished
                    where += [(f"rows.{index}.{f}", m) for f, m in row_problems(row)]
        elif isinstance(step, RunScript) and scripts is not None and step.script not in scripts:
            known = ", ".join(sorted(scripts)) or "none registered"
            where.append(("script", f"no script named {step.script!r} (known: {known})"))
        after = step.after if isinstance(step, CreateFollowUp | CreateSale) else None
        if after is not None and after.unit not in CALENDAR_UNITS:
            where.append(("after.unit", "dates move by days, working_days or weeks"))
        if isinstance(step, CreateFollowUp) and step.kind == "meeting":
            hours = working_day_length()
            if step.duration_minutes * 60 > hours.total_seconds():
                where.append(("duration_minutes", f"a meeting must fit a working day ({hours})"))
        if crm is not None:
            where += _crm_list_problems(step, crm)
        for field_name, message in where:
            yield Problem("error", step.id, field_name, message)


def _crm_list_problems(step: Step, crm: CrmLists) -> list[tuple[str, str]]:
    """The step's request or sale combinations against the CRM's lists."""
    found: list[tuple[str, str]] = []
    if isinstance(step, CreateRequest):
        lists = crm.request_types.get(step.request_type)
        if lists is None:
            found.append(("request_type", f"no request type {step.request_type!r}"))
        else:
            statuses, priorities = lists
            for name, value, allowed in (
                ("status", step.status, statuses),
                ("priority", step.priority, priorities),
            ):
                if value not in allowed:
                    found.append(
                        (
                            name,
                            f"request type {step.request_type!r} has no {name} {value!r} "
                            f"({', '.join(allowed)})",
                        )
                    )
        if step.category not in crm.request_categories:
            found.append(("category", f"no request category {step.category!r}"))
    if isinstance(step, CreateSale):
        stages = crm.sale_types.get(step.sale_type)
        if stages is None:
            found.append(("sale_type", f"no sale type {step.sale_type!r}"))
        elif step.stage is not None and step.stage not in stages:
            found.append(
                (
                    "stage",
                    f"sale type {step.sale_type!r} has no stage {step.stage!r} "
                    f"({', '.join(stages)})",
                )
            )
    return found


# --- ready to run ------------------------------------------------------------------------------


def _readiness_problems(flow: _Parts) -> Iterator[Problem]:
    kinds = {step.type for step in flow.steps}
    if kinds & {"send_email", "notify_email"} and flow.email is None:
        first = next(s.id for s in flow.steps if isinstance(s, SendEmail | NotifyEmail))
        yield Problem("not_ready", first, "email", "email steps need the flow's email settings")
    for step in flow.steps:
        if isinstance(step, SendSms | NotifySms) and not (step.sender or flow.sms_sender):
            yield Problem(
                "not_ready", step.id, "sender", "no sender, and the flow has no SMS sender"
            )
    for name, value in (
        ("scheduled_start", flow.scheduled_start),
        ("enrollment_end", flow.enrollment_end),
    ):
        if value is not None and value.tzinfo is not None:
            yield Problem(
                "error", None, name, "a local time in the flow's time zone: drop the offset"
            )
    clock = flow.recipient_clock
    if clock is not None and not _known_fact(clock.field):
        message = f"unknown field {clock.field!r}: the contact fact that names its time zone"
        yield Problem("error", None, "recipient_clock.field", message)


# --- files, headers and SMS numbers: what would otherwise only fail at send ------------------


def _file_problems(flow: _Parts, folder: Path | None) -> Iterator[Problem]:
    """Content files and attachments name files in the content folder. The paths themselves
    are always checked; with ``folder`` the files too (a missing one is not ready to run)."""
    for step in flow.steps:
        if not isinstance(step, SendEmail):
            continue
        named = [] if step.content_file is None else [("content_file", step.content_file)]
        named += [(f"attachments.{i}.path", a.path) for i, a in enumerate(step.attachments)]
        for where, relative in named:
            problem = path_problem(relative)
            if problem is not None:
                yield Problem("error", step.id, where, problem)
            elif folder is not None:
                try:
                    content_path(folder, relative)
                except OutsideContentFolder as error:
                    yield Problem("error", step.id, where, str(error))
                except MissingContentFile as error:
                    yield Problem("not_ready", step.id, where, str(error))


def _header_problems(flow: _Parts) -> Iterator[Problem]:
    """Header values the author wrote stay on one line: a From of ``x\\r\\nBcc: …`` would add
    a header of its own. (Values from contact data are cleaned when the message is built.)"""
    settings = _parsed(_EMAIL, flow.email)
    if settings is not None:
        for where, value in (
            ("email.from.name", settings.sender.name),
            ("email.from.address", settings.sender.address),
            ("email.reply_to.address", settings.reply_to.address),
        ):
            if value is not None and (problem := _header_text_problem(value)) is not None:
                yield Problem("error", None, where, problem)
    for step in flow.steps:
        if isinstance(step, SendEmail | NotifyEmail):
            problem = _header_text_problem(step.subject)
            if problem is not None:
                yield Problem("error", step.id, "subject", problem)


def _header_text_problem(text: str) -> str | None:
    if len(text.splitlines()) > 1 or text.endswith(("\r", "\n")):
        return "a header value on more than one line"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        return "a header value with a control character"
    return None


def _sms_problems(flow: _Parts, region: str) -> Iterator[Problem]:
    """SMS texts within the longest SMS sent (merge tags only add to them), and the numbers a
    notify_sms step names mobile ones."""
    for step in flow.steps:
        if not isinstance(step, SendSms | NotifySms):
            continue
        length = too_long(TAG_PATTERN.sub("", step.text))
        if length is not None:
            yield Problem("error", step.id, "text", f"without its merge tags already {length}")
        if isinstance(step, NotifySms):
            for index, raw in enumerate(step.to.addresses):
                number = normalise_number(raw, region)
                if number is None:
                    message = f"{raw!r} is not a valid phone number"
                elif not is_mobile(number):
                    message = f"{raw!r} is not a mobile number ({number_kind(number)})"
                else:
                    continue
                yield Problem("error", step.id, f"to.addresses.{index}", message)
