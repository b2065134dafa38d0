"""A flow's lifecycle (spec §8): run, pause, resume, end, delete.

Pause, resume and end reach every participant of a flow through one Temporal batch operation
over a visibility query (``FlowId='…' AND ExecutionStatus='Running'``): the server fans the
signal or cancellation out, so ten thousand participants cost one request, not a Python loop.
Participants enrolled while the flow is paused start paused (see ``enroll``), which closes the
gap between a batch's query and a start that visibility has not indexed yet.

A resume offers the latest version; a participant whose current step is gone from it keeps its
own version (and its ``state`` says why). ``resume_flow`` asks every active participant afterwards
and reports how many took the new version and how many kept theirs, and why.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import col, delete, select
from temporalio.api.batch.v1 import BatchOperationCancellation, BatchOperationSignal
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import BatchOperationState
from temporalio.api.workflowservice.v1 import (
    DescribeBatchOperationRequest,
    StartBatchOperationRequest,
)
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from control.flows import UnknownFlow, load_flow, set_flow_status
from models.database import session
from models.engine import FlowRecord, FlowStatus, FlowVersion, Participant, ParticipantStatus
from models.participant import ParticipantState, Resume
from workflows.participant import ParticipantWorkflow

IDENTITY = "marketing-flows-starter"
# Asking participants their state after a resume: a few at a time, each answered by a worker.
ASK_CONCURRENCY = 32
ASK_TIMEOUT = timedelta(seconds=10)


class LifecycleError(Exception):
    """A lifecycle change the flow's status does not allow."""


@dataclass(frozen=True)
class BatchResult:
    flow_id: str
    status: FlowStatus
    reached: int  # participants the batch operation reached
    failed: int


@dataclass(frozen=True)
class ResumeResult(BatchResult):
    version: int  # the version the participants were offered
    took: int = 0  # active participants on that version now
    kept: Counter[tuple[int, str]] = field(default_factory=Counter)  # (kept version, why) -> n
    unanswered: int = 0  # active participants whose state could not be asked (no worker?)


def running_participants(flow_id: str) -> str:
    return f"FlowId='{flow_id}' AND ExecutionStatus='Running'"


async def _batch(
    client: Client,
    flow_id: str,
    reason: str,
    *,
    signal: BatchOperationSignal | None = None,
    cancel: bool = False,
    timeout: float = 60.0,
) -> tuple[int, int]:
    """Start a batch operation over the flow's running participants and wait for it."""
    job_id = f"{flow_id}-{reason.split()[0]}-{uuid.uuid4().hex[:8]}"
    request = StartBatchOperationRequest(
        namespace=client.namespace,
        visibility_query=running_participants(flow_id),
        job_id=job_id,
        reason=reason,
    )
    if signal is not None:
        request.signal_operation.CopyFrom(signal)
    if cancel:
        request.cancellation_operation.CopyFrom(BatchOperationCancellation(identity=IDENTITY))
    await client.workflow_service.start_batch_operation(request)
    describe = DescribeBatchOperationRequest(namespace=client.namespace, job_id=job_id)
    for _ in range(int(timeout / 0.2)):
        job = await client.workflow_service.describe_batch_operation(describe)
        if job.state != BatchOperationState.BATCH_OPERATION_STATE_RUNNING:
            return job.complete_operation_count, job.failure_operation_count
        await asyncio.sleep(0.2)
    raise LifecycleError(f"batch operation {job_id} still running after {timeout:.0f} s")


async def _signal(client: Client, flow_id: str, name: str, *args: object) -> tuple[int, int]:
    payloads = await client.data_converter.encode(list(args))
    signal = BatchOperationSignal(signal=name, input=Payloads(payloads=payloads), identity=IDENTITY)
    return await _batch(client, flow_id, f"{name} flow {flow_id}", signal=signal)


def run_flow(engine: Engine, flow_id: str) -> None:
    """Triggers on; participants may be enrolled."""
    stored = load_flow(engine, flow_id)
    if stored.status is FlowStatus.paused:
        raise LifecycleError(f"flow {flow_id!r} is paused: resume it instead")
    set_flow_status(engine, flow_id, FlowStatus.running)


