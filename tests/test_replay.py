"""The replay corpus: recorded histories replay against the current workflow code.

A failure here means a change to workflow code would break participants already running: guard
the change with ``workflow.patched`` (see README, "Changing workflow code"). Histories are never
re-recorded: new behaviour gets a new scenario in ``tests/record_histories.py``, recorded beside
the old ones with ``make record-histories``.

The corpus must stay complete: every step kind of the ``Step`` union has a history that ran it
(read from the history itself, not from the manifest's word), and every scenario on the
manifest's required list has a history that covers it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from models.flow import STEP_KINDS
from models.payloads import DATA_CONVERTER
from workflows.participant import ParticipantWorkflow
from workflows.sandbox import workflow_runner
from workflows.script import ScriptWorkflow

FOLDER = Path(__file__).parent / "histories"
MANIFEST: dict[str, Any] = json.loads((FOLDER / "manifest.json").read_text())
HISTORIES = sorted(FOLDER.glob("*.json"))
HISTORIES.remove(FOLDER / "manifest.json")


def _replayer(sandboxed: bool = True) -> Replayer:
    return Replayer(
        workflows=[ParticipantWorkflow, ScriptWorkflow],
        data_converter=DATA_CONVERTER,
        workflow_runner=workflow_runner(sandboxed),
    )


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandboxed", "unsandboxed"])
@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path, sandboxed: bool) -> None:
    """Under the sandbox, which the tests run (it refuses non-deterministic calls), and without,
    as the worker runs by default."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await _replayer(sandboxed).replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


async def test_a_changed_flow_is_caught() -> None:
    """The replayer really checks: the same history, started at another step, fails to replay."""
    path = FOLDER / "participant_v1.json"
    document = json.loads(path.read_text())
    payload = _started(document)["input"]["payloads"][0]
    enrollment = json.loads(base64.b64decode(payload["data"]))
    enrollment["flow"]["start"] = "split"
    payload["data"] = base64.b64encode(json.dumps(enrollment).encode()).decode()
    history = WorkflowHistory.from_json(path.stem, json.dumps(document))
    result = await _replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None


# --- the corpus is complete --------------------------------------------------------------------


def test_every_history_file_is_in_the_manifest_and_every_listed_file_exists() -> None:
    listed = [name for entry in MANIFEST["histories"] for name in entry["files"]]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert sorted(listed) == sorted(path.name for path in HISTORIES)


def test_every_required_scenario_has_a_history() -> None:
    covered = {scenario for entry in MANIFEST["histories"] for scenario in entry["covers"]}
    missing = sorted(set(MANIFEST["required"]) - covered)
    assert not missing, f"required scenarios without a recorded history: {missing}"


def _started(document: dict[str, Any]) -> dict[str, Any]:
    started: dict[str, Any] = document["events"][0]["workflowExecutionStartedEventAttributes"]
    return started


def _decoded(payload: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(payload["data"]))


def _kinds_run(document: dict[str, Any]) -> Iterator[str]:
    """The kinds of the steps a participant history entered: each entry upserts the FlowStep
    search attribute with the step id; the flow documents (the input and any resumed version)
    say the step's kind."""
    started = _started(document)
    if started["workflowType"]["name"] != ParticipantWorkflow.__name__.removesuffix("Workflow"):
        return
    flows = [_decoded(started["input"]["payloads"][0])["flow"]]
    for event in document["events"]:
        signal = event.get("workflowExecutionSignaledEventAttributes")
        if signal is not None and signal["signalName"] == "resume":
            resumed = _decoded(signal["input"]["payloads"][0]).get("flow")
            if resumed is not None:
                flows.append(resumed)
    kind_of = {step["id"]: step["type"] for flow in flows for step in flow["steps"]}
    for event in document["events"]:
        upsert = event.get("upsertWorkflowSearchAttributesEventAttributes")
        if upsert is None:
            continue
        step = upsert["searchAttributes"]["indexedFields"].get("FlowStep")
        if step is not None:
            yield kind_of[_decoded(step)]


def test_every_step_kind_has_a_history_that_ran_it() -> None:
    ran = {kind for path in HISTORIES for kind in _kinds_run(json.loads(path.read_text()))}
    missing = sorted(set(STEP_KINDS) - ran)
    assert not missing, (
        f"step kinds no recorded history runs: {missing}; add a scenario to "
        "tests/record_histories.py and run `make record-histories`"
    )


def test_the_kind_check_reads_the_histories() -> None:
    """The check above really looks: a history whose steps are renamed runs no known kind."""
    document = json.loads((FOLDER / "crm_steps.json").read_text())
    assert set(_kinds_run(document)) >= {"create_sale", "run_script", "distribute_to_owner"}
    for event in document["events"]:
        upsert = event.get("upsertWorkflowSearchAttributesEventAttributes")
        if upsert is not None and "FlowStep" in upsert["searchAttributes"]["indexedFields"]:
            upsert["searchAttributes"]["indexedFields"].pop("FlowStep")
    assert set(_kinds_run(document)) == set()
