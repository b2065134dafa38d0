"""A flow's funnel as ``starter.py stats --funnel`` shows it: per step, in path order, the
participants who entered it, went on, left the flow there (finished, dropped out with the reason,
cancelled) and are there now; per experiment path, the metric, the conversion to the success
criterion and how confident a difference from the control is.

Where participants went comes from ``step_visits`` (a row per step a participant entered, written
with its entry record), how they left from their ``participants`` row: a participant's last visit
is where it is, or where it left the flow. Participants that left without a visit (before their
first step, or before visits were recorded) count as ``unrecorded``.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import graphviz
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.database import session
from models.engine import Participant, ParticipantStatus, StepVisit
from models.experiments import PathFigures, assignments, p_value, path_figures, two_proportion_z
from models.flow import ExperimentMetric, Flow, Split, successors
from reports.diagram import FONT
from reports.experiments import experiment_splits


class StepFunnel(BaseModel):
    step_id: str
    label: str
    type: str = Field(description="Empty for a step no longer in the flow's latest version")
    entered: int = Field(description="Participants who entered the step (once each)")
    went_on: int = Field(description="Entered it and are now beyond it (or left further on)")
    waiting: int = Field(description="Active participants whose latest step it is")
    finished: int = Field(description="Left the flow here as Finished or Finished with success")
    dropped_out: int = Field(description="Left the flow here as Dropped out")
    drop_out_reasons: dict[str, int] = Field(description="The dropped out, by reason")
    cancelled: int = Field(description="Left here as Cancelled (the flow was ended)")
    went_to: dict[str, int] = Field(description="Moves from this step to each next step, by id")


class PathConversion(BaseModel):
    """One group's conversions on one measure, and its difference from the baseline's."""

    converted: int
    rate: float | None
    z: float | None = Field(description="Two-proportion z against the baseline; None: undefined")
    confidence: float | None = Field(
        description="1 - the two-sided p-value: how sure the rate differs from the baseline's"
    )


class PathFunnel(BaseModel):
    name: str
    path: int | None = Field(description="Index among the split's branches; None: the holdout")
    participants: int
    metric: PathConversion
    success: PathConversion | None = Field(description="None: the flow has no success criteria")


class ExperimentFunnel(BaseModel):
    step_id: str
    experiment: str
    metric: ExperimentMetric
    baseline: str = Field(description="The group compared with: the holdout, else the first path")
    paths: list[PathFunnel]


class Funnel(BaseModel):
    flow_id: str
    name: str
    version: int
    enrolled: int = Field(description="Participants in any status")
    before_first_step: int = Field(description="Active, not yet at a step (a scheduled start)")
    unrecorded: int = Field(
        description="Left without a step recorded: before their first (moved to finish as they "
        "entered), or before step visits were recorded"
    )
    steps: list[StepFunnel] = Field(description="Path order from the start, branches in order")
    experiments: list[ExperimentFunnel]


def path_order(flow: Flow) -> list[str]:
    """The flow's steps as its paths run: from the start, a split's branches in their order, a
    step where branches meet after all of them (a depth-first reverse postorder, back edges of
    loops ignored); steps the start does not reach follow in document order."""
    known = {s.id for s in flow.steps}

    def ahead(step_id: str) -> list[str]:
        # Popped from the end: the first branch is explored last, so it ends up first.
        return [t for t in successors(flow.step(step_id)) if t in known]

    done: list[str] = []
    seen = {flow.start}
    # Iterative: a flow may have a thousand steps in a row. (step, successors still to visit)
    stack = [(flow.start, ahead(flow.start))]
    while stack:
        step_id, left = stack[-1]
        if not left:
            done.append(step_id)
            stack.pop()
            continue
        target = left.pop()
        if target not in seen:
            seen.add(target)
            stack.append((target, ahead(target)))
    return done[::-1] + [s.id for s in flow.steps if s.id not in seen]


@dataclass
class _Tally:
    entered: set[str]
    went_on: set[str]
    went_to: Counter[str]
    left: Counter[tuple[str, str | None]]  # (status, drop-out reason)
    waiting: int = 0


def funnel(engine: Engine, flow: Flow, version: int) -> Funnel:
    """The funnel over every version's participants, in the order of ``flow``'s steps."""
    with session(engine) as db:
        participants = {
            p.id: p for p in db.exec(select(Participant).where(Participant.flow_id == flow.id))
        }
        visits = db.exec(
            select(StepVisit.participant_id, StepVisit.step_id)
            .where(StepVisit.flow_id == flow.id)
            .order_by(col(StepVisit.participant_id), col(StepVisit.ordinal))
        ).all()
        experiments = _experiments(db, flow)

    paths: dict[str, list[str]] = {}
    for participant_id, step_id in visits:
        paths.setdefault(participant_id, []).append(step_id)
    tallies: dict[str, _Tally] = {}

    def tally(step_id: str) -> _Tally:
        return tallies.setdefault(step_id, _Tally(set(), set(), Counter(), Counter()))

    for participant_id, steps in paths.items():
        for here, there in pairwise(steps):
            tally(here).went_to[there] += 1
        last = steps[-1]
        for step_id in set(steps):
            tally(step_id).entered.add(participant_id)
            if step_id != last:
                tally(step_id).went_on.add(participant_id)
        row = participants.get(participant_id)
        if row is None or row.status == ParticipantStatus.active.value:
            tally(last).waiting += 1
        else:
            tally(last).left[(row.status, row.drop_out_reason)] += 1

    unvisited = [p for p in participants.values() if p.id not in paths]
    active = ParticipantStatus.active.value
    order = path_order(flow)
    order += sorted(step for step in tallies if step not in set(order))  # older versions' steps
    labels = {s.id: (s.label, s.type) for s in flow.steps}
    return Funnel(
        flow_id=flow.id,
        name=flow.name,
        version=version,
        enrolled=len(participants),
        before_first_step=sum(p.status == active for p in unvisited),
        unrecorded=sum(p.status != active for p in unvisited),
        steps=[
            _step(step_id, *labels.get(step_id, (step_id, "")), tally(step_id)) for step_id in order
        ],
        experiments=experiments,
    )


def _step(step_id: str, label: str, kind: str, counts: _Tally) -> StepFunnel:
    finishing = {ParticipantStatus.finished.value, ParticipantStatus.finished_with_success.value}
    dropped = Counter(
        {
            reason or "(no reason)": n
            for (status, reason), n in counts.left.items()
            if status == ParticipantStatus.dropped_out.value
        }
    )
    return StepFunnel(
        step_id=step_id,
        label=label,
        type=kind,
        entered=len(counts.entered),
        went_on=len(counts.went_on),
        waiting=counts.waiting,
        finished=sum(n for (status, _), n in counts.left.items() if status in finishing),
        dropped_out=dropped.total(),
        drop_out_reasons=dict(dropped.most_common()),
        cancelled=sum(
            n
            for (status, _), n in counts.left.items()
            if status == ParticipantStatus.cancelled.value
        ),
        went_to=dict(counts.went_to.most_common()),
    )


def _experiments(db: Session, flow: Flow) -> list[ExperimentFunnel]:
    found: list[ExperimentFunnel] = []
    for split in experiment_splits(flow):
        assert split.experiment is not None
        rows = assignments(db, flow.id, split.experiment.id)
        winner = split.experiment.winner
        metric = winner.metric if winner is not None else ExperimentMetric.clicks
        by_metric = path_figures(db, flow.id, split, metric, flow.success, rows)
        by_success = None
        if flow.success is not None:
            by_success = path_figures(
                db, flow.id, split, ExperimentMetric.success, flow.success, rows
            )
        found.append(_experiment(split, metric, by_metric, by_success))
    return found


def _experiment(
    split: Split,
    metric: ExperimentMetric,
    by_metric: Sequence[PathFigures],
    by_success: Sequence[PathFigures] | None,
) -> ExperimentFunnel:
    assert split.experiment is not None
    base = 0  # the holdout comes first when there is one; else the first path
    paths = []
    for index, figures in enumerate(by_metric):
        success = None
        if by_success is not None:
            success = _conversion(by_success[index], by_success[base], index == base)
        paths.append(
            PathFunnel(
                name=figures.name,
                path=figures.path,
                participants=figures.participants,
                metric=_conversion(figures, by_metric[base], index == base),
                success=success,
            )
        )
    return ExperimentFunnel(
        step_id=split.id,
        experiment=split.experiment.id,
        metric=metric,
        baseline=by_metric[base].name,
        paths=paths,
    )


def _conversion(group: PathFigures, baseline: PathFigures, is_baseline: bool) -> PathConversion:
    z = None
    if not is_baseline:
        z = two_proportion_z(
            group.converted, group.participants, baseline.converted, baseline.participants
        )
    return PathConversion(
        converted=group.converted,
        rate=group.rate,
        z=z,
        confidence=None if z is None else 1 - p_value(z),
    )


# --- shown -------------------------------------------------------------------------------------


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _step_name(step: StepFunnel) -> str:
    return f"{step.label} ({step.type})" if step.type else f"{step.label} (not in this version)"


def render_funnel(shown: Funnel) -> str:
    """The funnel as the plain-text table ``starter.py stats --funnel`` prints."""
    width = max([34, *(len(_step_name(s)) for s in shown.steps)])
    lines = [
        f"funnel of {shown.name} ({shown.flow_id}), latest version {shown.version}",
        f"  enrolled {shown.enrolled}, before their first step {shown.before_first_step}"
        + (f", unrecorded {shown.unrecorded}" if shown.unrecorded else ""),
        "",
        f"  {'step':<{width}} {'entered':>8} {'went on':>8} {'waiting':>8} {'finished':>8} "
        f"{'dropped':>8} {'cancelled':>9}",
    ]
    for step in shown.steps:
        lines.append(
            f"  {_step_name(step):<{width}} {step.entered:>8} {step.went_on:>8} "
            f"{step.waiting:>8} {step.finished:>8} {step.dropped_out:>8} {step.cancelled:>9}"
        )
        lines += [f"    dropped out: {reason} {n}" for reason, n in step.drop_out_reasons.items()]
    for experiment in shown.experiments:
        lines += [
            "",
            f"experiment {experiment.experiment!r} (step {experiment.step_id}): "
            f"{experiment.metric.value} and success, compared with {experiment.baseline!r}",
            f"  {'path':<24} {'participants':>12} {experiment.metric.value:>8} {'rate':>5} "
            f"{'conf.':>6} {'success':>8} {'rate':>5} {'conf.':>6}",
        ]
        for path in experiment.paths:
            success = path.success
            lines.append(
                f"  {path.name[:24]:<24} {path.participants:>12} "
                + _conversion_text(path.metric)
                + " "
                + (_conversion_text(success) if success is not None else f"{'-':>8} {'':>12}")
            )
    return "\n".join(lines)


def _conversion_text(conversion: PathConversion) -> str:
    return (
        f"{conversion.converted:>8} {_percent(conversion.rate):>5} "
        f"{_confidence(conversion.confidence):>6}"
    )


def _confidence(confidence: float | None) -> str:
    return "-" if confidence is None else f"{confidence:.1%}"


# --- drawn -------------------------------------------------------------------------------------

BAR_WIDTH = 260  # points: the widest bar, the step most participants entered
SEGMENTS = (  # the parts of a step's bar, left to right
    ("went_on", "went on", "#16a34a"),
    ("waiting", "waiting", "#2563eb"),
    ("finished", "finished", "#6b7280"),
    ("dropped_out", "dropped out", "#dc2626"),
    ("cancelled", "cancelled", "#f59e0b"),
)


def _bar(step: StepFunnel, most: int) -> str:
    """A bar as wide as the step's share of the most entered, in segments by where its
    participants are now."""
    width = round(BAR_WIDTH * step.entered / most) if most else 0
    segments = [
        (max(1, round(width * getattr(step, field) / step.entered)), colour)
        for field, _, colour in SEGMENTS
        if getattr(step, field)
    ] or [(1, "#e5e7eb")]
    cells = "".join(
        f'<TD WIDTH="{share}" HEIGHT="16" FIXEDSIZE="TRUE" BGCOLOR="{colour}"></TD>'
        for share, colour in segments
    )
    # A fixed size: a wider box would otherwise spread the segments apart.
    total = sum(share for share, _ in segments)
    return (
        '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0" FIXEDSIZE="TRUE" '
        f'WIDTH="{total}" HEIGHT="16"><TR>{cells}</TR></TABLE>'
    )


def _figures(step: StepFunnel) -> str:
    parts = [f"entered {step.entered}"]
    parts += [
        f"{name} {getattr(step, field)}" for field, name, _ in SEGMENTS if getattr(step, field)
    ]
    return " · ".join(parts)


def to_chart(shown: Funnel, flow: Flow) -> graphviz.Digraph:
    """The funnel as a Graphviz graph: a box per step in path order with a bar as wide as the
    participants who entered it, coloured by where they are now; arrows between steps say how
    many moved that way; each experiment's paths in a table below."""
    graph = graphviz.Digraph(name=f"{shown.flow_id}-funnel")
    title = f"Funnel: {shown.name} ({shown.flow_id}), {shown.enrolled} enrolled"
    graph.attr(label=title, labelloc="t", fontsize="18", fontname=FONT, rankdir="TB", dpi="110")
    graph.attr("node", shape="box", style="rounded,filled", fillcolor="white", fontname=FONT)
    graph.attr("edge", fontname=FONT, fontsize="11", color="#4b5563")
    most = max((s.entered for s in shown.steps), default=0)
    shown_ids = {s.step_id for s in shown.steps}
    for step in shown.steps:
        label = (
            '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2">'
            f"<TR><TD><B>{html.escape(step.label)}</B> "
            f'<FONT POINT-SIZE="10" COLOR="#374151">{html.escape(step.type)}</FONT></TD></TR>'
            f"<TR><TD>{_bar(step, most)}</TD></TR>"
            f'<TR><TD><FONT POINT-SIZE="10">{html.escape(_figures(step))}</FONT></TD></TR>'
            + "".join(
                f'<TR><TD><FONT POINT-SIZE="9" COLOR="#dc2626">'
                f"dropped out: {html.escape(reason)} {n}</FONT></TD></TR>"
                for reason, n in step.drop_out_reasons.items()
            )
            + "</TABLE>>"
        )
        graph.node(step.step_id, label)
    known = {s.id for s in flow.steps}
    for step in shown.steps:
        ahead = successors(flow.step(step.step_id)) if step.step_id in known else []
        for target in dict.fromkeys([*ahead, *step.went_to]):
            if target in shown_ids:
                moved = step.went_to.get(target, 0)
                graph.edge(step.step_id, target, label=f" {moved} ", penwidth="2" if moved else "1")
    legend = "".join(
        f'<TD BGCOLOR="{colour}" WIDTH="12"></TD><TD>{name}</TD>' for _, name, colour in SEGMENTS
    )
    graph.node(
        "__legend__",
        f'<<TABLE BORDER="0" CELLSPACING="3"><TR>{legend}</TR></TABLE>>',
        shape="plaintext",
        style="",
        fontsize="10",
    )
    for experiment in shown.experiments:
        graph.node(f"__experiment_{experiment.experiment}__", _experiment_table(experiment))
    return graph


def _experiment_table(experiment: ExperimentFunnel) -> str:
    header = ["path", "participants", experiment.metric.value, "conf.", "success", "conf."]
    rows = [
        "".join(f"<TD><B>{html.escape(cell)}</B></TD>" for cell in header),
    ]
    for path in experiment.paths:
        cells = [
            path.name,
            str(path.participants),
            f"{path.metric.converted} ({_percent(path.metric.rate)})",
            _confidence(path.metric.confidence),
        ]
        if path.success is not None:
            cells += [
                f"{path.success.converted} ({_percent(path.success.rate)})",
                _confidence(path.success.confidence),
            ]
        else:
            cells += ["-", "-"]
        rows.append("".join(f"<TD>{html.escape(cell)}</TD>" for cell in cells))
    title = (
        f"experiment {experiment.experiment} (step {experiment.step_id}), "
        f"compared with {experiment.baseline}"
    )
    return (
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
        f'<TR><TD COLSPAN="6"><B>{html.escape(title)}</B></TD></TR>'
        + "".join(f"<TR>{row}</TR>" for row in rows)
        + "</TABLE>>"
    )
