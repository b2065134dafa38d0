"""Flow statistics (spec §9), read from the engine's tables: participants, deliveries, events.

Participants: the ``participants`` rows that mirror each participant workflow. Message steps: the
delivery ledger (``deliveries``; a key is ``<participant id>/<step id>/<visit>``), and why
messages were not sent — the ledger's outcome, or, for participants still at the step, what they
wait for (the row's ``waiting_for``). Opens and clicks
come from the ``crm_events`` table, and this is the contract the tracking service writes to:

* one row per open or click, ``kind`` ``"email_opened"`` or ``"link_clicked"``;
* ``contact_id`` set, and ``payload`` holding ``flow_id`` and ``step_id`` (the send_email step
  whose pixel or link it was), as ``models.events.FlowEvent`` carries them.

A contact counts once per email step however often it opens or clicks. While no such row exists
for a flow, its statistics say tracking is not enabled rather than report 0 % as a fact.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field
from sqlalchemy import Engine, and_, func
from sqlmodel import col, select

from models.consent import is_consent_refusal
from models.database import session
from models.engine import CrmEvent, Delivery, Participant, ParticipantStatus, WaitReason
from models.flow import Flow, SendEmail, SendSms
from models.ledger import DeliveryStatus
from reports.experiments import ExperimentStatistics, experiment_statistics, render_experiments

OPENED = "email_opened"
CLICKED = "link_clicked"
SENT = "sent"

# Why a message step's message was not sent (yet): every reason is shown, zeros included.
CAPPED = "capped"
SKIPPED_BY_CONSENT = "skipped by consent"
SKIPPED_OTHERWISE = "skipped: no usable address or number"
WAITING = {
    WaitReason.sending_window.value: "waiting for the window",
    WaitReason.frequency_cap.value: "waiting for the cap",
    WaitReason.holiday.value: "waiting for a holiday",
}
NOT_SENT_REASONS = (
    CAPPED,
    SKIPPED_BY_CONSENT,
    SKIPPED_OTHERWISE,
    DeliveryStatus.bounced.value,
    DeliveryStatus.failed.value,
    DeliveryStatus.unconfirmed.value,
    *WAITING.values(),
)


class StepCount(BaseModel):
    step_id: str
    label: str
    type: str
    participants: int


class EmailStepStatistics(BaseModel):
    step_id: str
    label: str
    subject: str
    recipients: int = Field(description="Contacts the email was handed to (ledger status sent)")
    opens: int = Field(description="Contacts who opened it (tracked)")
    clicks: int = Field(description="Contacts who clicked a tracked link in it")
    open_rate: float | None = Field(description="opens / recipients; None without recipients")
    click_through_rate: float | None = Field(description="clicks / recipients")


class MessageStepStatistics(BaseModel):
    step_id: str
    label: str
    type: str
    sent: int = Field(description="Messages handed to the provider (ledger status sent)")
    not_sent: dict[str, int] = Field(
        description="Messages not sent, by reason: capped, skipped by consent, skipped (no usable "
        "address or number), bounced, failed, unconfirmed; and participants at the step waiting "
        "for the sending window, a frequency cap or a holiday. Every reason, zeros included."
    )


class FlowStatistics(BaseModel):
    flow_id: str
    name: str
    version: int
    time_zone: str
    enrolled: int = Field(description="Participants in any status")
    in_progress: int = Field(description="Status Active")
    completed: int = Field(description="Finished or Finished with success")
    success_rate: float | None = Field(description="Finished with success / enrolled")
    by_status: dict[str, int]
    by_step: list[StepCount] = Field(description="Active participants at each step, flow order")
    drop_out_reasons: dict[str, int]
    enrolled_per_day: dict[date, int] = Field(description="Local dates in the flow's time zone")
    email_steps: list[EmailStepStatistics]
    message_steps: list[MessageStepStatistics] = Field(
        description="Email and SMS steps: sent, and not sent by reason"
    )
    tracking_enabled: bool = Field(description="Any open or click recorded for this flow")
    best_by_click_through: list[str] = Field(description="Email step ids, best first")
    experiments: list[ExperimentStatistics] = Field(default=[], description="Experiment splits")


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def flow_statistics(
    engine: Engine, flow: Flow, version: int, *, per_day: bool = True
) -> FlowStatistics:
    """Statistics over every version's participants, labelled with ``flow``'s steps.

    Counted in SQL, grouped, whatever the number of participants. Only ``enrolled_per_day``
    reads each participant's enrollment time (its local date depends on the flow's time zone);
    ``per_day=False`` leaves it empty, for pages that do not show it."""
    mine = Participant.flow_id == flow.id
    with session(engine) as db:
        statuses = Counter[str](
            dict(
                db.exec(
                    select(Participant.status, func.count())
                    .where(mine)
                    .group_by(col(Participant.status))
                ).all()
            )
        )
        active = Participant.status == ParticipantStatus.active.value
        at_step = Counter[str | None](
            dict(
                db.exec(
                    select(Participant.current_step, func.count())
                    .where(mine, active)
                    .group_by(col(Participant.current_step))
                ).all()
            )
        )
        waiting = Counter[tuple[str | None, str]](
            {
                (step, str(wait)): n
                for step, wait, n in db.exec(
                    select(Participant.current_step, Participant.waiting_for, func.count())
                    .where(mine, active, col(Participant.waiting_for).is_not(None))
                    .group_by(col(Participant.current_step), col(Participant.waiting_for))
                ).all()
            }
        )
        reasons = Counter[str](
            {
                reason: n
                for reason, n in db.exec(
                    select(Participant.drop_out_reason, func.count())
                    .where(mine, col(Participant.drop_out_reason).is_not(None))
                    .group_by(col(Participant.drop_out_reason))
                ).all()
                if reason
            }
        )
        zone = ZoneInfo(flow.time_zone)
        days = Counter(
            moment.astimezone(zone).date()
            for moment in (
                db.exec(select(Participant.enrolled_at).where(mine)).all() if per_day else []
            )
        )
        # A ledger key is "<participant id>/<step id>/<visit>": each participant's keys are one
        # range of the unique index ("/" sorts just before "0"), grouped by what follows the id.
        step_and_visit = func.substr(Delivery.key, func.length(Participant.id) + 2)
        ledger_rows = db.exec(
            select(step_and_visit, Delivery.status, Delivery.detail, func.count())
            .join(
                Participant,
                and_(
                    col(Delivery.key) > Participant.id + "/",
                    col(Delivery.key) < Participant.id + "0",
                ),
            )
            .where(mine)
            .group_by(step_and_visit, col(Delivery.status), col(Delivery.detail))
        ).all()
        event_step = CrmEvent.payload["step_id"].as_string()
        tracked = db.exec(
            select(CrmEvent.kind, event_step, func.count(func.distinct(CrmEvent.contact_id)))
            .where(
                col(CrmEvent.kind).in_([OPENED, CLICKED]),
                CrmEvent.payload["flow_id"].as_string() == flow.id,
            )
            .group_by(col(CrmEvent.kind), event_step)
        ).all()
        experiments = experiment_statistics(db, flow)
    # Each step's ledger outcomes: (status, detail) -> messages.
    ledger: dict[str, Counter[tuple[str, str | None]]] = {}
    for key_rest, status, detail, n in ledger_rows:
        step_id = str(key_rest).split("/", 1)[0]
        ledger.setdefault(step_id, Counter())[(status, detail)] += n
    reached = {(kind, step_id): n for kind, step_id, n in tracked}
    enrolled = sum(statuses.values())

    success = statuses[ParticipantStatus.finished_with_success.value]
    completed = statuses[ParticipantStatus.finished.value] + success
    by_step = [
        StepCount(step_id=s.id, label=s.label, type=s.type, participants=at_step.pop(s.id, 0))
        for s in flow.steps
    ]
    # Steps of older versions (or none yet: just enrolled) that still hold participants.
    by_step += [
        StepCount(step_id=step or "(starting)", label=step or "(starting)", type="", participants=n)
        for step, n in sorted(at_step.items(), key=lambda item: str(item[0]))
    ]

    email_steps: list[EmailStepStatistics] = []
    for step in flow.steps:
        if not isinstance(step, SendEmail):
            continue
        outcomes = ledger.get(step.id, Counter())
        recipients = sum(n for (status, _), n in outcomes.items() if status == SENT)
        opens = reached.get((OPENED, step.id), 0)
        clicks = reached.get((CLICKED, step.id), 0)
        email_steps.append(
            EmailStepStatistics(
                step_id=step.id,
                label=step.label,
                subject=step.subject,
                recipients=recipients,
                opens=opens,
                clicks=clicks,
                open_rate=_rate(opens, recipients),
                click_through_rate=_rate(clicks, recipients),
            )
        )
    message_steps = [
        _message_step(step, ledger.get(step.id, Counter()), waiting)
        for step in flow.steps
        if isinstance(step, SendEmail | SendSms)
    ]
    best = sorted(
        (s for s in email_steps if s.clicks),
        key=lambda s: s.click_through_rate or 0.0,
        reverse=True,
    )
    return FlowStatistics(
        flow_id=flow.id,
        name=flow.name,
        version=version,
        time_zone=flow.time_zone,
        enrolled=enrolled,
        in_progress=statuses[ParticipantStatus.active.value],
        completed=completed,
        success_rate=_rate(success, enrolled),
        by_status={status.value: statuses[status.value] for status in ParticipantStatus},
        by_step=by_step,
        drop_out_reasons=dict(reasons.most_common()),
        enrolled_per_day=dict(sorted(days.items())),
        email_steps=email_steps,
        message_steps=message_steps,
        tracking_enabled=bool(tracked),
        best_by_click_through=[s.step_id for s in best],
        experiments=experiments,
    )


def _not_sent_reason(status: str, detail: str | None) -> str | None:
    """Why a ledger row's message was not sent; None: sent, or still on its way."""
    if status == DeliveryStatus.capped:
        return CAPPED
    if status == DeliveryStatus.skipped:
        return SKIPPED_BY_CONSENT if is_consent_refusal(detail or "") else SKIPPED_OTHERWISE
    if status in (DeliveryStatus.bounced, DeliveryStatus.failed, DeliveryStatus.unconfirmed):
        return str(status)
    return None


