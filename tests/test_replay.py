"""Recorded participant histories replay against the current workflow code.

A failure here means a change to workflow code would break participants already running: guard
the change with ``workflow.patched`` (see README, "Changing workflow code"). Re-record with
``make record-histories`` only when a history is truly obsolete.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.participant import ParticipantWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_recorded_histories() -> None:
    assert HISTORIES, "no recorded histories under tests/histories"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[ParticipantWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


async def test_a_changed_flow_is_caught() -> None:
    """The replayer really checks: the same history, started at another step, fails to replay."""
    path = HISTORIES[0]
    document = json.loads(path.read_text())
    started = document["events"][0]["workflowExecutionStartedEventAttributes"]
    payload = started["input"]["payloads"][0]
    enrollment = json.loads(base64.b64decode(payload["data"]))
    enrollment["flow"]["start"] = "split"
    payload["data"] = base64.b64encode(json.dumps(enrollment).encode()).decode()
    history = WorkflowHistory.from_json(path.stem, json.dumps(document))
    replayer = Replayer(workflows=[ParticipantWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
