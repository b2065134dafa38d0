"""Frequency caps: the calendar maths, the count-and-claim under concurrency on both database
backends, and participants of several flows held to one workspace-wide cap."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from models.database import session
from models.engine import CountedSend, Delivery, ParticipantStatus
from models.flow import Flow
from models.frequency_caps import (
    Capping,
    FrequencyCap,
    allowed_from,
    counting_zone,
    held_until,
    window_start,
)
from models.ledger import DeliveryOutcome, DeliveryStatus, claiming
from models.send_counts import claim_within_caps
from models.sending import SendingSettings
from peers.twilio_api import TwilioApiServer
from testkit.peers import Inbox, twilio_settings
from tests.test_message_steps import EMAIL_SETTINGS, contact_named
from tests.test_participant import STOCKHOLM, flow_of, next_weekday, start
from worker import activities_for, build_worker

EMAIL_2_IN_7 = FrequencyCap(channel="email", max_messages=2, days=7)
EMAIL_1_A_DAY = FrequencyCap(channel="email", max_messages=1, days=1)
SMS_1_A_DAY = FrequencyCap(channel="sms", max_messages=1, days=1)


def stockholm(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=STOCKHOLM)


# --- the calendar maths (pure) -----------------------------------------------------------------


def test_a_cap_counts_whole_local_days_and_frees_at_local_midnight() -> None:
    monday, wednesday_night = stockholm(2026, 3, 2, 10), stockholm(2026, 3, 4, 23, 30)
    thursday = stockholm(2026, 3, 5, 9)
    zone = "Europe/Stockholm"
    assert window_start(thursday, EMAIL_2_IN_7, zone) == stockholm(2026, 2, 27)
    assert allowed_from(thursday, [monday], EMAIL_2_IN_7, zone) is None
    # Two in the window: free when Monday's leaves it, at local midnight seven days on.
    free = allowed_from(thursday, [monday, wednesday_night], EMAIL_2_IN_7, zone)
    assert free == stockholm(2026, 3, 9) == datetime(2026, 3, 8, 23, tzinfo=UTC)
    # A message from before the window does not count.
    assert (
        allowed_from(thursday, [stockholm(2026, 2, 26, 23, 59), monday], EMAIL_2_IN_7, zone) is None
    )


def test_a_day_is_a_local_day_across_daylight_saving_time() -> None:
    zone = "Europe/Stockholm"
    # Sunday 29 March 2026 is 23 hours long: 1 SMS a day frees at Monday's local midnight.
    sunday_noon = stockholm(2026, 3, 29, 12)
    assert allowed_from(sunday_noon, [stockholm(2026, 3, 29, 0, 30)], SMS_1_A_DAY, zone) == (
        datetime(2026, 3, 29, 22, tzinfo=UTC)
    )
    # Saturday before the change: the next local midnight is still on winter time.
    saturday = stockholm(2026, 3, 28, 23)
    assert allowed_from(saturday, [stockholm(2026, 3, 28, 8)], SMS_1_A_DAY, zone) == (
        datetime(2026, 3, 28, 23, tzinfo=UTC)
    )
    # Sunday 25 October 2026 is 25 hours long.
    october = stockholm(2026, 10, 25, 20)
    assert allowed_from(october, [stockholm(2026, 10, 25, 1)], SMS_1_A_DAY, zone) == (
        datetime(2026, 10, 25, 23, tzinfo=UTC)
    )


def test_the_contacts_calendar_decides_what_today_is() -> None:
    # 00:30 in Stockholm is still the day before in New York.
    sent = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    now = datetime(2026, 3, 3, 10, tzinfo=UTC)
    assert allowed_from(now, [sent], EMAIL_1_A_DAY, "Europe/Stockholm") is not None
    assert allowed_from(now, [sent], EMAIL_1_A_DAY, "America/New_York") is None
    assert counting_zone("Europe/Stockholm", {"contact.time_zone": "America/New_York"}) == (
        "America/New_York"
    )
    assert counting_zone("Europe/Stockholm", {"contact.time_zone": "Mars/Olympus"}) == (
        "Europe/Stockholm"
    )
    assert counting_zone("Europe/Stockholm", {}) == "Europe/Stockholm"


def test_every_cap_of_a_channel_must_allow_the_message() -> None:
    zone = "Europe/Stockholm"
    now = stockholm(2026, 3, 5, 9)
    sent = [stockholm(2026, 3, 2, 10), stockholm(2026, 3, 5, 8)]
    held = held_until(now, sent, [EMAIL_1_A_DAY, EMAIL_2_IN_7], zone)
    assert held == (stockholm(2026, 3, 9), EMAIL_2_IN_7)  # the later of Friday and Monday
    assert held_until(now, sent[:1], [EMAIL_1_A_DAY, EMAIL_2_IN_7], zone) is None


# --- count and claim: one atomic step, on both backends ----------------------------------------


def _claim_at_once(
    engine: Engine, contact_id: int, keys: list[str], capping: Capping
) -> list[DeliveryOutcome | None]:
    """Every key claimed from its own thread, all released at the same moment."""
    start_together = threading.Barrier(len(keys))
    results: dict[str, DeliveryOutcome | None] = {}

    def claim(key: str) -> None:
        start_together.wait()
        results[key] = claiming(
            engine,
            key,
            lambda db: claim_within_caps(
                db,
                key,
                "email",
                "karin@example.com",
                contact_id=contact_id,
                capping=capping,
                caps=[EMAIL_2_IN_7],
                facts={},
            ),
        )

    threads = [threading.Thread(target=claim, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[key] for key in keys]


def test_sends_claimed_at_the_same_moment_never_exceed_the_cap(engine: Engine) -> None:
    karin = contact_named(engine, "Karin")
    now = stockholm(2026, 3, 5, 9)
    waiting = Capping(when_capped="wait", time_zone="Europe/Stockholm", at=now)
    keys = [f"flow-{n}/mail/1" for n in range(8)]
    outcomes = _claim_at_once(engine, karin, keys, waiting)

    assert sum(outcome is None for outcome in outcomes) == 2
    held = [outcome for outcome in outcomes if outcome is not None]
    assert {(o.status, o.retry_at) for o in held} == {
        (DeliveryStatus.capped, stockholm(2026, 3, 12))
    }
    with session(engine) as db:
        counted = db.exec(select(CountedSend)).all()
        claimed = db.exec(select(Delivery)).all()
    assert len(counted) == len(claimed) == 2  # a message held back to wait claims nothing

    # A retry of a claimed send finds its claim: never capped by its own count.
    claimed_key = keys[outcomes.index(None)]
    assert _claim_at_once(engine, karin, [claimed_key], waiting) == [None]

    # Skipping instead: the capped message is settled as capped, with the cap that held it.
    skipping = waiting.model_copy(update={"when_capped": "skip"})
    (skipped,) = _claim_at_once(engine, karin, ["flow-9/mail/1"], skipping)
    assert skipped is not None and skipped.status is DeliveryStatus.capped
    assert skipped.retry_at is None and skipped.detail == "capped: at most 2 email in 7 days"
    with session(engine) as db:
        row = db.exec(select(Delivery).where(Delivery.key == "flow-9/mail/1")).one()
    assert row.status == DeliveryStatus.capped


def test_a_message_that_did_not_reach_the_provider_stops_counting(engine: Engine) -> None:
    karin = contact_named(engine, "Karin")
    capping = Capping(when_capped="skip", time_zone="Europe/Stockholm", at=stockholm(2026, 3, 5, 9))
    assert _claim_at_once(engine, karin, ["a/mail/1", "b/mail/1"], capping) == [None, None]
    with session(engine) as db:
        row = db.exec(select(Delivery).where(Delivery.key == "a/mail/1")).one()
        row.status = DeliveryStatus.failed
        db.add(row)
    assert _claim_at_once(engine, karin, ["c/mail/1"], capping) == [None]


# --- participants of several flows -------------------------------------------------------------


def two_emails(**settings: Any) -> Flow:
    """Emails "one" and "two" in a row, then finish."""
    return flow_of(
        [
            {"id": "one", "type": "send_email", "subject": "1", "text": "1", "next": "two"},
            {"id": "two", "type": "send_email", "subject": "2", "text": "2", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
        email=EMAIL_SETTINGS,
        **settings,
    )


async def test_participants_of_two_flows_sending_at_once_share_one_cap(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
) -> None:
    """Karin enters four flows at the same moment; one email a day: one is sent, the other
    participants (their flows skip capped messages) move on with the message recorded as capped."""
    karin = contact_named(engine, "Karin")
    mail = {"id": "mail", "type": "send_email", "subject": "Hi", "text": "Hello", "next": "done"}
    flows = [
        flow_of(
            [mail, {"id": "done", "type": "finish"}],
            id=f"caps-{n}",
            email=EMAIL_SETTINGS,
            when_capped="skip",
        )
        for n in range(4)
    ]
    sending = SendingSettings(frequency_caps=[EMAIL_1_A_DAY])
    activities = activities_for(engine, smtp_inbox.settings, sending=sending)
    # The dev server, not the time-skipping one: these participants run at the same time.
    async with build_worker(dev_env.client, engine, task_queue=task_queue, activities=activities):
        handles = await asyncio.gather(*(start(dev_env, task_queue, flow, karin) for flow in flows))
        states = await asyncio.gather(*(handle.result() for handle in handles))

    assert len(smtp_inbox.messages()) == 1
    outcomes = sorted(state.trail[0].outcome for state in states)
    assert outcomes[:3] == ["email capped: capped: at most 1 email a day"] * 3, outcomes
    assert outcomes[3].startswith("email sent"), outcomes
    assert all(state.status is ParticipantStatus.finished for state in states)


async def test_a_capped_message_waits_for_local_midnight_and_goes(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
) -> None:
    friday = await next_weekday(time_skipping_env, 4, 10)
    karin = contact_named(engine, "Karin")
    flow = two_emails(scheduled_start=friday.isoformat())
    sending = SendingSettings(frequency_caps=[EMAIL_1_A_DAY])
    activities = activities_for(engine, smtp_inbox.settings, sending=sending)
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        handle = await start(time_skipping_env, task_queue, flow, karin)
        state = await handle.result()
        timers = [
            e.user_metadata.summary.data.decode()
            async for e in handle.fetch_history_events()
            if e.HasField("timer_started_event_attributes")
        ]

    assert state.status is ParticipantStatus.finished
    assert [v.outcome.split(":")[0] for v in state.trail] == [
        "email sent",
        "email sent",
        "finished",
    ]
    assert len(smtp_inbox.messages()) == 2
    saturday = (friday + timedelta(days=1)).date()
    assert any(f"Frequency cap allows it Sat {saturday.day}" in timer for timer in timers), timers
    with session(engine) as db:
        counted = {c.key.split("/")[1]: c.counted_at for c in db.exec(select(CountedSend)).all()}
    assert counted["one"].astimezone(STOCKHOLM).date() == friday.date()
    second = counted["two"].astimezone(STOCKHOLM)
    assert (second.date(), second.hour) == (saturday, 0)  # sent at the local midnight


async def test_transactional_messages_and_notifications_are_never_capped(
    time_skipping_env: WorkflowEnvironment,
    engine: Engine,
    task_queue: str,
    smtp_inbox: Inbox,
    twilio_api: TwilioApiServer,
) -> None:
    karin = contact_named(engine, "Karin")
    flow = flow_of(
        [
            {"id": "news", "type": "send_email", "subject": "N", "text": "N", "next": "receipt"},
            {
                "id": "receipt",
                "type": "send_email",
                "subject": "Receipt",
                "text": "R",
                "transactional": True,
                "next": "tell",
            },
            {
                "id": "tell",
                "type": "notify_email",
                "to": {"addresses": ["sales@example.com"]},
                "subject": "Karin got news",
                "text": "FYI",
                "next": "text",
            },
            {"id": "text", "type": "send_sms", "text": "Hi", "next": "text-again"},
            {"id": "text-again", "type": "send_sms", "text": "Hi again", "next": "more"},
            {"id": "more", "type": "send_email", "subject": "M", "text": "M", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
        email=EMAIL_SETTINGS,
        sms_sender="Flows",
        when_capped="skip",
    )
    sending = SendingSettings(frequency_caps=[EMAIL_1_A_DAY, SMS_1_A_DAY])
    activities = activities_for(
        engine, smtp_inbox.settings, twilio_settings(twilio_api), sending=sending
    )
    async with build_worker(
        time_skipping_env.client, engine, task_queue=task_queue, activities=activities
    ):
        state = await (await start(time_skipping_env, task_queue, flow, karin)).result()

    outcomes = {v.step: v.outcome.split(":")[0] for v in state.trail}
    assert outcomes == {
        "news": "email sent",
        "receipt": "email sent",
        "tell": "email sent",
        "text": "sms sent",
        "text-again": "sms capped",
        "more": "email capped",
        "done": "finished",
    }
    assert len(smtp_inbox.messages()) == 3 and len(twilio_api.messages) == 1
    with session(engine) as db:
        counted = sorted(c.key.split("/")[1] for c in db.exec(select(CountedSend)).all())
    assert counted == ["news", "text"]
