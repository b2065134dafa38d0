"""Choosing a participant's path at an experiment split (``models.experiments``).

The path itself is pure (a hash of flow, experiment and contact); what needs the database is the
winner: reading the decision, making it once the window has passed, and recording the path the
participant took, which the decision's figures and the statistics count.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio import activity

from activities.participants import ParticipantRecord, enter_step
from models import schedule
from models.engine import transact
from models.experiments import (
    HELD_OUT,
    HOLDOUT_NAME,
    ExperimentAssignment,
    ExperimentDecision,
    assigned_path,
    assignments,
    best_path,
    find_decision,
    path_figures,
)
from models.flow import Split, SuccessCriteria


class ExperimentQuestion(BaseModel):
    key: str  # the participant's delivery key for the step visit: a retry finds its answer
    flow_id: str
    time_zone: str
    participant_id: str
    contact_id: int
    split: Split
    success: SuccessCriteria | None = None  # the flow's, for the success metric
    at: datetime  # the workflow's now: the window is measured on the participants' clock
    record: ParticipantRecord | None = None  # the step's entry, to record and check first


class ExperimentAnswer(BaseModel):
    """The path taken (None: held out) and how it was chosen, for the participant's trail; or
    why the participant leaves at the split's entry instead."""

    path: int | None = None
    outcome: str = ""
    leave_reason: str | None = None


class ExperimentActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def choose_experiment_path(self, question: ExperimentQuestion) -> ExperimentAnswer:
        # A decision or an assignment inserted by another participant meanwhile makes the
        # insert fail on its unique key: the redo reads it and agrees with it.
        return transact(self._engine, lambda db: _choose(db, question))


def _choose(db: Session, question: ExperimentQuestion) -> ExperimentAnswer:
    found = db.exec(
        select(ExperimentAssignment).where(ExperimentAssignment.key == question.key)
    ).first()
    reason = enter_step(db, question.record, lambda: found is not None)
    if reason is not None:
        return ExperimentAnswer(leave_reason=reason)
    if found is None:
        found = _assign(db, question)
    return _answer(db, question, found)


def _by_share(question: ExperimentQuestion) -> int | None:
    split, experiment = question.split, question.split.experiment
    assert experiment is not None  # the model requires it for basis experiment
    shares = [branch.percent or 0 for branch in split.branches]
    return assigned_path(
        question.flow_id, experiment.id, question.contact_id, shares, experiment.holdout_percent
    )


def planned_path(db: Session, question: ExperimentQuestion) -> ExperimentAnswer:
    """The path the split would give now, deciding and recording nothing (the dry run): the
    contact's share, or the winner decided before."""
    assert question.split.experiment is not None
    path = _by_share(question)
    decision = find_decision(db, question.flow_id, question.split.experiment.id)
    if path is not None and decision is not None:
        path = decision.winner
    name = HOLDOUT_NAME if path is None else question.split.branches[path].name
    return ExperimentAnswer(path=path, outcome=f"path {name!r} (not recorded)")


def _assign(db: Session, question: ExperimentQuestion) -> ExperimentAssignment:
    split, experiment = question.split, question.split.experiment
    assert experiment is not None
    path = _by_share(question)
    decision = _decision(db, question) if path is not None else None
    if decision is not None:
        path = decision.winner
    row = ExperimentAssignment(
        key=question.key,
        flow_id=question.flow_id,
        experiment=experiment.id,
        step_id=split.id,
        participant_id=question.participant_id,
        contact_id=question.contact_id,
        path=path,
        path_name=HOLDOUT_NAME if path is None else split.branches[path].name,
        by_winner=decision is not None,
        assigned_at=question.at,
    )
    db.add(row)
    db.flush()
    return row


def _decision(db: Session, question: ExperimentQuestion) -> ExperimentDecision | None:
    """The experiment's winner: the one decided before, or decided now when the window after
    its first participant has passed; None while there is none."""
    experiment = question.split.experiment
    assert experiment is not None
    if experiment.winner is None:
        return None
    decided = find_decision(db, question.flow_id, experiment.id)
    if decided is not None:
        return decided
    rows = assignments(db, question.flow_id, experiment.id)
    if not rows:
        return None
    window = experiment.winner.after
    ends = schedule.add_interval(
        rows[0].assigned_at, window.amount, window.unit, question.time_zone
    )
    if question.at < ends:
        return None
    figures = path_figures(
        db, question.flow_id, question.split, experiment.winner.metric, question.success, rows
    )
    best = best_path(figures)
    assert best.path is not None
    decision = ExperimentDecision(
        flow_id=question.flow_id,
        experiment=experiment.id,
        metric=experiment.winner.metric.value,
        winner=best.path,
        winner_name=best.name,
        figures=[f.model_dump(mode="json") for f in figures],
        window_started_at=rows[0].assigned_at,
        decided_at=question.at,
    )
    db.add(decision)
    db.flush()
    return decision


def _answer(
    db: Session, question: ExperimentQuestion, row: ExperimentAssignment
) -> ExperimentAnswer:
    experiment = question.split.experiment
    assert experiment is not None
    where = f"experiment {experiment.id!r}"
    if row.path is None:
        return ExperimentAnswer(path=None, outcome=f"{where}: {HELD_OUT}")
    if not row.by_winner:
        share = question.split.branches[row.path].percent
        return ExperimentAnswer(
            path=row.path, outcome=f"{where}: path {row.path_name!r} ({share}%)"
        )
    decision = find_decision(db, question.flow_id, experiment.id)
    assert decision is not None  # a row by the winner was written after its decision
    return ExperimentAnswer(path=row.path, outcome=f"{where}: {decision.summary()}")
