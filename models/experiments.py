"""Experiments: a split that sends participants down paths by percentage.

Which path a contact takes follows from (flow, experiment, contact) alone, through a stable hash
(``assigned_path``), so a replay, a re-run of the step or a second enrollment of the same contact
lands on the same path. The holdout takes the first buckets, so raising it only moves contacts
from the paths into it.

With a winner, once the window after the experiment's first participant has passed, the first
participant to reach the split decides: the path whose participants did best on the metric (from
the opens, clicks and CRM events recorded in ``crm_events``) wins, and every later participant
outside the holdout takes it. The decision is one row (``ExperimentDecision``), written once;
participants already past the split keep their path. Each participant's path is one row
(``ExperimentAssignment``), which the statistics and the funnel read.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, select

from models.database import UTCDateTime
from models.engine import CrmEvent
from models.events import EventKind, FlowEvent, meets
from models.flow import ExperimentMetric, Split, SuccessCriteria

BUCKETS = 10_000  # a hundredth of a percent each
HELD_OUT = "held out"
HOLDOUT_NAME = "holdout (control)"


def bucket(flow_id: str, experiment: str, contact_id: int) -> int:
    """The contact's place in the experiment, 0 to BUCKETS - 1: the same on every machine and
    Python version (sha256, not ``hash``, which is salted per process)."""
    digest = hashlib.sha256(f"{flow_id}\x1f{experiment}\x1f{contact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assigned_path(
    flow_id: str,
    experiment: str,
    contact_id: int,
    percents: Sequence[int],
    holdout_percent: int = 0,
) -> int | None:
    """The path (index into ``percents``) the contact takes, or None when it is held out.
    Percentages add up to 100 with the holdout's (the flow's validation says so)."""
    place = bucket(flow_id, experiment, contact_id)
    edge = holdout_percent * BUCKETS // 100
    if place < edge:
        return None
    for index, percent in enumerate(percents):
        edge += percent * BUCKETS // 100
        if place < edge:
            return index
    return len(percents) - 1


class PathFigures(BaseModel):
    """One path's participants and how many of them converted on a metric."""

    path: int | None  # None: the holdout, the control group
    name: str
    participants: int
    converted: int

    @property
    def rate(self) -> float | None:
        return self.converted / self.participants if self.participants else None


def best_path(figures: Sequence[PathFigures]) -> PathFigures:
    """The winner: the highest rate among the paths (not the holdout); the first path on a tie,
    and when no path has participants."""
    paths = [f for f in figures if f.path is not None]
    return max(paths, key=lambda f: (f.rate or 0.0, -(f.path or 0)))


def two_proportion_z(
    converted_a: int, total_a: int, converted_b: int, total_b: int
) -> float | None:
    """The two-proportion z statistic of A against B (pooled), or None when it is undefined
    (an empty group, or nobody or everybody converted in both)."""
    if not total_a or not total_b:
        return None
    pooled = (converted_a + converted_b) / (total_a + total_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / total_a + 1 / total_b))
    if spread == 0:
        return None
    return (converted_a / total_a - converted_b / total_b) / spread


def p_value(z: float) -> float:
    """Two-sided p-value of a standard normal z."""
    return math.erfc(abs(z) / math.sqrt(2))


def describe(figures: Sequence[PathFigures]) -> str:
    """'A 3/10 (30%), B 1/10 (10%)' for a trail or a report."""
    return ", ".join(
        f"{f.name} {f.converted}/{f.participants}"
        + (f" ({f.rate:.0%})" if f.rate is not None else "")
        for f in figures
    )


# --- the records -------------------------------------------------------------------------------


