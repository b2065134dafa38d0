"""run_script: the script runs as its own workflow; the participant moves on once it has started,
and the script's failure never reaches the participant."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import Engine
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import scripts
from models.engine import ParticipantStatus
from models.participant import ParticipantState
from models.validation import check_flow
from scripts import Script, ScriptContext, register, registered_scripts, unregister, webhook
from testkit.servers import free_port
from testkit.waiting import assert_eventually
from tests.test_message_steps import contact_named
from tests.test_participant import flow_of, start
from worker import build_worker

RESULT_TIMEOUT = 60  # seconds of real time


class Gate:
    """A script that waits until the test lets it finish, remembering what it was given."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.contexts: list[ScriptContext] = []

    async def __call__(self, context: ScriptContext) -> str:
        self.contexts.append(context)
        await self.opened.wait()
        return f"done for contact {context.contact_id}"


async def broken(context: ScriptContext) -> None:
    raise RuntimeError("the portal is down")


@pytest.fixture
def gate() -> Iterator[Gate]:
    script = Gate()
    register(Script("test_gate", script, timeout=timedelta(minutes=5), attempts=1))
    register(Script("test_broken", broken, timeout=timedelta(seconds=10), attempts=2))
    yield script
    unregister("test_gate")
    unregister("test_broken")


def script_flow(script: str, *after: dict[str, Any]) -> Any:
    steps: list[dict[str, Any]] = [
        {"id": "run", "type": "run_script", "next": after[0]["id"] if after else "done"},
        *after,
        {"id": "done", "type": "finish"},
    ]
    steps[0]["script"] = script
    return flow_of(steps)


def script_handle(env: WorkflowEnvironment, state: ParticipantState) -> WorkflowHandle[Any, str]:
    outcome = state.trail[0].outcome
    script_id = outcome[outcome.index("(") + 1 : -1]
    assert script_id == f"script-{state.participant_id}/run/1"
    return env.client.get_workflow_handle(script_id, result_type=str)


async def test_the_participant_finishes_while_the_script_still_runs(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, gate: Gate
) -> None:
    karin = contact_named(engine, "Karin")
    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        participant = await start(dev_env, task_queue, script_flow("test_gate"), karin)
        state = await asyncio.wait_for(participant.result(), RESULT_TIMEOUT)
        assert state.status is ParticipantStatus.finished
        assert state.trail[0].outcome.startswith("script 'test_gate' started")

        script = script_handle(dev_env, state)

        async def script_is_running() -> bool:
            return bool(gate.contexts)

        await assert_eventually(script_is_running, timeout=20, what="the script to start")
        # The participant is done; the script is still inside its callable, waiting.
        assert (await participant.describe()).status is WorkflowExecutionStatus.COMPLETED
        description = await script.describe()
        assert description.status is WorkflowExecutionStatus.RUNNING
        assert description.parent_id == participant.id

        gate.opened.set()
        assert await asyncio.wait_for(script.result(), RESULT_TIMEOUT) == (
            f"done for contact {karin}"
        )

    (context,) = gate.contexts
    assert (context.flow_id, context.step_id, context.contact_id) == ("test-flow", "run", karin)
    assert context.run_key == f"{state.participant_id}/run/1"
    assert context.contact["contact.first_name"] == "Karin"
    assert context.contact["company.name"] == "Nordljus AB"


