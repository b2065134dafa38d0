"""The dev stack's demo shows something at any hour: started at 02:00 in Stockholm, the hello
flow's email reaches the local inbox (the console's outbox) at once, while the welcome flow's
participants wait for its sending window to open at 08:00."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import select

from control.demo import start_demo
from models.database import session
from models.engine import Participant, ParticipantStatus
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox, twilio_settings
from testkit.servers import start_time_skipping_server
from testkit.waiting import assert_eventually
from worker import activities_for, build_worker
from workflows.participant import ParticipantWorkflow

STOCKHOLM = ZoneInfo("Europe/Stockholm")
FINISHED = ParticipantStatus.finished.value


async def test_at_night_the_demo_sends_hello_and_the_welcome_flow_waits_for_its_window(
    engine: Engine, task_queue: str, smtp_inbox: Inbox, twilio_api: TwilioApiServer
) -> None:
    # A server of its own: its clock moves to the night, which the shared one must not.
    env = await start_time_skipping_server()
    try:
        now = (await env.get_current_time()).astimezone(STOCKHOLM)
        night = datetime.combine(now.date() + timedelta(days=1), time(2), tzinfo=STOCKHOLM)
        await env.sleep(night - now)
        activities = activities_for(engine, smtp_inbox.settings, twilio_settings(twilio_api))
        async with build_worker(env.client, engine, task_queue=task_queue, activities=activities):
            demo = {d.stored.flow.id: d for d in await start_demo(env.client, engine, task_queue)}
            assert set(demo) == {"welcome", "hello"}
            enrolled = demo["hello"].report.enrolled
            assert enrolled and demo["welcome"].report.enrolled == enrolled

            # Every hello participant finishes at once; those who may get email got it.
            await assert_eventually(
                lambda: _statuses(engine, "hello"),
                timeout=60,
                until=lambda statuses: (
                    statuses == [ParticipantStatus.finished.value] * len(enrolled)
                ),
                what="every hello participant finished",
            )
            subjects = [message.subject for message in smtp_inbox.messages()]
            assert subjects and all(subject.startswith("Hello ") for subject in subjects)

            # The welcome participants wait at their first email for 08:00 (no welcome sent).
            for contact in enrolled:
                handle = env.client.get_workflow_handle_for(
                    ParticipantWorkflow.run, f"flow-welcome-contact-{contact}"
                )
                state = await handle.query(ParticipantWorkflow.current_state)
                assert state.current_step == "welcome-email"
                assert state.wait_until is not None
                opens = state.wait_until.astimezone(STOCKHOLM)
                assert opens.time() == time(8) and opens > night
            assert len(smtp_inbox.messages()) == len(subjects)  # nothing from welcome
    finally:
        await env.shutdown()


async def _statuses(engine: Engine, flow_id: str) -> list[str]:
    with session(engine) as db:
        return list(db.exec(select(Participant.status).where(Participant.flow_id == flow_id)))
