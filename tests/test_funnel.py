"""The funnel: per step in path order, who entered, went on, left (and why) and waits there, from
the step visits the participants' records write; per experiment path, the metric, the success
conversion and a confidence figure (time-skipping server, real database, Graphviz)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import starter
from activities.participants import ParticipantActivities, ParticipantRecord
from control.flows import deploy_flow
from control.ingest import record_event
from models.crm import Contact
from models.database import session, utcnow
from models.engine import Participant, ParticipantStatus, StepVisit
from models.events import EventKind, FlowEvent
from models.experiments import p_value, two_proportion_z
from models.participant import ParticipantState
from models.settings import Settings
from reports.funnel import funnel, path_order, render_funnel, to_chart
from testkit.servers import start_time_skipping_server
from testkit.waiting import assert_eventually
from tests.test_experiments import contacts, path_of
from tests.test_participant import flow_of, start
from worker import build_worker

FORM = 7
STEPS: list[dict[str, Any]] = [
    {
        "id": "ab",
        "type": "split",
        "basis": "experiment",
        "experiment": {"id": "funnel-test", "holdout_percent": 20},
        "branches": [
            {"name": "A", "percent": 40, "next": "ask"},
            {"name": "B", "percent": 40, "next": "linger"},
        ],
        "everyone_else": {},
    },
    {
        "id": "ask",
        "type": "wait_for_action",
        "actions": [{"kind": "form_submitted", "form_id": FORM}],
        "max_wait": {"amount": 1, "unit": "days"},
        "exit_on_timeout": True,
        "next": "end-a",
    },
    {"id": "linger", "type": "wait_time", "amount": 30, "unit": "days", "next": "end-b"},
    {"id": "end-b", "type": "finish"},
    {"id": "end-a", "type": "finish"},
]
SUCCESS = {"criteria": [{"kind": "form_submitted", "form_id": FORM}]}


def test_steps_in_path_order_branches_in_order_and_meeting_steps_after_them() -> None:
    flow = flow_of(STEPS, success=SUCCESS)
    assert path_order(flow) == ["ab", "ask", "end-a", "linger", "end-b"]
    # Two branches that meet: the meeting step after both; a loop back changes nothing.
    merged = flow_of(
        [
            {
                **STEPS[0],
                "branches": [
                    {**b, "next": n} for b, n in zip(STEPS[0]["branches"], ["x", "y"], strict=True)
                ],
            },
            {"id": "x", "type": "wait_time", "amount": 1, "unit": "days", "next": "meet"},
            {"id": "y", "type": "wait_time", "amount": 2, "unit": "days", "next": "meet"},
            {"id": "meet", "type": "wait_time", "amount": 1, "unit": "days", "next": "ab"},
            {"id": "elsewhere", "type": "finish"},
        ]
    )
    assert path_order(merged) == ["ab", "x", "y", "meet", "elsewhere"]


def _state(**fields: Any) -> ParticipantState:
    return ParticipantState(
        participant_id="run-1", flow_id="f", flow_version=1, contact_id=1, enrolled_at=utcnow()
    ).model_copy(update=fields)


def test_a_visit_is_written_once_per_step_entered_by_the_records(engine: Engine) -> None:
    """Records of one visit (its entry, its wait, a retry) write one visit; a participant that
    leaves after its step counted it (or before entering the next one) stays at that step."""
    record = ParticipantActivities(engine).record_participant
    record(ParticipantRecord(state=_state(current_step=None)))  # waits for a scheduled start
    record(ParticipantRecord(state=_state(current_step="mail")))
    record(ParticipantRecord(state=_state(current_step="mail")))  # retried
    record(ParticipantRecord(state=_state(current_step="wait", steps_taken=1)))
    record(ParticipantRecord(state=_state(current_step="wait", steps_taken=1, wait_until=utcnow())))
    # The wait is over and a leave signal comes before the next step is entered.
    left = _state(
        current_step="next",
        steps_taken=2,
        status=ParticipantStatus.dropped_out,
        drop_out_reason="r",
    )
    record(ParticipantRecord(state=left))
    with session(engine) as db:
        rows = db.exec(select(StepVisit).order_by(col(StepVisit.ordinal))).all()
    assert [(r.ordinal, r.step_id, r.flow_id) for r in rows] == [(0, "mail", "f"), (1, "wait", "f")]


@pytest.fixture(scope="module")
async def funnel_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own: the participants it leaves waiting would
    keep the session's server from skipping time for the tests after it."""
    env = await start_time_skipping_server()
    yield env
    await env.shutdown()