async def test_a_failing_script_leaves_the_participant_unharmed(
    time_skipping_env: WorkflowEnvironment, engine: Engine, task_queue: str, gate: Gate
) -> None:
    # The participant sleeps a day after starting the script, so the script fails (twice, then
    # for good) while the participant is still running.
    pause = {"id": "pause", "type": "wait_time", "amount": 1, "unit": "days", "next": "done"}
    flow = script_flow("test_broken", pause)
    async with build_worker(time_skipping_env.client, engine, task_queue=task_queue):
        participant = await start(
            time_skipping_env, task_queue, flow, contact_named(engine, "Lars")
        )
        state = await asyncio.wait_for(participant.result(), RESULT_TIMEOUT)
        script = script_handle(time_skipping_env, state)
        description = await script.describe()

    assert state.status is ParticipantStatus.finished
    assert [v.step for v in state.trail] == ["run", "pause", "done"]
    assert description.status is WorkflowExecutionStatus.FAILED
    history = [e async for e in script.fetch_history_events()]
    failures = [
        e.activity_task_failed_event_attributes
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert failures[-1].failure.message == "the portal is down"
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts[-1] == 2  # the script's own retry policy: two attempts
    # The failure reached the participant's history while it slept, and changed nothing there.
    participant_events = [e.event_type async for e in participant.fetch_history_events()]
    child_failed = participant_events.index(EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED)
    assert child_failed < participant_events.index(EventType.EVENT_TYPE_TIMER_FIRED)
    assert participant_events[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED


@pytest.fixture
async def hook_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="queued")

    app = web.Application()
    app.router.add_post("/hooks/flow", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hooks/flow", received
    await runner.cleanup()


async def test_a_webhook_script_posts_the_context(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    hook_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = hook_server
    webhook("test_hook", url)
    try:
        karin = contact_named(engine, "Karin")
        async with build_worker(dev_env.client, engine, task_queue=task_queue):
            participant = await start(dev_env, task_queue, script_flow("test_hook"), karin)
            state = await asyncio.wait_for(participant.result(), RESULT_TIMEOUT)
            result = await asyncio.wait_for(script_handle(dev_env, state).result(), RESULT_TIMEOUT)
    finally:
        unregister("test_hook")
    assert result == "200 queued"
    (posted,) = received
    assert (posted["contact_id"], posted["step_id"]) == (karin, "run")
    assert posted["contact"]["contact.email"] == "karin.svensson@example.com"


# --- registering and naming scripts ------------------------------------------------------------


def test_an_unknown_script_name_is_a_validation_error() -> None:
    names = registered_scripts()
    document = script_flow("no_such_script").model_dump(mode="json", by_alias=True)
    report = check_flow(document, known_scripts=names)
    (problem,) = report.problems
    assert (problem.level, problem.step, problem.field) == ("error", "run", "script")
    assert problem.message.startswith("no script named 'no_such_script' (known: ")
    assert "sync_webinar_attendee" in problem.message
    document = script_flow("sync_webinar_attendee").model_dump(mode="json", by_alias=True)
    known = check_flow(document, known_scripts=names)
    assert known.problems == [] and known.can_run
    # Without the names (models know no registry), script names are left to whoever has them.
    assert check_flow(script_flow("no_such_script").model_dump(mode="json", by_alias=True)).can_run


def test_scripts_come_from_the_package_and_from_entry_points(tmp_path: Path) -> None:
    assert "sync_webinar_attendee" in registered_scripts()
    (tmp_path / "flow_extras.py").write_text(
        "async def enrich(context):\n    return context.contact_id\n"
    )
    dist = tmp_path / "flow_extras-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flow-extras\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{scripts.ENTRY_POINT_GROUP}]\nenrich_lead = flow_extras:enrich\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        scripts.discover_scripts()
        entry = registered_scripts()["enrich_lead"]
    finally:
        sys.path.remove(str(tmp_path))
        unregister("enrich_lead")
    assert (entry.kind, entry.timeout, entry.attempts) == ("python", timedelta(minutes=5), 5)


def test_two_scripts_cannot_share_a_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(Script("sync_webinar_attendee", broken))


def test_the_context_is_json() -> None:
    context = ScriptContext(
        run_key="p/s/1",
        flow_id="f",
        flow_name="F",
        step_id="s",
        step_name=None,
        contact_id=1,
        contact={"contact.first_name": "Karin", "contact.selections": [1, 2]},
    )
    assert json.loads(context.model_dump_json())["contact"]["contact.selections"] == [1, 2]
