"""The sending settings document, the channels' task queues and their rate limits, and the
statistics of messages not sent, by reason."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.api.history.v1 import HistoryEvent
from temporalio.testing import WorkflowEnvironment

import starter
from models.database import session
from models.engine import Delivery, Participant, ParticipantStatus, WaitReason
from models.flow import Flow
from models.frequency_caps import FrequencyCap
from models.participant import Enrollment
from models.payloads import DATA_CONVERTER
from models.sending import NO_SENDING_SETTINGS, RateLimits, SendingSettings
from models.validation import check_sending_settings
from peers.twilio_api import TwilioApiServer
from reports.statistics import flow_statistics, render_table
from testkit.histories import local_activities, scheduled_activities
from testkit.peers import Inbox, twilio_settings
from testkit.waiting import waiting_at
from tests.test_frequency_caps import two_emails
from tests.test_message_steps import EMAIL_SETTINGS, contact_named
from tests.test_participant import STOCKHOLM, flow_of, next_weekday, start
from worker import EngineWorker, activities_for, build_worker

EXAMPLE = Path(__file__).resolve().parent.parent / "flows" / "settings" / "sending.json"


# --- the settings document --------------------------------------------------------------------


def test_the_sending_settings_are_checked_field_by_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_sending_settings(json.loads(EXAMPLE.read_text())) == []
    wrong = {
        "frequency_caps": [
            {"channel": "email", "max_messages": 2, "days": 7},
            {"channel": "fax", "max_messages": 0, "days": 1},
            {"channel": "email", "max_messages": 3, "days": 7},
        ],
        "rate_limits": {"email": -1, "pigeon": 2},
    }
    problems = {p.field: p.message for p in check_sending_settings(wrong)}
    assert set(problems) == {
        "frequency_caps.1.channel",
        "frequency_caps.1.max_messages",
        "rate_limits.email",
        "rate_limits.pigeon",
    }
    twice = {"frequency_caps": [{"channel": "sms", "max_messages": 1, "days": 1}] * 2}
    (problem,) = check_sending_settings(twice)
    assert str(problem) == (
        "error: sending settings, frequency_caps.1: frequency_caps.0 caps sms over 1 days already"
    )

    path = tmp_path / "sending.json"
    path.write_text(json.dumps(wrong))
    assert starter.main(["validate", str(path)]) == 1
    assert "invalid sending settings (4 errors)" in capsys.readouterr().out
    assert starter.main(["validate", str(EXAMPLE)]) == 0
    assert "valid sending settings" in capsys.readouterr().out


# --- the channels' task queues ----------------------------------------------------------------


def email_sms_and_notify() -> Flow:
    """An email, an SMS, and a notify SMS to a number of our own."""
    return flow_of(
        [
            {"id": "mail", "type": "send_email", "subject": "S", "text": "T", "next": "text"},
            {"id": "text", "type": "send_sms", "text": "Hi", "next": "tell"},
            {
                "id": "tell",
                "type": "notify_sms",
                "to": {"addresses": ["+46701234567"]},
                "text": "FYI",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        email=EMAIL_SETTINGS,
        sms_sender="Flows",
    )


def sending_worker(
    env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
    sending: SendingSettings | None = None,
) -> EngineWorker:
    """worker.py's worker against the test's SMTP and Twilio peers, its activities and its
    channels' workers under the same sending settings (the default: none)."""
    sending = sending or NO_SENDING_SETTINGS
    activities = activities_for(
        engine, smtp_inbox.settings, twilio_settings(twilio_api), sending=sending
    )
    return build_worker(
        env.client, engine, task_queue=task_queue, activities=activities, sending=sending
    )


