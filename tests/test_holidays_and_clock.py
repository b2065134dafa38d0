"""A flow's holiday calendar and the recipient's clock, through the participant workflow on the
time-skipping server (sandboxed, as every test runs it) and through `starter.py simulate`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import starter
from control.dry_run import dry_run
from control.flows import deploy_flow
from models.crm import Contact, FollowUp
from models.database import session
from models.participant import ParticipantState
from models.payloads import DATA_CONVERTER
from models.schedule import describe_day
from models.settings import Settings
from models.time_zones import RecipientZone
from testkit.servers import start_time_skipping_server
from tests.test_participant import STOCKHOLM, entered, first_contact, flow_of, start
from worker import build_worker

NEW_YORK = ZoneInfo("America/New_York")
EMAIL = {"subscription_type": "newsletter", "from": {"address": "news@example.com"}}


@pytest.fixture(scope="module")
async def calendar_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own, its clock near today's: the session's has
    been moved on by other tests, years at times, past the years the calendars know."""
    env = await start_time_skipping_server()
    yield env
    await env.shutdown()


def swedish_closed_days(year: int) -> set[date]:
    """What Sweden closes, asked of the holidays package directly: public holidays and the days
    the law treats as such (Midsummer Eve, Christmas Eve, New Year's Eve)."""
    found = holidays.country_holidays("SE", years=year, categories=("public", "de_facto"))
    return set(found)


def open_for_work(day: date) -> bool:
    return day.weekday() < 5 and day not in swedish_closed_days(day.year)


def a_holiday_after_a_working_day(after: date) -> date:
    """The first Swedish holiday on a weekday, after ``after``, whose eve is a working day."""
    for offset in range(366):
        day = after + timedelta(days=offset)
        eve = day - timedelta(days=1)
        if day.weekday() < 5 and not open_for_work(day) and open_for_work(eve):
            return day
    raise AssertionError(f"no Swedish holiday on a weekday in the year after {after}")


async def summaries(handle: WorkflowHandle[Any, ParticipantState]) -> list[str]:
    converter = DATA_CONVERTER.payload_converter
    events: list[HistoryEvent] = [e async for e in handle.fetch_history_events()]
    return [
        converter.from_payload(e.user_metadata.summary, str)
        for e in events
        if e.user_metadata.HasField("summary")
    ]


async def activity_types(handle: WorkflowHandle[Any, ParticipantState]) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        async for e in handle.fetch_history_events()
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


