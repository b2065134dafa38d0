"""A flow's experiments as ``starter.py stats`` shows them: the participants on each path, and the
winner with the figures it was decided on, or when it will be decided."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlmodel import Session

from models import schedule
from models.experiments import PathFigures, assignments, find_decision, path_figures
from models.flow import ExperimentMetric, Flow, Split, SplitBasis


class ExperimentStatistics(BaseModel):
    step_id: str
    experiment: str
    metric: ExperimentMetric = Field(description="The winner's metric; clicks without a winner")
    paths: list[PathFigures] = Field(description="The holdout first, when there is one")
    decision: str | None = Field(description="The winner, its figures and when; None: not yet")
    decides_after: datetime | None = Field(
        description="Without a decision: the end of the window after the first participant"
    )


def experiment_splits(flow: Flow) -> list[Split]:
    return [s for s in flow.steps if isinstance(s, Split) and s.basis is SplitBasis.experiment]


def experiment_statistics(db: Session, flow: Flow) -> list[ExperimentStatistics]:
    found: list[ExperimentStatistics] = []
    for split in experiment_splits(flow):
        experiment = split.experiment
        assert experiment is not None
        rows = assignments(db, flow.id, experiment.id)
        metric = experiment.winner.metric if experiment.winner else ExperimentMetric.clicks
        decision = find_decision(db, flow.id, experiment.id)
        decides_after = None
        if decision is None and experiment.winner is not None and rows:
            window = experiment.winner.after
            decides_after = schedule.add_interval(
                rows[0].assigned_at, window.amount, window.unit, flow.time_zone
            )
        found.append(
            ExperimentStatistics(
                step_id=split.id,
                experiment=experiment.id,
                metric=metric,
                paths=path_figures(db, flow.id, split, metric, flow.success, rows),
                decision=decision.summary() if decision is not None else None,
                decides_after=decides_after,
            )
        )
    return found


def render_experiments(experiments: list[ExperimentStatistics], time_zone: str) -> list[str]:
    lines: list[str] = []
    for experiment in experiments:
        lines += ["", f"experiment {experiment.experiment!r} (step {experiment.step_id})"]
        lines.append(
            f"  {'path':<30} {'participants':>12} {experiment.metric.value:>8} {'rate':>5}"
        )
        for path in experiment.paths:
            rate = "-" if path.rate is None else f"{path.rate:.0%}"
            lines.append(
                f"  {path.name[:30]:<30} {path.participants:>12} {path.converted:>8} {rate:>5}"
            )
        if experiment.decision is not None:
            lines.append(f"  {experiment.decision}")
        elif experiment.decides_after is not None:
            when = schedule.describe_instant(experiment.decides_after, time_zone)
            lines.append(f"  no winner yet: decided by the first participant after {when}")
    return lines
