"""The dry run itself: one contact through a flow on Temporal's time-skipping test server.

The real ``ParticipantWorkflow`` runs against the stand-ins (``control.dry_run.stand_ins``), so
waits, working days, sending windows and branches behave exactly as in production while months
pass in seconds. Planned events (``control.dry_run.events``) are signalled at their moments, as
the events service would; child workflows a step starts (``run_script``) run too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from control.dry_run.events import PlannedEvent
from control.dry_run.stand_ins import Capture
from control.dry_run.timeline import DryRun, build_timeline
from control.enrollment import EVENT_SIGNAL
from control.flows import FlowRejected, load_flow
from models import schedule
from models import search_attributes as sa
from models.crm import Contact
from models.database import session
from models.participant import Enrollment, ParticipantState
from models.payloads import DATA_CONVERTER
from models.personal_data import short_name
from models.search_attributes import register_search_attributes
from models.sending import CHANNELS, channel_task_queue
from models.validation import check_flow
from scripts import registered_scripts
from workflows.participant import BEHAVIOUR, ParticipantWorkflow
from workflows.script import ScriptWorkflow

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"
WALL_LIMIT = 120.0  # seconds; a 90-day flow takes a few
READERS = 4  # threads for the real read-only activities, which are synchronous


class UnknownContact(LookupError):
    pass


class DryRunStuck(RuntimeError):
    pass


def _contact_name(engine: Engine, contact_id: int) -> str:
    with session(engine) as db:
        contact = db.get(Contact, contact_id)
        if contact is None:
            raise UnknownContact(f"no contact {contact_id}")
        return short_name(contact.first_name, contact.last_name)


async def dry_run(
    engine: Engine,
    flow_id: str,
    contact_id: int,
    *,
    version: int | None = None,
    start_at: datetime | None = None,
    events: Sequence[PlannedEvent] = (),
    env: WorkflowEnvironment | None = None,
) -> DryRun:
    """Run the flow for one contact on a time-skipping server and return its timeline.

    ``start_at``: enroll at this (future) instant rather than now; a naive one is a local time
    in the flow's time zone. ``events``: what the contact does, and when. ``env``: an already
    running time-skipping environment; by default one is started from the venv and stopped."""
    stored = load_flow(engine, flow_id, version)
    if start_at is not None and start_at.tzinfo is None:
        start_at = schedule.local_to_instant(start_at, stored.flow.time_zone)
    report = check_flow(
        stored.flow.model_dump(mode="json", by_alias=True), known_scripts=registered_scripts()
    )
    if not report.can_run:
        raise FlowRejected(report, f"flow {flow_id!r} is not ready to run")
    name = _contact_name(engine, contact_id)
    wall = time.monotonic()
    own = env is None
    if env is None:
        env = await WorkflowEnvironment.start_time_skipping(
            data_converter=DATA_CONVERTER,
            test_server_existing_path=str(TEST_SERVER),
            # The test server is no production server: keep the SDK's warnings about that off
            # the timeline. (Made here, not at import: a runtime starts threads.)
            runtime=Runtime(
                telemetry=TelemetryConfig(
                    logging=LoggingConfig(
                        filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")
                    )
                )
            ),
        )
    # The real read-only activities are synchronous: they run on these threads, shut with the run.
    readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="dry-run")
    try:
        await register_search_attributes(env.client)
        if start_at is not None:
            ahead = start_at - await env.get_current_time()
            if ahead > timedelta(0):
                await env.sleep(ahead)
        capture = Capture(engine)
        task_queue = f"dry-run-{uuid.uuid4()}"
        worker = Worker(
            env.client,
            task_queue=task_queue,
            # The participant and the script runs it starts, as the real worker has them.
            workflows=[ParticipantWorkflow, ScriptWorkflow],
            activities=capture.activities(),
            activity_executor=readers,
        )
        # Sends go to their channel's task queue: captured there too, with no rate limit.
        channels = [
            Worker(
                env.client,
                task_queue=channel_task_queue(task_queue, channel),
                activities=capture.activities(),
                activity_executor=readers,
            )
            for channel in CHANNELS
        ]
        async with contextlib.AsyncExitStack() as workers:
            for running in (worker, *channels):
                await workers.enter_async_context(running)
            handle = await env.client.start_workflow(
                ParticipantWorkflow.run,
                Enrollment(
                    flow=stored.flow,
                    flow_version=stored.version,
                    contact_id=contact_id,
                    behaviour=BEHAVIOUR,
                ),
                id=f"dry-run-{flow_id}-contact-{contact_id}-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
                search_attributes=sa.at_start(stored.flow, stored.version, contact_id),
                static_summary=f"Dry run: {name} (contact {contact_id}) in {stored.flow.name!r}",
            )
            try:
                state: ParticipantState = await asyncio.wait_for(
                    _run(env, handle, flow_id, contact_id, events), WALL_LIMIT
                )
            except TimeoutError:
                # E.g. an activity failing without end: skipped time makes every retry instant.
                await handle.terminate("the dry run took too long")
                raise DryRunStuck(
                    f"the dry run did not finish within {WALL_LIMIT:.0f} s of wall time"
                ) from None
            history = await _history(env.client, handle.id, handle.result_run_id or "")
            await _children_done(env.client, history)
        timeline = build_timeline(stored.flow, history, state, capture.calls, env.client)
    finally:
        readers.shutdown(wait=True)
        if own:
            await env.shutdown()
    return DryRun(
        flow_id=flow_id,
        flow_name=stored.flow.name,
        version=stored.version,
        time_zone=stored.flow.time_zone,
        contact_id=contact_id,
        contact=name,
        started_at=timeline[0].at,
        ended_at=timeline[-1].at,
        state=state,
        timeline=timeline,
        captured=capture.calls,
        wall_seconds=time.monotonic() - wall,
    )


async def _run(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[Any, ParticipantState],
    flow_id: str,
    contact_id: int,
    events: Sequence[PlannedEvent],
) -> ParticipantState:
    """Let the participant run, skipping time to each planned event and signalling it."""
    enrolled = await env.get_current_time()
    for planned in sorted(events, key=lambda e: e.after):
        ahead = enrolled + planned.after - await env.get_current_time()
        if ahead > timedelta(0):
            await env.sleep(ahead)
        event = planned.event(flow_id, contact_id, await env.get_current_time())
        try:
            await handle.signal(EVENT_SIGNAL, event)
        except RPCError:
            break  # the participant has left: later events find nobody either
    state: ParticipantState = await handle.result()
    return state


async def _children_done(client: Client, history: list[HistoryEvent]) -> None:
    """Wait for the child workflows the participant started (scripts), so that their captured
    calls are on the timeline; a child's failure is its own business."""
    for event in history:
        if event.HasField("start_child_workflow_execution_initiated_event_attributes"):
            child = event.start_child_workflow_execution_initiated_event_attributes.workflow_id
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.get_workflow_handle(child).result(), WALL_LIMIT)


async def _history(client: Client, workflow_id: str, first_run: str) -> list[HistoryEvent]:
    """Every event of the participant, following continue-as-new from run to run."""
    events: list[HistoryEvent] = []
    run_id: str | None = first_run
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        run = [event async for event in handle.fetch_history_events()]
        events += run
        run_id = None
        if run and run[-1].HasField("workflow_execution_continued_as_new_event_attributes"):
            attributes = run[-1].workflow_execution_continued_as_new_event_attributes
            run_id = attributes.new_execution_run_id
    return events
