"""Re-entry rules, enforced alike by manual enrollment and by triggers (real dev server): only
once ever, again after leaving, again after a cool-down, or restart an active participant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from control.enrollment import RESTARTED, enroll
from control.ingest import ingest
from models.database import session
from models.engine import Participant, ParticipantStatus
from models.events import EventKind
from models.participant import participant_workflow_id
from models.validation import check_flow
from testkit.waiting import assert_eventually
from tests.test_events import (
    DONE,
    FORM_ID,
    KARIN,
    WAIT,
    event_of,
    flow_document,
    participant_status,
    running_flow,
    worker,
)

__all__ = ["worker"]  # the fixture, from the events tests

PATHS = ("manual", "trigger")


async def enter(
    path: str, env: WorkflowEnvironment, engine: Engine, flow_id: str, task_queue: str
) -> str | None:
    """Enroll KARIN by hand or by a form submission: None if enrolled, else the reason."""
    if path == "manual":
        report = await enroll(env.client, engine, flow_id, [KARIN], task_queue=task_queue)
        return None if KARIN in report.enrolled else report.refused[KARIN]
    event = event_of(EventKind.form_submitted, KARIN, form_id=FORM_ID)
    ingested = await ingest(env.client, engine, event, task_queue=task_queue)
    return None if flow_id in ingested.enrolled else ingested.refused[flow_id]


def flow_with(steps: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    triggers = [{"kind": "form_submitted", "form_id": FORM_ID}]
    return flow_document("reentry", steps, triggers=triggers, **settings)


def rows(engine: Engine, flow_id: str) -> list[Participant]:
    with session(engine) as db:
        found = db.exec(select(Participant).where(Participant.flow_id == flow_id)).all()
    return sorted(found, key=lambda row: row.enrolled_at)


def test_the_rules_are_validated_by_field() -> None:
    document = flow_with([DONE], reentry={"rule": "after_cooldown"})
    assert [(p.field, p.message) for p in check_flow(document).errors] == [
        ("reentry.cooldown_days", "cooldown_days goes with rule after_cooldown")
    ]
    document = flow_with([DONE], only_once=True, reentry={"rule": "restart"})
    assert [(p.field, p.message) for p in check_flow(document).errors] == [
        ("reentry", "only_once says once: drop one of the two")
    ]


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("path", PATHS)
async def test_only_once_ever(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, path: str
) -> None:
    flow_id = running_flow(engine, flow_with([DONE], reentry={"rule": "once"}))
    assert await enter(path, dev_env, engine, flow_id, task_queue) is None
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.finished.value)
    reason = await enter(path, dev_env, engine, flow_id, task_queue)
    assert reason == "already took part, and the flow allows it only once"


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("path", PATHS)
async def test_again_after_leaving_but_never_active_twice(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, path: str
) -> None:
    waits = running_flow(engine, flow_with([WAIT, DONE]))
    assert await enter(path, dev_env, engine, waits, task_queue) is None
    await participant_status(engine, waits, KARIN, ParticipantStatus.active.value)
    assert await enter(path, dev_env, engine, waits, task_queue) == "already active in this flow"

    passes = running_flow(engine, flow_with([DONE]))
    assert await enter(path, dev_env, engine, passes, task_queue) is None
    await participant_status(engine, passes, KARIN, ParticipantStatus.finished.value)
    assert await enter(path, dev_env, engine, passes, task_queue) is None

    async def finished() -> list[str]:
        return [row.status for row in rows(engine, passes)]

    done = ParticipantStatus.finished.value
    await assert_eventually(finished, until=lambda found: found == [done, done])


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("path", PATHS)
async def test_again_after_a_cool_down(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, path: str
) -> None:
    document = flow_with([DONE], reentry={"rule": "after_cooldown", "cooldown_days": 30})
    flow_id = running_flow(engine, document)
    assert await enter(path, dev_env, engine, flow_id, task_queue) is None
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.finished.value)
    reason = await enter(path, dev_env, engine, flow_id, task_queue)
    assert reason is not None
    assert reason.startswith("left the flow ") and reason.endswith("(a cool-down of 30 days)")
    # The participant left 31 days ago: it may come back.
    with session(engine) as db:
        (row,) = db.exec(select(Participant).where(Participant.flow_id == flow_id)).all()
        row.finished_at = datetime.now(UTC) - timedelta(days=31)
        db.add(row)
    assert await enter(path, dev_env, engine, flow_id, task_queue) is None


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("path", PATHS)
async def test_restart_replaces_an_active_participant(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, path: str
) -> None:
    flow_id = running_flow(engine, flow_with([WAIT, DONE], reentry={"rule": "restart"}))
    assert await enter(path, dev_env, engine, flow_id, task_queue) is None
    await participant_status(engine, flow_id, KARIN, ParticipantStatus.active.value)
    (first,) = rows(engine, flow_id)

    if path == "manual":
        report = await enroll(dev_env.client, engine, flow_id, [KARIN], task_queue=task_queue)
        assert (report.enrolled, report.restarted) == ([KARIN], [KARIN])
    else:
        assert await enter(path, dev_env, engine, flow_id, task_queue) is None

    handle = dev_env.client.get_workflow_handle(participant_workflow_id(flow_id, KARIN))
    description = await handle.describe()
    assert description.status is WorkflowExecutionStatus.RUNNING
    assert description.run_id != first.id
    old = await dev_env.client.get_workflow_handle(
        participant_workflow_id(flow_id, KARIN), run_id=first.id
    ).describe()
    assert old.status is WorkflowExecutionStatus.TERMINATED

    async def statuses() -> dict[str, str]:
        return {row.id: row.status for row in rows(engine, flow_id)}

    await assert_eventually(statuses, until=lambda found: found.get(description.run_id) == "Active")
    replaced = next(row for row in rows(engine, flow_id) if row.id == first.id)
    assert (replaced.status, replaced.drop_out_reason) == (
        ParticipantStatus.dropped_out.value,
        RESTARTED,
    )
