"""The participant workflow: one contact travelling one flow version, step by step.

The run loop is the whole story: wait for the flow's scheduled start, then enter a step, let its
kind do its work (``workflows.steps``), and follow the outcome until the participant leaves.
State lives in one ``ParticipantState`` that the ``state`` query returns, the participants table
mirrors, and continue-as-new carries over.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models import schedule
    from models.engine import ParticipantStatus
    from models.flow import Flow, Step
    from models.participant import Enrollment, ParticipantState, Visit
    from workflows import search_attributes as sa
    from workflows.steps import Continue, Leave, Outcome, hand_off, run_step

TRAIL_LENGTH = 50

# Bookkeeping is a local activity: a short database write, retried in the worker without the
# round trip and the extra history events of a scheduled activity.
RECORD_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30)),
}


@workflow.defn(name="Participant")
class ParticipantWorkflow:
    @workflow.init
    def __init__(self, enrollment: Enrollment) -> None:
        self._flow = enrollment.flow
        self._state = enrollment.state or ParticipantState(
            participant_id=workflow.info().run_id,
            flow_id=enrollment.flow.id,
            flow_version=enrollment.flow_version,
            contact_id=enrollment.contact_id,
            enrolled_at=workflow.now(),
        )

    @property
    def flow(self) -> Flow:
        return self._flow

    @property
    def contact_id(self) -> int:
        return self._state.contact_id

    @workflow.query
    def state(self) -> ParticipantState:
        return self._state

    @workflow.run
    async def run(self, enrollment: Enrollment) -> ParticipantState:
        try:
            if self._state.current_step is None:
                await self._record()
                await self._wait_for_scheduled_start()
                self._state.current_step = self._flow.start
            steps_this_run = 0
            while self._state.status is ParticipantStatus.active:
                if steps_this_run >= enrollment.steps_per_run or (
                    workflow.info().is_continue_as_new_suggested()
                ):
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(enrollment.model_copy(update={"state": self._state}))
                step = self._flow.step(self._current_step)
                await self._enter(step)
                outcome = await self._run(step)
                if isinstance(outcome, Leave) and outcome.handoffs is not None:
                    await hand_off(self, outcome.handoffs)
                self._follow(outcome)
                steps_this_run += 1
            await self._record()
        except asyncio.CancelledError:
            # Ending a flow cancels its participants: record that, then let the cancel through.
            self._leave(Leave(ParticipantStatus.cancelled, "cancelled"))
            await self._record()
            raise
        return self._state

    @property
    def _current_step(self) -> str:
        assert self._state.current_step is not None
        return self._state.current_step

    async def _wait_for_scheduled_start(self) -> None:
        if self._flow.scheduled_start is None:
            return
        start = schedule.local_to_instant(self._flow.scheduled_start, self._flow.time_zone)
        when = schedule.describe_instant(start, self._flow.time_zone)
        await self.sleep_until(start, f"Scheduled start {when}")

    async def _enter(self, step: Step) -> None:
        state = self._state
        state.current_step = step.id
        state.visits[step.id] = state.visits.get(step.id, 0) + 1
        state.trail = [*state.trail, Visit(step=step.id, entered_at=workflow.now())][-TRAIL_LENGTH:]
        workflow.upsert_search_attributes([sa.FLOW_STEP.value_set(step.id)])
        workflow.set_current_details(f"At step {step.label!r} ({step.type})")
        await self._record()

    async def _run(self, step: Step) -> Outcome:
        try:
            return await run_step(self, step)
        except ActivityError as error:
            # A final (non-retryable) failure, such as a deleted contact, ends the participant
            # with the reason recorded instead of failing the workflow and losing track of it.
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.non_retryable:
                return Leave(ParticipantStatus.dropped_out, "failed", reason=cause.message)
            raise

    def _follow(self, outcome: Outcome) -> None:
        self._state.steps_taken += 1
        self._state.trail[-1].outcome = outcome.outcome
        if isinstance(outcome, Continue):
            self._state.current_step = outcome.next
            return
        self._leave(outcome)

    def _leave(self, outcome: Leave) -> None:
        self._state.status = outcome.status
        self._state.drop_out_reason = outcome.reason
        self._state.wait_until = None
        self._state.finished_at = workflow.now()
        workflow.upsert_search_attributes([sa.PARTICIPANT_STATUS.value_set(outcome.status.value)])
        workflow.set_current_details(f"{outcome.status.value}: {outcome.outcome}")

    async def sleep_until(self, instant: datetime, summary: str) -> None:
        """A durable timer to an instant; the participant's wait-until is visible meanwhile."""
        delay = instant - workflow.now()
        if delay <= timedelta(0):
            return
        self._state.wait_until = instant
        await self._record()
        await workflow.sleep(delay, summary=summary)
        self._state.wait_until = None

    def delivery_key(self, step: Step) -> str:
        return f"{self._state.participant_id}/{step.id}/{self._state.visits.get(step.id, 0)}"

    async def _record(self) -> None:
        await workflow.execute_local_activity(
            "record_participant", self._state, summary="Record participant", **RECORD_OPTIONS
        )
