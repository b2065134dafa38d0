"""Record the participant histories that tests/test_replay.py replays.

    make record-histories          (python -m tests.record_histories)

Re-record only on purpose: a recorded history is the promise that workflow code changes stay
compatible with participants already running. Commit a new file beside the old ones rather
than overwriting, unless the old history is truly obsolete.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from models.database import create_tables, get_engine, session
from models.demo import seed_demo
from models.flow import Flow
from models.participant import Enrollment
from models.search_attributes import register_search_attributes
from worker import build_worker
from workflows.participant import ParticipantWorkflow

HISTORIES = Path(__file__).parent / "histories"
TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"

# Every runnable step kind, a working-days wait, an everyone-else branch and continue-as-new.
RECORDED: dict[str, dict[str, object]] = {
    "participant_v1": {
        "id": "recorded",
        "name": "Recorded",
        "time_zone": "Europe/Stockholm",
        "start": "wait",
        "steps": [
            {
                "id": "wait",
                "type": "wait_time",
                "amount": 2,
                "unit": "working_days",
                "next": "split",
            },
            {
                "id": "split",
                "type": "split",
                "branches": [
                    {
                        "name": "Customers",
                        "next": "add",
                        "criteria": {
                            "conditions": [
                                {
                                    "field": "company.category",
                                    "operator": "equals",
                                    "value": "Customer",
                                }
                            ]
                        },
                    }
                ],
                "everyone_else": {"next": "add"},
            },
            {"id": "add", "type": "add_to_list", "selection_id": 2, "next": "remove"},
            {"id": "remove", "type": "remove_from_list", "selection_id": 2, "next": "done"},
            {"id": "done", "type": "finish", "add_to_selection": 2},
        ],
    }
}


async def record(name: str, document: dict[str, object]) -> Path:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=str(TEST_SERVER)
    )
    await register_search_attributes(env.client)
    with tempfile.TemporaryDirectory() as folder:
        engine = get_engine(f"sqlite:///{folder}/record.db")
        create_tables(engine)
        with session(engine) as db:
            seed_demo(db)
        task_queue = f"record-{uuid.uuid4()}"
        async with build_worker(env.client, engine, task_queue=task_queue):
            handle = await env.client.start_workflow(
                ParticipantWorkflow.run,
                Enrollment(flow=Flow.model_validate(document), flow_version=1, contact_id=1),
                id=f"flow-recorded-contact-1-{name}",
                task_queue=task_queue,
            )
            await handle.result()
        history = await handle.fetch_history()
        engine.dispose()
    await env.shutdown()
    path = HISTORIES / f"{name}.json"
    path.write_text(history.to_json())
    return path


async def main() -> None:
    HISTORIES.mkdir(exist_ok=True)
    for name, document in RECORDED.items():
        print(f"recorded {await record(name, document)}")


if __name__ == "__main__":
    asyncio.run(main())