class ExperimentAssignment(SQLModel, table=True):
    """The path one participant took at an experiment split (one row per visit of the step)."""

    __tablename__ = "experiment_assignments"
    __table_args__ = (Index("ix_experiment_assignments_flow_experiment", "flow_id", "experiment"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True)  # participant, step and visit: a retry finds its row
    flow_id: str
    experiment: str
    step_id: str
    participant_id: str
    contact_id: int = Field(index=True)
    path: int | None = None  # None: held out
    path_name: str
    by_winner: bool = False  # the decision sent it, not its share
    assigned_at: datetime = Field(sa_type=UTCDateTime)


class ExperimentDecision(SQLModel, table=True):
    """An experiment's winner, decided once: the figures it was decided on, and when."""

    __tablename__ = "experiment_decisions"
    __table_args__ = (UniqueConstraint("flow_id", "experiment"),)

    id: int | None = Field(default=None, primary_key=True)
    flow_id: str
    experiment: str
    metric: str
    winner: int
    winner_name: str
    figures: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    window_started_at: datetime = Field(sa_type=UTCDateTime)
    decided_at: datetime = Field(sa_type=UTCDateTime)

    def summary(self) -> str:
        figures = [PathFigures.model_validate(f) for f in self.figures]
        return (
            f"winner {self.winner_name!r} by {self.metric}, decided "
            f"{self.decided_at.isoformat(timespec='minutes')}: {describe(figures)}"
        )


def find_decision(db: Session, flow_id: str, experiment: str) -> ExperimentDecision | None:
    return db.exec(
        select(ExperimentDecision).where(
            ExperimentDecision.flow_id == flow_id, ExperimentDecision.experiment == experiment
        )
    ).first()


def assignments(db: Session, flow_id: str, experiment: str) -> list[ExperimentAssignment]:
    return list(
        db.exec(
            select(ExperimentAssignment)
            .where(
                ExperimentAssignment.flow_id == flow_id,
                ExperimentAssignment.experiment == experiment,
            )
            .order_by(col(ExperimentAssignment.assigned_at), col(ExperimentAssignment.id))
        ).all()
    )


METRIC_EVENTS = {
    ExperimentMetric.opens: EventKind.email_opened,
    ExperimentMetric.clicks: EventKind.link_clicked,
}


def converted(
    db: Session,
    flow_id: str,
    rows: Sequence[ExperimentAssignment],
    metric: ExperimentMetric,
    success: SuccessCriteria | None,
) -> set[str]:
    """The keys of the assignments whose contact converted after it: opened (or clicked in) an
    email of this flow, or met one of the flow's success criteria, whoever caused it."""
    if not rows:
        return set()
    contacts = {row.contact_id for row in rows}
    query = select(CrmEvent).where(col(CrmEvent.contact_id).in_(contacts))
    kind = METRIC_EVENTS.get(metric)
    if kind is not None:
        query = query.where(CrmEvent.kind == kind.value)
    moments: dict[int, list[datetime]] = {}
    for event in db.exec(query).all():
        if kind is not None:
            counts = event.payload.get("flow_id") == flow_id
        else:
            parsed = FlowEvent.model_validate(event.payload)
            counts = success is not None and any(meets(c, parsed) for c in success.criteria)
        if counts and event.contact_id is not None:
            moments.setdefault(event.contact_id, []).append(event.occurred_at)
    return {
        row.key
        for row in rows
        if any(at >= row.assigned_at for at in moments.get(row.contact_id, []))
    }


def path_figures(
    db: Session,
    flow_id: str,
    split: Split,
    metric: ExperimentMetric,
    success: SuccessCriteria | None,
    rows: Sequence[ExperimentAssignment] | None = None,
) -> list[PathFigures]:
    """Each path's participants and conversions on ``metric``, the holdout first when the
    experiment has one."""
    assert split.experiment is not None
    if rows is None:
        rows = assignments(db, flow_id, split.experiment.id)
    done = converted(db, flow_id, rows, metric, success)
    paths: list[tuple[int | None, str]] = [(i, b.name) for i, b in enumerate(split.branches)]
    if split.experiment.holdout_percent:
        paths.insert(0, (None, HOLDOUT_NAME))
    return [
        PathFigures(
            path=path,
            name=name,
            participants=sum(row.path == path for row in rows),
            converted=sum(row.path == path and row.key in done for row in rows),
        )
        for path, name in paths
    ]
