"""`starter.py` as people run it: a process per command against a real dev server, several times
over. Each command exits with the status that says what happened, and exits cleanly: it has let
go of every thread it started (the main thread alone is left), so none is running when the
interpreter shuts down, which aborted the process ("Fatal Python error") after its work was done."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
# The command, then how many threads the process has left (Linux): the main thread alone, once
# the command has closed what it opened, unless a Temporal runtime is still held, in which case
# exit_process leaves without the interpreter's shutdown that its threads could abort.
COUNTING = (
    "import os, sys, starter; code = starter.main(sys.argv[1:]); "
    "print('threads left:', len(os.listdir('/proc/self/task')), "
    "'(a runtime still held)' if starter.Resources.lingering() else ''); "
    "starter.exit_process(code)"
)


async def starter(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *(["-c", COUNTING] if Path("/proc/self/task").is_dir() else [str(ROOT / "starter.py")]),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_commands_exit_with_their_status_and_cleanly(
    dev_env: WorkflowEnvironment, engine: Engine, backend: str, task_queue: str, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("how a process exits does not depend on the database: SQLite is enough")
    flow_id = f"exit-{uuid.uuid4().hex[:8]}"
    document = {
        "id": flow_id,
        "name": "Exit",
        "start": "long",
        "steps": [
            {"id": "long", "type": "wait_time", "amount": 10, "unit": "days", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
    }
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(document))
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        TASK_QUEUE=task_queue,
    )
    ran: list[tuple[list[str], int]] = []

    async def expect(status: int, *args: str) -> str:
        code, out, err = await starter(env, *args)
        ran.append(([*args], code))
        assert "Fatal Python error" not in err, (args, err)
        assert code == status, (args, code, out, err)
        if Path("/proc/self/task").is_dir():
            assert "threads left: 1 " in out or "(a runtime still held)" in out, (args, out)
        return out

    async with build_worker(dev_env.client, engine, task_queue=task_queue):
        await expect(2, "validate", str(tmp_path / "missing.json"))
        await expect(2, "start", flow_id)  # nobody named
        await expect(1, "pause", "no-such-flow")
        await expect(0, "deploy", str(path))
        await expect(0, "start", flow_id, "--contact", "1", "2")
        out = await expect(3, "start", flow_id, "--contact", "1", "2")
        assert "enrolled 0 of 2" in out and "already active in this flow" in out
        for _ in range(ROUNDS):
            await expect(0, "pause", flow_id)
            out = await expect(0, "resume", flow_id)
            assert "2 took version 1, 0 kept the version they had" in out
            out = await expect(0, "simulate", flow_id, "--contact", "1")
            assert "■ Finished" in out
        await expect(0, "end", flow_id)
    assert len(ran) == 7 + 3 * ROUNDS
