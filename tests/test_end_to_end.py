"""The real dev server: deploy, enroll through the starter, watch participants finish."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

import starter
from control.enrollment import enroll
from control.flows import deploy_flow
from models.demo import DEMO_SELECTION_ID
from models.engine import Participant
from models.settings import Settings
from testkit.waiting import assert_eventually
from worker import build_worker

FLOW = {
    "id": "e2e",
    "name": "End to end",
    "time_zone": "Europe/Stockholm",
    "start": "pause",
    "steps": [
        {"id": "pause", "type": "wait_time", "amount": 1, "unit": "minutes", "next": "sort"},
        {
            "id": "sort",
            "type": "split",
            "basis": "selection",
            "branches": [{"name": "Demo", "next": "tag", "selection_id": DEMO_SELECTION_ID}],
            "everyone_else": {},
        },
        {"id": "tag", "type": "add_to_list", "project_id": 1, "next": "done"},
        {"id": "done", "type": "finish"},
    ],
}


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    settings_env: Callable[..., Settings],
    engine: Engine,
    dev_env: WorkflowEnvironment,
    task_queue: str,
) -> None:
    settings_env(
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
    )
    monkeypatch.setattr(starter, "TASK_QUEUE", task_queue)


async def _statuses(engine: Engine, flow_id: str) -> dict[int, str]:
    def read() -> dict[int, str]:
        from models.database import session

        with session(engine) as db:
            rows = db.exec(select(Participant).where(Participant.flow_id == flow_id)).all()
        return {row.contact_id: row.status for row in rows}

    return await asyncio.to_thread(read)


@pytest.mark.usefixtures("cli_env")
async def test_deploy_start_and_status_through_the_starter(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A wait until a moment already past: participants go straight on, on the real clock.
    document = json.loads(json.dumps(FLOW))
    document["steps"][0] = {
        "id": "pause",
        "type": "wait_time",
        "mode": "until",
        "until": "2000-01-01T00:00:00",
        "next": "sort",
    }
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(document))
    assert await asyncio.to_thread(starter.main, ["deploy", str(path)]) == 0
    assert await asyncio.to_thread(starter.main, ["deploy", str(path)]) == 0
    assert "already this document" in capsys.readouterr().out

    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        assert (
            await asyncio.to_thread(
                starter.main, ["start", "e2e", "--selection", str(DEMO_SELECTION_ID)]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert "enrolled 6 of 6" in out
        await assert_eventually(
            lambda: _statuses(engine, "e2e"),
            until=lambda statuses: len(statuses) == 6 and set(statuses.values()) == {"Finished"},
            what="all six finished",
        )

    assert await asyncio.to_thread(starter.main, ["status", "e2e"]) == 0
    out = capsys.readouterr().out
    assert "6 participants" in out and "Finished" in out


async def test_participants_are_found_by_flow_and_step_and_never_enrolled_twice(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    document = json.loads(json.dumps(FLOW))
    document["id"] = "e2e-visibility"
    document["steps"][0].update(amount=5, unit="days")
    deployed = deploy_flow(engine, document)
    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        first = await enroll(
            dev_env.client, engine, deployed.flow_id, [1, 2, 3], task_queue=task_queue
        )
        again = await enroll(
            dev_env.client, engine, deployed.flow_id, [3, 4], task_queue=task_queue
        )
        assert first.enrolled == [1, 2, 3]
        assert again.enrolled == [4]
        assert again.refused == {3: "already active in this flow"}

        query = f"FlowId='{deployed.flow_id}' AND FlowStep='pause' AND ExecutionStatus='Running'"
        expected = [f"flow-e2e-visibility-contact-{c}" for c in (1, 2, 3, 4)]

        async def found() -> list[str]:
            return sorted([w.id async for w in dev_env.client.list_workflows(query)])

        # Visibility is eventually consistent.
        await assert_eventually(found, until=expected.__eq__, what="the four by flow and step")
        for workflow_id in expected:
            await dev_env.client.get_workflow_handle(workflow_id).terminate("test over")