async def pause_flow(client: Client, engine: Engine, flow_id: str) -> BatchResult:
    """Participants freeze where they are; new enrollees queue before the first step."""
    stored = load_flow(engine, flow_id)
    if stored.status is not FlowStatus.running:
        raise LifecycleError(f"flow {flow_id!r} is {stored.status}, not running")
    set_flow_status(engine, flow_id, FlowStatus.paused)
    reached, failed = await _signal(client, flow_id, "pause")
    return BatchResult(flow_id, FlowStatus.paused, reached, failed)


async def resume_flow(client: Client, engine: Engine, flow_id: str) -> ResumeResult:
    """Participants go on, with the latest version for the steps they have not reached yet;
    one whose current step is gone from it keeps its own. The result counts both, from what
    each active participant answers afterwards."""
    stored = load_flow(engine, flow_id)
    if stored.status is not FlowStatus.paused:
        raise LifecycleError(f"flow {flow_id!r} is {stored.status}, not paused")
    set_flow_status(engine, flow_id, FlowStatus.running)
    resume = Resume(flow=stored.flow, flow_version=stored.version)
    reached, failed = await _signal(client, flow_id, "resume", resume)
    took, unanswered, kept = 0, 0, Counter[tuple[int, str]]()
    for state in await _ask(client, await _active(client, engine, flow_id)):
        if state is None:
            unanswered += 1
        elif state.status is not ParticipantStatus.active:
            continue  # left since: neither took nor kept anything
        elif state.flow_version == stored.version:
            took += 1
        else:
            why = state.kept_version.reason if state.kept_version else "the resume did not reach it"
            kept[(state.flow_version, why)] += 1
    return ResumeResult(
        flow_id, FlowStatus.running, reached, failed, stored.version, took, kept, unanswered
    )


async def _active(client: Client, engine: Engine, flow_id: str) -> list[str]:
    """The participants to ask: active in the table, and running in Temporal's visibility (the
    batch's own selection), since a participant's first record may still be in its first step's
    activity."""

    def recorded() -> list[str]:
        with session(engine) as db:
            return list(
                db.exec(
                    select(Participant.workflow_id).where(
                        Participant.flow_id == flow_id,
                        Participant.status == ParticipantStatus.active.value,
                    )
                ).all()
            )

    running = [w.id async for w in client.list_workflows(running_participants(flow_id))]
    return sorted({*await asyncio.to_thread(recorded), *running})


async def _ask(client: Client, workflow_ids: list[str]) -> list[ParticipantState | None]:
    """Each participant's state, which a worker answers after the signals before the query; None
    for one that did not answer. After the first time-out (no worker polling?) the rest are not
    asked: they would wait as long for nothing."""
    gate = asyncio.Semaphore(ASK_CONCURRENCY)
    silent = asyncio.Event()

    async def ask(workflow_id: str) -> ParticipantState | None:
        async with gate:
            if silent.is_set():
                return None
            handle = client.get_workflow_handle_for(ParticipantWorkflow.run, workflow_id)
            try:
                return await handle.query(
                    ParticipantWorkflow.current_state, rpc_timeout=ASK_TIMEOUT
                )
            except WorkflowQueryFailedError:
                return None
            except RPCError as error:
                if error.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
                    silent.set()
                return None

    return list(await asyncio.gather(*(ask(w) for w in workflow_ids)))


async def end_flow(client: Client, engine: Engine, flow_id: str) -> BatchResult:
    """Triggers off; active participants become Cancelled (and stay so if the flow runs again)."""
    load_flow(engine, flow_id)
    set_flow_status(engine, flow_id, FlowStatus.not_running)
    reached, failed = await _batch(client, flow_id, f"end flow {flow_id}", cancel=True)
    return BatchResult(flow_id, FlowStatus.not_running, reached, failed)


def delete_flow(engine: Engine, flow_id: str) -> None:
    """Only a flow that is not running can be deleted; participants' rows stay as history."""
    with session(engine) as db:
        record = db.get(FlowRecord, flow_id)
        if record is None:
            raise UnknownFlow(f"no flow {flow_id!r} is deployed")
        if record.status != FlowStatus.not_running:
            raise LifecycleError(f"flow {flow_id!r} is {record.status}: end it before deleting")
        db.exec(delete(FlowVersion).where(col(FlowVersion.flow_id) == flow_id))
        db.delete(record)