async def test_the_funnel_of_an_experiment_from_real_participants(
    funnel_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    tmp_path: Path,
    settings_env: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = funnel_env
    flow = flow_of(STEPS, success=SUCCESS)
    with session(engine) as db:
        retired = [c.id for c in db.exec(select(Contact).where(Contact.retired)).all()]
    groups: dict[int | None, list[int]] = {}
    for contact in contacts(engine):
        if contact not in retired:  # leaves at its first step as a former employee
            groups.setdefault(path_of(flow, contact), []).append(contact)
    held, on_a, on_b = groups[None], groups[0], groups[1]
    assert len(held) >= 2 and len(on_a) >= 2 and on_b  # the demo CRM's eight contacts

    handles: dict[int, WorkflowHandle[Any, ParticipantState]] = {}
    with env.auto_time_skipping_disabled():
        async with build_worker(env.client, engine, task_queue=task_queue):
            for contact in contacts(engine):
                handles[contact] = await start(env, task_queue, flow, contact)

            async def settled() -> bool:
                with session(engine) as db:
                    rows = db.exec(select(Participant).where(Participant.flow_id == flow.id))
                    waiting = [r for r in rows if r.wait_until is not None or r.finished_at]
                return len(waiting) == len(handles)

            await assert_eventually(settled)
            # One on A submits the form and goes on; one held out submits it too (a success
            # from anyone counts for its group); the rest of A gives up after a day.
            now = await env.get_current_time()
            for contact in (on_a[0], held[0]):
                event = FlowEvent(
                    event_id=str(uuid.uuid4()),
                    kind=EventKind.form_submitted,
                    contact_id=contact,
                    occurred_at=now,
                    form_id=FORM,
                )
                record_event(engine, event)
                if contact == on_a[0]:
                    await handles[contact].signal("event", event)
            assert (
                await handles[on_a[0]].result()
            ).status is ParticipantStatus.finished_with_success
            await env.sleep(timedelta(days=2))
            for contact in on_a[1:]:
                assert (await handles[contact].result()).drop_out_reason == "no response"

    shown = funnel(engine, flow, 1)
    steps = {s.step_id: s for s in shown.steps}
    assert [s.step_id for s in shown.steps] == ["ab", "ask", "end-a", "linger", "end-b"]
    assert (shown.enrolled, shown.before_first_step, shown.unrecorded) == (len(handles), 0, 0)
    ab, ask, end_a, linger, end_b = (steps[s] for s in ("ab", "ask", "end-a", "linger", "end-b"))
    assert (ab.entered, ab.went_on, ab.waiting) == (len(handles), len(on_a) + len(on_b), 0)
    assert ab.drop_out_reasons == {"held out": len(held), "former employee": len(retired)}
    assert ab.dropped_out == len(held) + len(retired)
    assert ab.went_to == {"ask": len(on_a), "linger": len(on_b)}
    assert (ask.entered, ask.went_on, ask.waiting, ask.finished) == (len(on_a), 1, 0, 0)
    assert ask.drop_out_reasons == {"no response": len(on_a) - 1}
    assert (end_a.entered, end_a.finished, end_a.went_on, end_a.dropped_out) == (1, 1, 0, 0)
    assert (linger.entered, linger.waiting, linger.went_on) == (len(on_b), len(on_b), 0)
    assert (end_b.entered, end_b.waiting, end_b.finished) == (0, 0, 0)

    (experiment,) = shown.experiments
    assert experiment.baseline == "holdout (control)" and experiment.metric.value == "clicks"
    paths = {p.name: p for p in experiment.paths}
    assert [(p.name, p.participants) for p in experiment.paths] == [
        ("holdout (control)", len(held)),
        ("A", len(on_a)),
        ("B", len(on_b)),
    ]
    holdout, a, b = paths["holdout (control)"], paths["A"], paths["B"]
    assert holdout.success is not None and a.success is not None and b.success is not None
    assert (holdout.success.converted, a.success.converted, b.success.converted) == (1, 1, 0)
    assert holdout.success.confidence is None  # the baseline itself
    z = two_proportion_z(0, len(on_b), 1, len(held))
    assert z is not None and b.success.z == pytest.approx(z)
    assert b.success.confidence == pytest.approx(1 - p_value(z))
    assert a.metric.converted == 0 and a.metric.confidence is None  # nobody clicked: undefined

    text = render_funnel(shown)
    assert "dropped out: held out" in text and "dropped out: no response" in text
    assert "experiment 'funnel-test' (step ab)" in text

    # `starter.py stats FLOW --funnel --json` and `--png`.
    deploy_flow(engine, flow.model_dump(mode="json", by_alias=True))
    settings_env(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    capsys.readouterr()  # what the worker said
    assert starter.main(["stats", flow.id, "--funnel", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"][1]["drop_out_reasons"] == {"no response": len(on_a) - 1}
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed: the chart is not drawn")
    chart = tmp_path / "funnel.png"
    assert starter.main(["stats", flow.id, "--funnel", "--png", str(chart)]) == 0
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert "entered 1" in to_chart(shown, flow).source