async def test_new_participants_send_on_their_channels_task_queues(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    """Each channel's sends wait in a task queue of their own, whose worker asks Temporal for
    the channel's rate limit (participants started before keep sending on the participants'
    queue: the replay corpus holds them)."""
    flow = email_sms_and_notify()
    sending = SendingSettings(rate_limits=RateLimits(email=20, sms=5))
    worker = sending_worker(time_skipping_env, engine, task_queue, smtp_inbox, twilio_api, sending)
    limits = {
        w.task_queue: w.config()["max_task_queue_activities_per_second"] for w in worker.channels
    }
    assert limits == {f"{task_queue}-email": 20, f"{task_queue}-sms": 5}
    async with worker:
        handle = await start(time_skipping_env, task_queue, flow, contact_named(engine, "Karin"))
        state = await handle.result()
        scheduled = scheduled_activities([e async for e in handle.fetch_history_events()])
    assert state.status is ParticipantStatus.finished
    assert scheduled == [
        ("send_email", f"{task_queue}-email"),
        ("send_sms", f"{task_queue}-sms"),
        ("notify_sms", f"{task_queue}-sms"),
    ]
    assert len(smtp_inbox.messages()) == 1 and len(twilio_api.messages) == 2


@pytest.mark.parametrize("limited", [False, True], ids=["no-rate-limit", "rate-limited"])
async def test_pinned_participants_send_in_their_worker_unless_the_channel_is_rate_limited(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
    limited: bool,
) -> None:
    """From behaviour 2 a send_email or send_sms step sends in a local activity of the
    participant's own worker: no activity task through the server. Under a channel's rate limit
    that attempt sends nothing, and the step sends on the channel's task queue, which holds the
    limit; notify steps always do. Each message arrives once either way."""
    flow = email_sms_and_notify()
    sending = SendingSettings(rate_limits=RateLimits(email=20, sms=5) if limited else RateLimits())
    worker = sending_worker(time_skipping_env, engine, task_queue, smtp_inbox, twilio_api, sending)
    async with worker:
        handle = await start(
            time_skipping_env, task_queue, flow, contact_named(engine, "Karin"), behaviour=2
        )
        state = await handle.result()
        events = [e async for e in handle.fetch_history_events()]
    scheduled, local = scheduled_activities(events), local_activities(events)
    assert state.status is ParticipantStatus.finished
    assert [visit.outcome.split(":")[0] for visit in state.trail[:2]] == ["email sent", "sms sent"]
    # Asked in the worker either way: under a limit it answers None and sends nothing. (The
    # finish after a notify step records the participant as it leaves.)
    assert local == ["send_email_locally", "send_sms_locally", "record_participant"]
    queued = [("send_email", f"{task_queue}-email"), ("send_sms", f"{task_queue}-sms")]
    assert scheduled == [*(queued if limited else []), ("notify_sms", f"{task_queue}-sms")]
    assert len(smtp_inbox.messages()) == 1 and len(twilio_api.messages) == 2
    with session(engine) as db:
        assert len(db.exec(select(Delivery)).all()) == 3  # one ledger row per message


# --- why not sent -----------------------------------------------------------------------------


def _statistics_flow() -> Flow:
    return flow_of(
        [
            {"id": "mail", "type": "send_email", "subject": "S", "text": "T", "next": "text"},
            {"id": "text", "type": "send_sms", "text": "Hi", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
        email=EMAIL_SETTINGS,
        sms_sender="Flows",
    )


async def test_a_pinned_participant_keeps_its_behaviour_when_it_continues_as_new(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    """Continue-as-new carries the pinned behaviour into every later run: a run never falls back
    to asking patches, and its sends are still made in the worker."""
    async with sending_worker(time_skipping_env, engine, task_queue, smtp_inbox, twilio_api):
        handle = await start(
            time_skipping_env,
            task_queue,
            email_sms_and_notify(),
            contact_named(engine, "Karin"),
            behaviour=2,
            steps_per_run=1,
        )
        state = await handle.result()
        runs: list[list[HistoryEvent]] = []
        run_id = handle.first_execution_run_id
        while run_id:
            run = time_skipping_env.client.get_workflow_handle(handle.id, run_id=run_id)
            events = [e async for e in run.fetch_history_events()]
            runs.append(events)
            last = events[-1].workflow_execution_continued_as_new_event_attributes
            run_id = last.new_execution_run_id or None
    assert state.status is ParticipantStatus.finished
    assert len(runs) == 4  # a step per run: mail, text, tell, done
    for events in runs:
        started = events[0].workflow_execution_started_event_attributes
        enrollment = DATA_CONVERTER.payload_converter.from_payload(
            started.input.payloads[0], Enrollment
        )
        assert enrollment.behaviour == 2
        assert not any(
            e.marker_recorded_event_attributes.marker_name == "core_patch" for e in events
        )
    # The second run sent the SMS in the worker: its marker, no activity task.
    assert not any(e.HasField("activity_task_scheduled_event_attributes") for e in runs[1])
    assert len(smtp_inbox.messages()) == 1 and len(twilio_api.messages) == 2


def test_statistics_count_messages_not_sent_by_reason(engine: Engine) -> None:
    flow = _statistics_flow()
    waits = {
        "p-window": ("mail", WaitReason.sending_window),
        "p-cap": ("mail", WaitReason.frequency_cap),
        "p-holiday": ("text", WaitReason.holiday),
    }
    ledger = {
        "p1/mail/1": ("sent", "250 OK"),
        "p2/mail/1": ("capped", "capped: at most 1 email a day"),
        "p3/mail/1": ("skipped", "no consent for emarketing"),
        "p4/mail/1": ("skipped", "not subscribed to 'newsletter'"),
        "p5/mail/1": ("skipped", "no email address"),
        "p6/mail/1": ("bounced", "550 5.1.1 no such user"),
        "p7/text/1": ("failed", "Twilio 400 21211: invalid To"),
        "p8/text/1": ("sent", "1 segment"),
        "p9/text/1": ("pending", None),  # on its way: neither sent nor not sent yet
        "elsewhere/mail/1": ("capped", "a participant of another flow"),
    }
    with session(engine) as db:
        for participant_id in [*waits, *(key.split("/")[0] for key in ledger)]:
            if participant_id == "elsewhere":
                continue
            step, reason = waits.get(participant_id, ("done", None))
            db.add(
                Participant(
                    id=participant_id,
                    workflow_id=f"wf-{participant_id}",
                    flow_id=flow.id,
                    flow_version=1,
                    contact_id=1,
                    current_step=step,
                    waiting_for=None if reason is None else reason.value,
                )
            )
        for key, (status, detail) in ledger.items():
            db.add(Delivery(key=key, channel="email", recipient="x", status=status, detail=detail))

    stats = flow_statistics(engine, flow, 1)
    steps = {m.step_id: m for m in stats.message_steps}
    assert (steps["mail"].sent, steps["text"].sent) == (1, 1)
    assert steps["mail"].not_sent == {
        "capped": 1,
        "skipped by consent": 2,
        "skipped: no usable address or number": 1,
        "bounced": 1,
        "failed": 0,
        "unconfirmed": 0,
        "waiting for the window": 1,
        "waiting for the cap": 1,
        "waiting for a holiday": 0,
    }
    assert {reason: n for reason, n in steps["text"].not_sent.items() if n} == {
        "failed": 1,
        "waiting for a holiday": 1,
    }
    # The JSON that `stats --json` prints has them too.
    document = json.loads(stats.model_dump_json())
    assert document["message_steps"][0]["not_sent"]["skipped by consent"] == 2
    table = render_table(stats)
    assert "message steps: sent, and why not" in table
    assert "    waiting for the cap" in table


async def test_participants_waiting_at_a_message_step_say_what_they_wait_for(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
) -> None:
    """Reached at night, a message step waits for the sending window; its message sent, the
    next one waits for the frequency cap (one email a day), then for the window again. The
    participant's row says which, and the statistics count it at the step."""
    env = time_skipping_env
    tuesday_night = await next_weekday(env, 1, 22)
    flow = two_emails(
        scheduled_start=tuesday_night.isoformat(),
        sending_window={"weekdays": "all_days", "start": "08:00", "end": "17:00"},
    )
    sending = SendingSettings(
        frequency_caps=[FrequencyCap(channel="email", max_messages=1, days=1)]
    )
    activities = activities_for(engine, smtp_inbox.settings, sending=sending)

    async def skip_to(local: datetime) -> None:
        await env.sleep(local.replace(tzinfo=STOCKHOLM) - await env.get_current_time())

    def waiting(step_id: str) -> dict[str, int]:
        (step,) = [
            m for m in flow_statistics(engine, flow, 1).message_steps if m.step_id == step_id
        ]
        return {reason: n for reason, n in step.not_sent.items() if n}

    async with build_worker(env.client, engine, task_queue=task_queue, activities=activities):
        handle = await start(env, task_queue, flow, contact_named(engine, "Karin"))
        await skip_to(tuesday_night + timedelta(minutes=1))
        state = await waiting_at(handle, "one")
        assert state.waiting_for is WaitReason.sending_window
        assert waiting("one") == {"waiting for the window": 1}

        await skip_to(tuesday_night.replace(hour=8, minute=1) + timedelta(days=1))
        state = await waiting_at(handle, "two")
        assert state.waiting_for is WaitReason.frequency_cap
        assert state.wait_until == (tuesday_night.replace(hour=0) + timedelta(days=2)).replace(
            tzinfo=STOCKHOLM
        )
        assert waiting("two") == {"waiting for the cap": 1}

        state = await handle.result()
    assert state.status is ParticipantStatus.finished
    assert len(smtp_inbox.messages()) == 2
    done = next(v.entered_at for v in state.trail if v.step == "done").astimezone(STOCKHOLM)
    assert (done.date(), done.hour) == ((tuesday_night + timedelta(days=2)).date(), 8)


async def test_a_message_held_by_a_closed_day_waits_for_a_holiday(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
) -> None:
    """Reached on Tuesday night, a message step would send when the window opens on Wednesday
    morning; the flow closes that Wednesday, so it waits until Thursday: for a holiday, as the
    participant's row and the statistics say."""
    env = time_skipping_env
    tuesday_night = await next_weekday(env, 1, 22)
    wednesday = (tuesday_night + timedelta(days=1)).date()
    flow = two_emails(
        scheduled_start=tuesday_night.isoformat(),
        sending_window={"weekdays": "all_days", "start": "08:00", "end": "17:00"},
        holidays={"closed_dates": [wednesday.isoformat()]},
    )
    async with build_worker(env.client, engine, task_queue=task_queue):
        handle = await start(env, task_queue, flow, contact_named(engine, "Karin"))
        await env.sleep(tuesday_night.replace(tzinfo=STOCKHOLM) - await env.get_current_time())
        state = await waiting_at(handle, "one")
        assert state.waiting_for is WaitReason.holiday
        assert state.wait_until == tuesday_night.replace(hour=8, tzinfo=STOCKHOLM) + timedelta(
            days=2
        )
        (step,) = [m for m in flow_statistics(engine, flow, 1).message_steps if m.step_id == "one"]
        assert step.not_sent["waiting for a holiday"] == 1
        await handle.terminate()
