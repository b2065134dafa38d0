"""The participant workflow: one contact travelling one flow version, step by step.

The run loop is the whole story: wait for the flow's scheduled start, then enter a step, let its
kind do its work (``workflows.steps``), and follow the outcome until the participant leaves.
State lives in one ``ParticipantState`` that the ``state`` query returns, the participants table
mirrors, and continue-as-new carries over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.participants import ParticipantActivities, ParticipantRecord
    from models import schedule
    from models import search_attributes as sa
    from models.engine import Departure, ParticipantStatus
    from models.events import FlowEvent, meets
    from models.flow import (
        Finish,
        Flow,
        SendEmail,
        SendSms,
        Step,
        WaitForAction,
        WaitTime,
    )
    from models.participant import (
        Enrollment,
        KeptVersion,
        ParticipantState,
        Resume,
        Standing,
        Visit,
    )
    from workflows.flow_versions import shared
    from workflows.steps import (
        SENDING_DISCIPLINE,
        Continue,
        Leave,
        Leaving,
        Outcome,
        hand_off,
        run_step,
        takes_its_entry_record,
    )

TRAIL_LENGTH = 50
EVENT_MEMORY = 100  # events a participant remembers for waits, splits and success

# Bookkeeping is a local activity: a short database write, retried in the worker without the
# round trip and the extra history events of a scheduled activity.
RECORD_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=15),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30)),
}

# One record per step: no record of its own at enrollment unless the participant waits before
# its first step (scheduled start, paused flow); a wait step's entry record is the wait's record,
# and a finish step without hand-offs is recorded once, as the participant leaves, with the
# checks made there. Participants started before keep their records as they were.
RECORD_ONCE_PER_STEP = "record-once-per-step"

# A message step's entry record (and the checks before the step) rides in its send activity, in
# the send's own transaction, instead of a local activity of its own; a message step that waits
# for its sending window still records before the wait. Asked only of runs that record once per
# step; participants started before keep their records as they were.
RECORD_IN_MESSAGE_STEP = "record-in-message-step"

# Both of the above, and the entry record (and checks) of a CRM step, a split on CRM data and a
# notify step rides in the step's own activity too; a finish step's FlowStep is set with the
# status as the participant leaves, in one upsert.
# One marker where runs started before carry two: each patch costs a marker and an upsert of
# the TemporalChangeVersion search attribute in every participant's history.
RECORD_IN_STEP_ACTIVITY = "record-in-step-activity"

# All of the above, and: the step before a finish without hand-offs makes the participant's last
# record (and the finish's checks) in its own activity, so no local record is left for the
# participant as it leaves (unless a signal changed how it leaves meanwhile); and FlowStep is
# upserted only when it changes (enrollment sets it to the first step).
DEPART_IN_STEP_ACTIVITY = "depart-in-step-activity"

# All of the above, and sends on the channels' task queues under the frequency caps
# (workflows.steps.SENDING_DISCIPLINE), in one marker asked at the start: runs started before ask
# SENDING_DISCIPLINE on its own, at their first message step.
DEPART_AND_SEND_BY_CHANNEL = "depart-and-send-by-channel"

# All of the above, and FlowStep shows where the participant waits (a timer, an awaited action,
# a paused flow) and where it left, not every step it passes: an action step done in the same
# moment costs no upsert (each is a visibility write: ~5 ms of server CPU on the dev server,
# about half of what a whole activity costs it). The participants table has every step.
FLOW_STEP_WHERE_IT_WAITS = "flow-step-where-it-waits"

# Asked at the start, newest first, until one is in the run: one marker for a new participant.
STANDING = (
    FLOW_STEP_WHERE_IT_WAITS,
    DEPART_AND_SEND_BY_CHANNEL,
    DEPART_IN_STEP_ACTIVITY,
    RECORD_IN_STEP_ACTIVITY,
)

# The behaviour a participant starts with is pinned in its input (``Enrollment.behaviour``), as
# its flow version is, so it asks no patch and carries no marker: each marker costs an event and
# an upsert of the TemporalChangeVersion search attribute (a visibility write, ~5 ms of server
# CPU on the dev server). Level 1 has every patch in this module and in ``workflows.steps``.
# A change for new participants only bumps BEHAVIOUR and reads the level; one that must reach
# participants already running still asks ``workflow.patched``. Runs started before the pin
# (level 0) ask their patches as they always did.
# Level 2: a send_email or send_sms step sends in a local activity of the participant's own
# worker when its channel has no rate limit (``workflows.steps.SENDS_IN_WORKER``).
# Level 3: a step's CRM reads and writes run in local activities too (``workflows.steps.in_crm``).
BEHAVIOUR = 3


@workflow.defn(name="Participant")
class ParticipantWorkflow:
    @workflow.init
    def __init__(self, enrollment: Enrollment) -> None:
        # The input (alive as long as the run) keeps the worker's shared copy, not its own.
        enrollment.flow = shared(enrollment.flow, enrollment.flow_version)
        self._flow = enrollment.flow
        self._state = enrollment.state or ParticipantState(
            participant_id=workflow.info().run_id,
            flow_id=enrollment.flow.id,
            flow_version=enrollment.flow_version,
            contact_id=enrollment.contact_id,
            enrolled_at=workflow.now(),
            paused=enrollment.paused,
            success=enrollment.success,
        )
        # Set by a signal to make the participant leave at once, even in the middle of a wait.
        self._interrupt: Leave | None = None
        success = enrollment.flow.success
        if enrollment.state is None and enrollment.success and success and success.move_to_finish:
            # A success already as it entered: with "move directly to finish", it skips the flow.
            status = ParticipantStatus.finished_with_success
            self._interrupt = Leave(status, "success criterion met at enrollment: moved to finish")
        self._once_per_step = False  # RECORD_ONCE_PER_STEP, decided once per run
        self._record_in_send = False  # RECORD_IN_MESSAGE_STEP, decided once per run
        self._record_in_step_activity = False  # RECORD_IN_STEP_ACTIVITY, decided once per run
        self._depart_in_step_activity = False  # DEPART_IN_STEP_ACTIVITY, decided once per run
        self._behaviour = enrollment.behaviour  # pinned at the start (BEHAVIOUR); 0: patches
        self._by_channel: bool | None = None  # SENDING_DISCIPLINE, decided at the first send
        self._flow_step_when_waiting = False  # FLOW_STEP_WHERE_IT_WAITS, decided once per run
        # The step entered that FlowStep does not show yet (FLOW_STEP_WHERE_IT_WAITS).
        self._flow_step_due: str | None = None
        # The last record a step's activity made for the finish after it: the row it was given
        # (``_departure_offered``) and what the activity reported (``_departure``).
        self._departure_offered: ParticipantState | None = None
        self._departure: Departure | None = None
        # The step entered has not been recorded nor checked yet: its first record does both.
        self._entry_unrecorded = False

    @property
    def flow(self) -> Flow:
        return self._flow

    @property
    def contact_id(self) -> int:
        return self._state.contact_id

    @property
    def behaviour(self) -> int:
        return self._behaviour

    @property
    def state(self) -> ParticipantState:
        return self._state

    @workflow.query(name="state")
    def current_state(self) -> ParticipantState:
        return self._state

    # --- what reaches a participant from outside ------------------------------------------------

    @workflow.signal
    def event(self, event: FlowEvent) -> None:
        """A form, click, open or CRM change concerning this contact (idempotent by event id)."""
        if any(seen.event_id == event.event_id for seen in self._state.events):
            return
        event = event.model_copy(update={"received_at": workflow.now()})
        self._state.events = [*self._state.events, event][-EVENT_MEMORY:]
        success = self._flow.success
        if success is None or self._state.success:
            return
        if any(meets(criterion, event) for criterion in success.criteria):
            self._state.success = True
            if success.move_to_finish:
                status = ParticipantStatus.finished_with_success
                self._interrupt = Leave(status, "success criterion met: moved to finish")

    @workflow.signal
    def pause(self) -> None:
        """The flow is paused: freeze before the next step, and at the end of a wait."""
        self._state.paused = True

    @workflow.signal
    def resume(self, resume: Resume) -> None:
        """Continue; edits made while paused apply to the steps not yet reached. A participant
        whose current step is gone from the new version keeps its own, and records why."""
        if resume.flow is not None and resume.flow_version is not None:
            current = self._state.current_step
            if current is None or any(step.id == current for step in resume.flow.steps):
                self._flow = shared(resume.flow, resume.flow_version)
                self._state.flow_version = resume.flow_version
                self._state.kept_version = None
            else:
                self._state.kept_version = KeptVersion(
                    version=self._state.flow_version,
                    offered=resume.flow_version,
                    reason=f"its current step {current!r} is not in version {resume.flow_version}",
                )
        self._state.paused = False

    @workflow.signal
    def leave(self, reason: str) -> None:
        """Taken out of this flow (e.g. enrolled in a flow that removes it from this one)."""
        self._interrupt = Leave.dropping_out(reason)

    # --- the flow -----------------------------------------------------------------------------

    @workflow.run
    async def run(self, enrollment: Enrollment) -> ParticipantState:
        # The newest patch this run has; each stands for every older one in the chain.
        level = (
            len(STANDING)
            if self._behaviour >= 1
            else next(
                (len(STANDING) - i for i, patch in enumerate(STANDING) if workflow.patched(patch)),
                0,
            )
        )
        self._flow_step_when_waiting = level >= 4
        self._depart_in_step_activity = level >= 2
        if level >= 3:
            self._by_channel = True
        if level >= 1:
            self._once_per_step = self._record_in_send = self._record_in_step_activity = True
        else:
            self._once_per_step = workflow.patched(RECORD_ONCE_PER_STEP)
            self._record_in_send = self._once_per_step and workflow.patched(RECORD_IN_MESSAGE_STEP)
        try:
            if self._state.current_step is None:
                if (
                    not self._once_per_step
                    or self._flow.scheduled_start is not None
                    or self._state.paused
                ):
                    await self._record()  # visible while it waits for its first step
                await self._wait_for_scheduled_start()
                await self._unfrozen()  # enrolled while paused: queue before the first step
                self._state.current_step = self._flow.start
            steps_this_run = 0
            while self._state.status is ParticipantStatus.active:
                if steps_this_run >= enrollment.steps_per_run or (
                    workflow.info().is_continue_as_new_suggested()
                ):
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    enrollment = enrollment.model_copy(
                        update={"flow": self._flow, "flow_version": self._state.flow_version}
                    )
                    state = self._state.without_form_data()
                    workflow.continue_as_new(enrollment.model_copy(update={"state": state}))
                await self._unfrozen()
                if self._interrupt is not None:
                    self._leave(self._interrupt)
                    break
                step = self._flow.step(self._current_step)
                standing = await self._enter(step)
                outcome = await self._run(step, standing)
                if isinstance(outcome, Leave) and outcome.handoffs is not None:
                    await hand_off(self, outcome.handoffs)
                self._follow(outcome)
                steps_this_run += 1
        except Leaving as leaving:
            # Left before the first step (e.g. during the scheduled-start wait).
            self._leave(leaving.outcome)
        except asyncio.CancelledError:
            # Ending a flow cancels its participants: record that, then let the cancel through.
            self._leave(Leave(ParticipantStatus.cancelled, "cancelled"))
            await self._record()
            raise
        departure = self._departed()
        standing = await self._record() if departure is None else departure
        if self._entry_unrecorded:
            # A finish step's entry is this last record: if its checks say the contact may not
            # finish, it drops out instead, as it would have on entering the step.
            self._entry_unrecorded = False
            if standing.leave_reason is not None:
                self._state.trail[-1].outcome = standing.leave_reason
                finished_at = self._state.finished_at
                self._leave(Leave.dropping_out(standing.leave_reason))
                if departure is None:
                    await self._record()
                else:
                    self._state.finished_at = finished_at  # as the departure recorded it
        return self._state.without_form_data()

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

    async def _unfrozen(self) -> None:
        """While the flow is paused, the participant stays where it is."""
        if self._state.paused and self._departure is not None:
            # Paused on its way to the finish its last step already recorded it at: say where
            # it is meanwhile; the finish records it again.
            self._departure = None
            await self._record()
        if self._state.paused:
            self._show_flow_step()
        await workflow.wait_condition(lambda: not self._state.paused or self._interrupt is not None)

    async def _enter(self, step: Step) -> Standing:
        state = self._state
        state.current_step = step.id
        state.visits[step.id] = state.visits.get(step.id, 0) + 1
        state.trail = [*state.trail, Visit(step=step.id, entered_at=workflow.now())][-TRAIL_LENGTH:]
        shown = workflow.info().typed_search_attributes.get(sa.FLOW_STEP)
        if self._flow_step_when_waiting:
            self._flow_step_due = None if shown == step.id else step.id
        elif not (self._record_in_step_activity and isinstance(step, Finish)) and not (
            self._depart_in_step_activity and shown == step.id
        ):
            workflow.upsert_search_attributes([sa.FLOW_STEP.value_set(step.id)])
        workflow.set_current_details(f"At step {step.label!r} ({step.type})")
        self._entry_unrecorded = self._once_per_step and _recorded_later(
            step, self._record_in_send, self._record_in_step_activity
        )
        if self._entry_unrecorded:
            return Standing()
        return await self._record()

    async def _run(self, step: Step, standing: Standing) -> Outcome:
        if standing.leave_reason is not None:
            return Leave.dropping_out(standing.leave_reason)
        try:
            return await run_step(self, step)
        except Leaving as leaving:
            return leaving.outcome
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
            self._departure = outcome.departure
            return
        self._leave(outcome)

    def _leave(self, outcome: Leave) -> None:
        status = outcome.status
        if status is ParticipantStatus.finished and self._state.success:
            status = ParticipantStatus.finished_with_success
        self._state.status = status
        self._state.drop_out_reason = outcome.reason
        self._state.wait_until = None
        self._state.finished_at = workflow.now()
        leaving = [sa.PARTICIPANT_STATUS.value_set(status.value)]
        if self._record_in_step_activity and self._state.current_step is not None:
            leaving.append(sa.FLOW_STEP.value_set(self._state.current_step))  # see _enter
            self._flow_step_due = None
        workflow.upsert_search_attributes(leaving)
        workflow.set_current_details(f"{status.value}: {outcome.outcome}")

    # --- what steps use -----------------------------------------------------------------------

    async def wait_for(
        self, done: Callable[[], bool], until: datetime | None, summary: str
    ) -> bool:
        """Wait until ``done()`` or the instant ``until`` (None: no limit), durably; the
        participant's wait-until is visible meanwhile. True if ``done()`` came first.

        A signal that makes the participant leave ends the wait by raising ``Leaving``; a pause
        that falls during the wait freezes the participant at its end.
        """
        if done():
            await self._record_entry()
            return True
        timeout = None if until is None else until - workflow.now()
        if timeout is not None and timeout <= timedelta(0):
            await self._record_entry()
            return False
        self._state.wait_until = until
        if self._entry_unrecorded:
            await self._record_entry()
        else:
            await self._record()
        self._show_flow_step()
        with contextlib.suppress(TimeoutError):  # the deadline passed: done() says which
            await workflow.wait_condition(
                lambda: done() or self._interrupt is not None,
                timeout=timeout,
                timeout_summary=summary,
            )
        self._state.wait_until = None
        if self._interrupt is not None:
            raise Leaving(self._interrupt)
        await self._unfrozen()
        if self._interrupt is not None:
            raise Leaving(self._interrupt)
        return done()

    def _show_flow_step(self) -> None:
        """FlowStep set to the step entered, when the participant is about to wait there."""
        if self._flow_step_due is not None:
            workflow.upsert_search_attributes([sa.FLOW_STEP.value_set(self._flow_step_due)])
            self._flow_step_due = None

    async def sleep_until(self, instant: datetime, summary: str) -> None:
        await self.wait_for(lambda: False, instant, summary)

    def delivery_key(self, step: Step) -> str:
        return f"{self._state.participant_id}/{step.id}/{self._state.visits.get(step.id, 0)}"

    def entry_record(self) -> ParticipantRecord | None:
        """The step's entry record, when it is still to be made: the step's own activity takes
        it (and makes the checks before the step) from here on. None once it was made."""
        if not self._entry_unrecorded:
            return None
        self._entry_unrecorded = False
        return self._row_record()

    def sends_by_channel(self) -> bool:
        """Whether this run's sends go to the channels' task queues, under the frequency caps."""
        if self._by_channel is None:
            self._by_channel = self.patched(SENDING_DISCIPLINE)
        return self._by_channel

    def patched(self, patch: str) -> bool:
        """Whether this run has ``patch``: always, when its behaviour is pinned (every patch is
        older than the pin); else as ``workflow.patched`` says."""
        return self._behaviour >= 1 or workflow.patched(patch)

    def departure_record(self, next_step: str) -> ParticipantRecord | None:
        """The row the participant will leave with through ``next_step``, for the activity of the
        step before it to record last (with the finish's checks): only when ``next_step`` is a
        finish without hand-offs. None otherwise: the participant records as it leaves."""
        finish = self._flow.step(next_step)
        if not self._depart_in_step_activity or not (
            isinstance(finish, Finish) and _without_handoffs(finish)
        ):
            return None
        record = self._row_record()
        status = ParticipantStatus.finished
        if self._state.success:
            status = ParticipantStatus.finished_with_success
        record.state = record.state.model_copy(
            update={
                "status": status,
                "current_step": next_step,
                "wait_until": None,
                "drop_out_reason": None,
                "finished_at": None,
            }
        )
        self._departure_offered = record.state
        return record

    def _departed(self) -> Standing | None:
        """The finish's checks, as the departure the last step's activity recorded found them,
        when the participant left as that record says (its row is then current); None when no
        departure was recorded or something (a signal) changed how it left: record now."""
        departure, offered, state = self._departure, self._departure_offered, self._state
        if departure is None or offered is None:
            return None
        row = ("status", "current_step", "drop_out_reason", "wait_until", "flow_version")
        if any(getattr(state, field) != getattr(offered, field) for field in row):
            return None
        state.finished_at = departure.at
        return Standing(leave_reason=departure.leave_reason)

    def _row_record(self) -> ParticipantRecord:
        """What a record needs: the row's fields and the checks' inputs. The trail, visits and
        events stay in the workflow (an entry record travels in its activity's input, kept in
        the history; every record is serialised at each step)."""
        state = self._state.model_copy(
            update={"visits": {}, "trail": [], "events": [], "left_waits": {}}
        )
        return ParticipantRecord(state=state, exclusion_selections=self._flow.exclusion_selections)

    async def _record_entry(self) -> None:
        """The record a wait step's entry left to its wait: made now (with the wait's deadline,
        if it waits), and its checks leave before the wait begins."""
        if not self._entry_unrecorded:
            return
        self._entry_unrecorded = False
        standing = await self._record()
        if standing.leave_reason is not None:
            self._state.wait_until = None
            raise Leaving(Leave.dropping_out(standing.leave_reason))

    async def _record(self) -> Standing:
        record = self._row_record()
        # Histories recorded before the checks existed carry no standing (a null result, which
        # decodes to None whatever the type): all is well.
        standing: Standing | None = await workflow.execute_local_activity_method(
            ParticipantActivities.record_participant,
            record,
            summary="Record participant",
            **RECORD_OPTIONS,
        )
        return standing or Standing()


def _recorded_later(step: Step, record_in_send: bool, record_in_step_activity: bool) -> bool:
    """Steps whose entry is recorded (and checked) by their first record: a wait's, before it
    waits; a finish's without hand-offs, as the participant leaves; a message step's (with
    ``record_in_send``) by its send, or before it waits for its sending window; a CRM step's,
    a split's on CRM data and a notify step's (with ``record_in_step_activity``) by its
    activity."""
    if isinstance(step, WaitTime | WaitForAction):
        return True
    if record_in_send and isinstance(step, SendEmail | SendSms):
        return True
    if record_in_step_activity and takes_its_entry_record(step):
        return True
    if isinstance(step, Finish):
        return _without_handoffs(step)
    return False


def _without_handoffs(finish: Finish) -> bool:
    suggested = (finish.suggest_flow_on_success, finish.suggest_flow_otherwise)
    return all(flow is None for flow in suggested) and finish.add_to_selection is None