async def test_a_working_day_wait_steps_over_a_holiday(
    calendar_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    today = (await calendar_env.get_current_time()).astimezone(STOCKHOLM).date()
    holiday = a_holiday_after_a_working_day(today + timedelta(days=7))
    eve = datetime.combine(holiday - timedelta(days=1), datetime.min.time()).replace(hour=10)
    flow = flow_of(
        [
            {
                "id": "wait",
                "type": "wait_time",
                "amount": 1,
                "unit": "working_days",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
        time_zone="Europe/Stockholm",
        holidays={"country": "SE"},
        scheduled_start=eve.isoformat(),
    )
    async with build_worker(calendar_env.client, engine, task_queue=task_queue):
        handle = await start(calendar_env, task_queue, flow, first_contact(engine))
        state = await handle.result()

    woke = entered(state, "done")
    assert entered(state, "wait") == eve
    assert woke.time() == eve.time()
    assert woke.date() > holiday  # without the calendar it would have woken on the holiday
    assert open_for_work(woke.date())
    between = [holiday + timedelta(days=n) for n in range((woke.date() - holiday).days)]
    assert not any(open_for_work(day) for day in between)
    (wait_summary,) = [s for s in await summaries(handle) if s.startswith("Wait until")]
    named = holidays.country_holidays(
        "SE", years=holiday.year, categories=("public", "de_facto"), language="en_US"
    )
    assert f"(closed: {describe_day(holiday)}, {named[holiday]}" in wait_summary


async def two_waits_until_nine(env: WorkflowEnvironment, zone: ZoneInfo) -> list[datetime]:
    """09:00 local a week and eight days after the test server's clock."""
    today = (await env.get_current_time()).astimezone(zone).date()
    return [
        datetime.combine(today + timedelta(days=days), datetime.min.time()).replace(hour=9)
        for days in (7, 8)
    ]


def waits_until(first: datetime, second: datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": "one",
            "type": "wait_time",
            "mode": "until",
            "until": first.isoformat(),
            "next": "two",
        },
        {
            "id": "two",
            "type": "wait_time",
            "mode": "until",
            "until": second.isoformat(),
            "next": "done",
        },
        {"id": "done", "type": "finish"},
    ]


def woke(run: ParticipantState, step_id: str, zone: ZoneInfo) -> datetime:
    visit = next(v.entered_at for v in run.trail if v.step == step_id)
    return visit.astimezone(zone).replace(tzinfo=None, microsecond=0)


async def test_waits_until_a_date_read_the_contacts_clock_asked_once(
    calendar_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    contact_id = first_contact(engine)
    with session(engine) as db:
        contact = db.get(Contact, contact_id)
        assert contact is not None
        contact.extra_fields["time_zone"] = "America/New_York"
        db.commit()
    async with build_worker(calendar_env.client, engine, task_queue=task_queue):
        first, second = await two_waits_until_nine(calendar_env, NEW_YORK)
        theirs = await start(
            calendar_env,
            task_queue,
            flow_of(waits_until(first, second), recipient_clock={}),
            contact_id,
        )
        state = await theirs.result()
        # The same flow without a recipient clock reads the flow's zone and asks nothing.
        here, there = await two_waits_until_nine(calendar_env, STOCKHOLM)
        ours = await start(calendar_env, task_queue, flow_of(waits_until(here, there)), 1)
        as_before = await ours.result()

    assert woke(state, "two", NEW_YORK) == first
    assert woke(state, "done", NEW_YORK) == second
    assert state.recipient_zone == RecipientZone(
        time_zone="America/New_York", source="field", field="contact.extra.time_zone"
    )
    assert (await activity_types(theirs)).count("find_time_zone") == 1
    told = await summaries(theirs)
    assert f"Find the time zone of contact {contact_id}" in told
    assert sum(s.endswith("09:00 America/New_York (the contact's clock)") for s in told) == 2

    assert woke(as_before, "done", STOCKHOLM) == there
    assert as_before.recipient_zone is None
    assert "find_time_zone" not in await activity_types(ours)
    assert any(s.endswith("09:00 Europe/Stockholm") for s in await summaries(ours))


def _simulate(
    flow_id: str, contact_id: int, at: datetime, capsys: pytest.CaptureFixture[str]
) -> str:
    code = starter.main(["simulate", flow_id, "--contact", str(contact_id), "--at", at.isoformat()])
    assert code == 0
    return capsys.readouterr().out


async def test_simulate_shows_the_year_end_skip(
    engine: Engine,
    settings_env: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow_id = f"year-end-{uuid.uuid4().hex[:6]}"
    document: dict[str, Any] = {
        "id": flow_id,
        "name": "Year end",
        "time_zone": "Europe/Stockholm",
        "holidays": {"country": "SE"},
        "start": "wait",
        "steps": [
            {
                "id": "wait",
                "type": "wait_time",
                "amount": 1,
                "unit": "working_days",
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }
    deploy_flow(engine, document)
    settings_env(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    # The next New Year's Eve at least a day ahead (Thu 31 Dec 2026 when this was written).
    now = datetime.now(STOCKHOLM)
    year = now.year if now.date() < date(now.year, 12, 30) else now.year + 1
    eve = datetime(year, 12, 31, 10, 0)
    after = date(year + 1, 1, 2)  # New Year's Day is closed: the first weekday after it
    while after.weekday() >= 5:
        after += timedelta(days=1)
    text = await asyncio.to_thread(_simulate, flow_id, first_contact(engine), eve, capsys)

    skipped = "" if date(year + 1, 1, 1).weekday() >= 5 else " (closed: "
    expected = f"Wait until {describe_day(after)} {year + 1} 10:00 Europe/Stockholm{skipped}"
    assert expected in text, text
    if year == 2026:
        assert (
            "⏸ Wait until Mon 4 Jan 2027 10:00 Europe/Stockholm "
            "(closed: Fri 1 Jan, New Year's Day) (4 d)"
        ) in text


async def test_simulate_shows_the_contacts_clock(
    engine: Engine,
    settings_env: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow_id = f"their-clock-{uuid.uuid4().hex[:6]}"
    contact_id = first_contact(engine)
    with session(engine) as db:
        contact = db.exec(select(Contact).where(Contact.id == contact_id)).one()
        contact.extra_fields["time_zone"] = "America/New_York"
        db.commit()
    document: dict[str, Any] = {
        "id": flow_id,
        "name": "Their clock",
        "time_zone": "Europe/Stockholm",
        "email": EMAIL,
        "sending_window": {"weekdays": "workdays", "start": "08:00", "end": "17:00"},
        "recipient_clock": {},
        "start": "mail",
        "steps": [
            {"id": "mail", "type": "send_email", "subject": "Hi", "text": "Hi", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
    }
    deploy_flow(engine, document)
    settings_env(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    # A Tuesday 10:00 in Stockholm a week ahead: 04:00 in New York, before their window opens.
    day = datetime.now(STOCKHOLM).date() + timedelta(days=7)
    while day.weekday() != 1:
        day += timedelta(days=1)
    tuesday = datetime.combine(day, datetime.min.time()).replace(hour=10)
    text = await asyncio.to_thread(_simulate, flow_id, contact_id, tuesday, capsys)

    assert (
        "The sending window and waits until a date read the contact's clock: "
        "America/New_York, from contact.extra.time_zone."
    ) in text
    assert "08:00 America/New_York (the contact's clock)" in text
    opened = datetime.combine(day, datetime.min.time()).replace(hour=8, tzinfo=NEW_YORK)
    assert opened.astimezone(STOCKHOLM).strftime("%H:%M") in text  # the send, in flow time


async def test_follow_ups_skip_the_flows_closed_days(
    calendar_env: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    # A Tuesday a week ahead, and the Wednesday after it closed by the flow.
    day = (await calendar_env.get_current_time()).astimezone(STOCKHOLM).date()
    day += timedelta(days=7)
    while day.weekday() != 1 or not open_for_work(day) or not open_for_work(day + timedelta(1)):
        day += timedelta(days=1)
    closed, after = day + timedelta(days=1), day + timedelta(days=2)
    later = {"amount": 1, "unit": "working_days"}
    follow_up = {"type": "create_follow_up", "follow_up_type": "Meeting", "after": later}
    flow = flow_of(
        [
            {**follow_up, "id": "todo", "title": "Call", "next": "meeting"},
            {**follow_up, "id": "meeting", "title": "Demo", "kind": "meeting", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
        holidays={"closed_dates": [closed.isoformat()]},
        scheduled_start=datetime.combine(day, datetime.min.time()).replace(hour=10).isoformat(),
    )
    async with build_worker(calendar_env.client, engine, task_queue=task_queue):
        handle = await start(calendar_env, task_queue, flow, first_contact(engine))
        await handle.result()
    with session(engine) as db:
        booked = {f.title: f.starts_at for f in db.exec(select(FollowUp))}
    assert booked["Call"] is not None and booked["Demo"] is not None
    assert booked["Call"].astimezone(STOCKHOLM).date() == after
    meeting = booked["Demo"].astimezone(STOCKHOLM)
    # The first quarter hour from the moment the step ran (10:00 and the milliseconds after).
    assert (meeting.date(), meeting.strftime("%H:%M")) in {(after, "10:00"), (after, "10:15")}


@pytest.mark.parametrize("open_on_holidays", [False, True])
async def test_the_sending_window_stays_shut_on_closed_days_unless_told(
    engine: Engine, open_on_holidays: bool
) -> None:
    # A Monday evening a week ahead; the flow closes the Tuesday after it.
    day = datetime.now(STOCKHOLM).date() + timedelta(days=7)
    while day.weekday() != 0 or not all(open_for_work(day + timedelta(n)) for n in range(3)):
        day += timedelta(days=1)
    closed = day + timedelta(days=1)
    window = {"weekdays": "workdays", "start": "08:00", "end": "17:00"}
    document: dict[str, Any] = {
        "id": f"shut-{uuid.uuid4().hex[:6]}",
        "name": "Shut on closed days",
        "time_zone": "Europe/Stockholm",
        "email": EMAIL,
        "sending_window": {**window, "open_on_holidays": open_on_holidays},
        "holidays": {"closed_dates": [closed.isoformat()]},
        "start": "mail",
        "steps": [
            {"id": "mail", "type": "send_email", "subject": "Hi", "text": "Hi", "next": "done"},
            {"id": "done", "type": "finish"},
        ],
    }
    deploy_flow(engine, document)
    evening = datetime.combine(day, datetime.min.time()).replace(hour=18)
    run = await dry_run(engine, document["id"], first_contact(engine), start_at=evening)
    (sent,) = [call for call in run.captured if call.activity == "send_email"]
    opened = sent.at.astimezone(STOCKHOLM)
    assert opened.strftime("%H:%M") == "08:00"
    assert opened.date() == (closed if open_on_holidays else closed + timedelta(days=1))
