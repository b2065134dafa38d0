"""How the participant and script workflows run: in Temporal's sandbox, or not.

The sandbox re-imports a workflow's module (and whatever it imports that is not passed through)
for every workflow instance, and enters itself again for every payload the SDK converts: 2-3x
the CPU of the workflow side. Replaying recorded histories (``tests/histories``, 60 times each,
2026-11-30): a send step that drops out 9.5-12.0 ms of CPU sandboxed against 4.0-4.5 ms
unsandboxed; ``crm_steps_v4`` 65-81 ms against 29-31 ms; ``messages_sent_v4`` 52-66 ms against
27-32 ms. That CPU is taken from the event loop that completes workflow tasks.

Flows are data, not code: the only workflow code is this project's, so the sandbox's job (catching
a non-deterministic call such as ``datetime.now()`` in workflow code) is done by the test suite,
which runs every workflow sandboxed (``WORKFLOW_SANDBOX=true``), and by the replay of recorded
histories under both runners. The worker runs unsandboxed by default.

Sandboxed, the project's own modules are imported once and shared: they hold no mutable module
state and take time only from ``workflow.now()``; the sandbox keeps checking everything else.
"""

from __future__ import annotations

from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

# Deterministic project packages: flow and participant models, the workflow definitions, and
# the activity definitions the workflows call by reference (their bodies never run in here);
# RE2, which form-data splits' criteria match with (models.patterns; no state of its own); and
# the holidays package (models.schedule: arithmetic on the year), which imports a country's
# calendar on first use: passed through, that import happens outside the sandbox.
PASSED_THROUGH = ("models", "workflows", "activities", "re2", "holidays")

SANDBOXED = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
)
UNSANDBOXED = UnsandboxedWorkflowRunner()


def workflow_runner(sandboxed: bool) -> WorkflowRunner:
    return SANDBOXED if sandboxed else UNSANDBOXED
