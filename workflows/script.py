"""The ``Script`` workflow: one start of a registered script by a run_script step.

A participant starts it as a child with the ABANDON parent-close policy and moves on as soon as
it has started: the script's retries, timeouts and failure are this workflow's alone, visible in
the Temporal UI under the id ``script-<participant>/<step>/<visit>``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.scripts import ScriptActivities, ScriptStart

# Loading the context is a short database read: retry it like every CRM activity.
PREPARE_ACTIVITY: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
    ),
}


@workflow.defn(name="Script")
class ScriptWorkflow:
    @workflow.run
    async def run(self, start: ScriptStart) -> str:
        prepared = await workflow.execute_activity_method(
            ScriptActivities.prepare_script,
            start,
            summary=f"Context for {start.script!r}: contact {start.contact_id}",
            **PREPARE_ACTIVITY,
        )
        workflow.set_current_details(
            f"Script {start.script!r} for contact {start.contact_id}, started by flow "
            f"{start.flow_name!r} at step {start.step_name or start.step_id!r}"
        )
        # The script's own limits (scripts.script(timeout=..., attempts=...)): each attempt is
        # cut at its timeout; retries back off from 1 s up to a minute between attempts.
        return await workflow.execute_activity_method(
            ScriptActivities.run_script,
            prepared,
            summary=f"Run script {start.script!r}",
            start_to_close_timeout=timedelta(seconds=prepared.timeout_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(minutes=1),
                maximum_attempts=prepared.attempts,
            ),
        )
