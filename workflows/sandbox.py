"""The sandbox the participant and script workflows run in.

By default the sandbox re-imports a workflow's module, and everything it imports that is not
passed through, for every workflow instance: CPU on every start (or wake from the cache) of a
participant (a short history replays in 12.0 ms of CPU with the modules below passed through,
15.4 ms without). The project's own modules hold no mutable module state and take time only from
``workflow.now()``, so they are imported once and shared; the sandbox keeps checking everything
else.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

# Deterministic project packages: flow and participant models, the workflow definitions, and
# the activity definitions the workflows call by reference (their bodies never run in here);
# and RE2, which form-data splits' criteria match with (models.patterns; no state of its own).
PASSED_THROUGH = ("models", "workflows", "activities", "re2")

WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
)
