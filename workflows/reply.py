"""The ``Reply`` workflow: the reply email a form's send_reply_email action sends to whoever
submitted it (``control.own_actions``).

``control.ingest`` starts it after the transaction that carried out the form's actions, never
sending from inside it (a retried transaction would send again), under an id derived from the
event (``reply-<event id>/actions/<n>``), so it starts once. Its one activity is the send a flow's
send_email step runs (``activities.email``), on the email channel's task queue and under its
timeouts and retries, with a delivery key derived from the event: claim, point of no return,
settle. However often the workflow or the activity is retried, the SMTP server is handed the
reply at most once.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.email import EmailActivities, EmailSend
    from models.ledger import DeliveryOutcome
    from models.sending import channel_task_queue
    from workflows.steps import SEND_ACTIVITY


@workflow.defn(name="Reply")
class ReplyWorkflow:
    @workflow.run
    async def run(self, send: EmailSend) -> DeliveryOutcome:
        workflow.set_current_details(
            f"Reply email of {send.flow_name!r} to contact {send.contact_id}"
        )
        return await workflow.execute_activity_method(
            EmailActivities.send_email,
            send,
            task_queue=channel_task_queue(workflow.info().task_queue, "email"),
            summary=f"Reply {send.step.subject!r} to contact {send.contact_id}",
            **SEND_ACTIVITY,
        )