def _message_step(
    step: SendEmail | SendSms,
    outcomes: Counter[tuple[str, str | None]],
    waiting: Counter[tuple[str | None, str]],
) -> MessageStepStatistics:
    not_sent = dict.fromkeys(NOT_SENT_REASONS, 0)
    for (status, detail), n in outcomes.items():
        reason = _not_sent_reason(status, detail)
        if reason is not None:
            not_sent[reason] += n
    for wait, reason in WAITING.items():
        not_sent[reason] += waiting[(step.id, wait)]
    return MessageStepStatistics(
        step_id=step.id,
        label=step.label,
        type=step.type,
        sent=sum(n for (status, _), n in outcomes.items() if status == SENT),
        not_sent=not_sent,
    )


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def render_table(stats: FlowStatistics) -> str:
    """The statistics as the plain-text table ``starter.py stats`` prints."""
    labels = [f"{s.label} ({s.type})" if s.type else s.label for s in stats.by_step]
    width = max([38, *map(len, labels), *map(len, stats.drop_out_reasons)])
    lines = [
        f"{stats.name} ({stats.flow_id}), latest version {stats.version}",
        "",
        f"  enrolled     {stats.enrolled:>6}",
        f"  in progress  {stats.in_progress:>6}",
        f"  completed    {stats.completed:>6}",
        f"  success rate {_percent(stats.success_rate):>6}",
        "",
        "participants by status",
    ]
    lines += [f"  {status:<{width}} {count:>6}" for status, count in stats.by_status.items()]
    lines += ["", "active participants by step"]
    lines += [
        f"  {label:<{width}} {step.participants:>6}"
        for label, step in zip(labels, stats.by_step, strict=True)
    ]
    lines += ["", "drop-out reasons"]
    lines += [f"  {reason:<{width}} {n:>6}" for reason, n in stats.drop_out_reasons.items()]
    if not stats.drop_out_reasons:
        lines.append("  (none)")
    lines += ["", f"enrollment per day ({stats.time_zone})"]
    peak = max(stats.enrolled_per_day.values(), default=0)
    for day, count in stats.enrolled_per_day.items():
        bar = "#" * max(1, round(30 * count / peak))
        lines.append(f"  {day.isoformat()}  {count:>6}  {bar}")
    if not stats.enrolled_per_day:
        lines.append("  (none)")
    note = "" if stats.tracking_enabled else "  (tracking not enabled: no opens or clicks recorded)"
    lines += ["", "email steps" + note]
    lines.append(
        f"  {'step':<30} {'recipients':>10} {'opens':>6} {'clicks':>6} {'open':>5} {'CTR':>5}"
    )
    for s in stats.email_steps:
        lines.append(
            f"  {s.label[:30]:<30} {s.recipients:>10} {s.opens:>6} {s.clicks:>6} "
            f"{_percent(s.open_rate):>5} {_percent(s.click_through_rate):>5}"
        )
    if not stats.email_steps:
        lines.append("  (no email steps)")
    lines += ["", "message steps: sent, and why not"]
    for m in stats.message_steps:
        lines.append(f"  {f'{m.label} ({m.type})'[:44]:<44} {m.sent:>6} sent")
        lines += [f"    {reason:<42} {n:>6}" for reason, n in m.not_sent.items()]
    if not stats.message_steps:
        lines.append("  (no message steps)")
    if stats.best_by_click_through:
        names = {s.step_id: s.label for s in stats.email_steps}
        best = ", ".join(names[step] for step in stats.best_by_click_through[:3])
        lines += ["", f"best emails by click-through: {best}"]
    lines += render_experiments(stats.experiments, stats.time_zone)
    return "\n".join(lines)
