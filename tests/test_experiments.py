"""Experiment splits: paths by percentage from a stable hash, a holdout that leaves at once, and
a winner decided once from the recorded events (time-skipping server, real database)."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.experiments import ExperimentActivities, ExperimentQuestion
from control.flows import deploy_flow
from control.ingest import record_event
from models.crm import Contact
from models.database import session
from models.engine import ParticipantStatus
from models.events import EventKind, FlowEvent
from models.experiments import (
    BUCKETS,
    ExperimentAssignment,
    ExperimentDecision,
    assigned_path,
    bucket,
    two_proportion_z,
)
from models.flow import Flow, Split
from models.payloads import DATA_CONVERTER
from models.validation import check_flow
from reports.statistics import flow_statistics, render_table
from tests.test_participant import flow_of, start
from worker import build_worker
from workflows.participant import ParticipantWorkflow
from workflows.sandbox import workflow_runner

EXPERIMENT = "subject-test"


def experiment_split(percents: tuple[int, int] = (40, 40), **experiment: Any) -> dict[str, Any]:
    holdout = 100 - sum(percents)
    return {
        "id": "ab",
        "type": "split",
        "basis": "experiment",
        "experiment": {"id": EXPERIMENT, "holdout_percent": holdout, **experiment},
        "branches": [
            {"name": "A", "percent": percents[0], "next": "end-a"},
            {"name": "B", "percent": percents[1], "next": "end-b"},
        ],
        "everyone_else": {},
    }


STEPS = [{"id": "end-a", "type": "finish"}, {"id": "end-b", "type": "finish"}]
WINNER_BY_CLICKS = {"metric": "clicks", "after": {"amount": 3, "unit": "days"}}


def experiment_flow(percents: tuple[int, int] = (40, 40), **experiment: Any) -> Flow:
    return flow_of([experiment_split(percents, **experiment), *STEPS])


def path_of(flow: Flow, contact_id: int) -> int | None:
    split = flow.step("ab")
    assert isinstance(split, Split) and split.experiment is not None
    shares = [branch.percent or 0 for branch in split.branches]
    return assigned_path(
        flow.id, split.experiment.id, contact_id, shares, split.experiment.holdout_percent
    )


def contacts(engine: Engine) -> list[int]:
    with session(engine) as db:
        return [c.id for c in db.exec(select(Contact)).all() if c.id is not None]


def recorded(engine: Engine, kind: EventKind, contact: int, at: datetime, **fields: Any) -> None:
    """An event recorded as the tracking service records it."""
    event = FlowEvent(
        event_id=str(uuid.uuid4()), kind=kind, contact_id=contact, occurred_at=at, **fields
    )
    record_event(engine, event)


# --- the assignment ----------------------------------------------------------------------------


def test_the_assignment_is_a_stable_function_of_flow_experiment_and_contact() -> None:
    # sha256-based: the same bucket on every machine and Python version, run after run.
    assert bucket("welcome", "subject-test", 1) == bucket("welcome", "subject-test", 1)
    assert [bucket("welcome", "subject-test", c) for c in (1, 2, 3)] == [
        bucket("welcome", "subject-test", c) for c in (1, 2, 3)
    ]
    assert {bucket("welcome", e, 1) for e in ("a", "b", "c", "d", "e")} != {
        bucket("welcome", "a", 1)
    }
    # Shares over many contacts follow the percentages (to a percentage point).
    paths = Counter(assigned_path("welcome", "t", c, [50, 30], 20) for c in range(20_000))
    assert abs(paths[None] / 20_000 - 0.20) < 0.01
    assert abs(paths[0] / 20_000 - 0.50) < 0.01
    assert abs(paths[1] / 20_000 - 0.30) < 0.01
    # A bigger holdout only moves contacts from the paths into it.
    for contact in range(2_000):
        if assigned_path("welcome", "t", contact, [45, 45], 10) is None:
            assert assigned_path("welcome", "t", contact, [40, 40], 20) is None
    assert 0 <= min(bucket("f", "e", c) for c in range(100)) < BUCKETS


def test_two_proportion_z() -> None:
    z = two_proportion_z(30, 100, 15, 100)
    assert z is not None and round(z, 2) == 2.54
    assert two_proportion_z(0, 0, 1, 10) is None
    assert two_proportion_z(0, 10, 0, 10) is None


# --- validation --------------------------------------------------------------------------------


def document(split: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"id": "x", "name": "X", "start": "ab", "steps": [split, *STEPS], **settings}


def where(split: dict[str, Any], **settings: Any) -> list[tuple[str | None, str, str]]:
    report = check_flow(document(split, **settings))
    return sorted((p.step, p.field, p.message) for p in report.errors)


def test_an_experiment_is_valid_and_ready_to_run() -> None:
    report = check_flow(document(experiment_split(winner=WINNER_BY_CLICKS)))
    assert report.problems == [] and report.can_run


def test_percentages_paths_and_fields_are_checked_by_step_and_field() -> None:
    split = experiment_split()
    split["branches"][1]["percent"] = 30
    assert where(split) == [
        ("ab", "branches", "the paths' percentages (70) and the holdout's 20 must add up to 100")
    ]
    split = experiment_split((100, 0))
    split["branches"] = split["branches"][:1]
    assert ("ab", "branches", "an experiment has 2 to 5 paths, not 1") in where(split)
    split = experiment_split((50, 50))
    split["branches"] = [{"name": f"P{i}", "percent": 100 // 6, "next": "end-a"} for i in range(6)]
    assert ("ab", "branches", "an experiment has 2 to 5 paths, not 6") in where(split)
    split = experiment_split()
    del split["branches"][0]["percent"]
    split["everyone_else"] = {"next": "end-a"}
    assert where(split) == [
        ("ab", "branches.0.percent", "percent is required for basis experiment"),
        (
            "ab",
            "everyone_else.next",
            "an experiment's everyone else is its holdout, which leaves the flow",
        ),
    ]
    split = experiment_split()
    del split["experiment"]
    assert where(split) == [
        ("ab", "branches", "the paths' percentages (80) must add up to 100"),
        ("ab", "experiment", "basis experiment needs experiment (at least its id)"),
    ]


def test_a_winner_by_success_needs_success_criteria_and_ids_are_unique() -> None:
    split = experiment_split(winner={"metric": "success"})
    assert where(split) == [
        ("ab", "experiment.winner.metric", "a winner by success needs the flow's success criteria")
    ]
    success = {"criteria": [{"kind": "form_submitted", "form_id": 7}]}
    assert where(split, success=success) == []
    second = dict(experiment_split(), id="cd")
    doc = document(experiment_split())
    doc["steps"].append(second)
    doc["steps"][0]["branches"][0]["next"] = "cd"
    report = check_flow(doc)
    assert [(p.step, p.field) for p in report.errors] == [("cd", "experiment.id")]


# --- participants ------------------------------------------------------------------------------


async def run(env: WorkflowEnvironment, task_queue: str, flow: Flow, contact: int) -> Any:
    handle = await start(env, task_queue, flow, contact)
    return handle, await handle.result()


async def test_paths_holdout_replay_and_a_winner_decided_from_recorded_clicks(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    env = time_skipping_env
    flow = experiment_flow(winner=WINNER_BY_CLICKS)
    by_path: dict[int | None, list[int]] = {}
    for contact in contacts(engine):
        by_path.setdefault(path_of(flow, contact), []).append(contact)
    a, b, held = by_path[0][0], by_path[1][0], by_path[None][0]
    later = by_path[0][1]  # its share says A; the winner will say B

    # The clock moves only when told (env.sleep): the window is measured on it.
    with env.auto_time_skipping_disabled():
        async with build_worker(env.client, engine, task_queue=task_queue):
            handle_a, state_a = await run(env, task_queue, flow, a)
            _, state_b = await run(env, task_queue, flow, b)
            _, state_held = await run(env, task_queue, flow, held)
            # A second enrollment lands on the same path.
            _, again = await run(env, task_queue, flow, a)

            assert state_a.trail[0].outcome == f"experiment {EXPERIMENT!r}: path 'A' (40%)"
            assert [v.step for v in state_a.trail] == ["ab", "end-a"]
            assert [v.step for v in state_b.trail] == ["ab", "end-b"]
            assert [v.step for v in again.trail] == ["ab", "end-a"]
            assert state_held.status is ParticipantStatus.dropped_out
            assert state_held.drop_out_reason == "held out"

            # B's contact clicked a link of the flow's email; nobody on A did.
            with session(engine) as db:
                assigned_b = db.exec(
                    select(ExperimentAssignment).where(ExperimentAssignment.contact_id == b)
                ).one()
            clicked = assigned_b.assigned_at + timedelta(hours=1)
            recorded(engine, EventKind.link_clicked, b, clicked, flow_id=flow.id, step_id="mail")
            # Within the window no winner yet: the share decides.
            await env.sleep(timedelta(days=2))
            _, early = await run(env, task_queue, flow, later)
            assert [v.step for v in early.trail] == ["ab", "end-a"]
            await env.sleep(timedelta(days=2))
            _, decided = await run(env, task_queue, flow, later)

    assert [v.step for v in decided.trail] == ["ab", "end-b"]
    assert decided.trail[0].outcome.startswith(
        f"experiment {EXPERIMENT!r}: winner 'B' by clicks, decided "
    )
    assert decided.trail[0].outcome.endswith("holdout (control) 0/1 (0%), A 0/3 (0%), B 1/1 (100%)")
    with session(engine) as db:
        (decision,) = db.exec(select(ExperimentDecision)).all()
        rows = db.exec(select(ExperimentAssignment).order_by(col(ExperimentAssignment.id))).all()
    assert (decision.winner, decision.winner_name, decision.metric) == (1, "B", "clicks")
    assert decision.window_started_at == rows[0].assigned_at
    # Participants past the split keep their paths; only the last came by the winner.
    assert [(r.contact_id, r.path, r.by_winner) for r in rows] == [
        (a, 0, False),
        (b, 1, False),
        (held, None, False),
        (a, 0, False),
        (later, 0, False),
        (later, 1, True),
    ]

    # The first participant's history replays on the same path.
    history = await handle_a.fetch_history()
    replayer = Replayer(
        workflows=[ParticipantWorkflow],
        data_converter=DATA_CONVERTER,
        workflow_runner=workflow_runner(True),
    )
    await replayer.replay_workflow(history)

    # `starter.py stats` shows the paths and the decision.
    deploy_flow(engine, flow.model_dump(mode="json", by_alias=True))
    stats = flow_statistics(engine, flow, 1)
    (experiment,) = stats.experiments
    assert [(p.name, p.participants) for p in experiment.paths] == [
        ("holdout (control)", 1),
        ("A", 3),
        ("B", 2),
    ]
    assert experiment.decision is not None and experiment.decision.startswith("winner 'B'")
    assert f"experiment {EXPERIMENT!r} (step ab)" in render_table(stats)


def question(flow: Flow, contact: int, at: Any, key: str | None = None) -> ExperimentQuestion:
    split = flow.step("ab")
    assert isinstance(split, Split)
    return ExperimentQuestion(
        key=key or f"run-{uuid.uuid4()}/ab/1",
        flow_id=flow.id,
        time_zone=flow.time_zone,
        participant_id=f"run-{contact}",
        contact_id=contact,
        split=split,
        success=flow.success,
        at=at,
    )


def test_a_decision_is_made_once_and_everyone_agrees(engine: Engine) -> None:
    from models.database import utcnow

    flow = experiment_flow((50, 50), winner=WINNER_BY_CLICKS)
    activities = ExperimentActivities(engine)
    people = contacts(engine)
    first = utcnow()
    for contact in people[:4]:
        activities.choose_experiment_path(question(flow, contact, first))
    clicked = next(c for c in people[:4] if path_of(flow, c) == 0)
    recorded(engine, EventKind.link_clicked, clicked, first + timedelta(minutes=5), flow_id=flow.id)
    after = first + timedelta(days=3, minutes=1)
    # Two participants reach the split at once after the window: both take the one winner.
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(
            pool.map(
                activities.choose_experiment_path,
                [question(flow, c, after) for c in people[4:6]],
            )
        )
    assert [answer.path for answer in answers] == [0, 0]
    assert all("winner 'A' by clicks" in answer.outcome for answer in answers)
    # Written once: later clicks on B change nothing, and a retry gets its own answer back.
    for contact in people[:4]:
        if path_of(flow, contact) == 1:
            recorded(engine, EventKind.link_clicked, contact, after, flow_id=flow.id)
    key = "run-x/ab/1"
    answer = activities.choose_experiment_path(question(flow, people[6], after, key))
    retried = activities.choose_experiment_path(question(flow, people[6], after, key))
    assert answer == retried and answer.path == 0
    with session(engine) as db:
        assert len(db.exec(select(ExperimentDecision)).all()) == 1
        assert len(db.exec(select(ExperimentAssignment)).all()) == 7


@pytest.mark.parametrize("metric", ["opens", "success"])
def test_the_metric_reads_its_own_events(engine: Engine, metric: str) -> None:
    from models.database import utcnow

    success = {"criteria": [{"kind": "form_submitted", "form_id": 7}]}
    flow = flow_of([experiment_split((50, 50), winner={"metric": metric}), *STEPS], success=success)
    activities = ExperimentActivities(engine)
    people = contacts(engine)
    first = utcnow()
    for contact in people[:4]:
        activities.choose_experiment_path(question(flow, contact, first))
    on_b = next(c for c in people[:4] if path_of(flow, c) == 1)
    kind = EventKind.email_opened if metric == "opens" else EventKind.form_submitted
    fields: dict[str, Any] = {"flow_id": flow.id} if metric == "opens" else {"form_id": 7}
    recorded(engine, kind, on_b, first + timedelta(hours=1), **fields)
    answer = activities.choose_experiment_path(question(flow, people[4], first + timedelta(days=4)))
    assert answer.path == 1 and f"winner 'B' by {metric}" in answer.outcome
