"""The first-available-slot search of models.diary: working hours, weekends, holidays, booked
meetings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from models.diary import first_free_slot
from models.schedule import ClosedDays

STOCKHOLM = ZoneInfo("Europe/Stockholm")
ZONE = "Europe/Stockholm"
HALF_HOUR = timedelta(minutes=30)


def at(day: str, clock: str) -> datetime:
    """A Stockholm wall-clock time as an aware instant (2026-03-02 is a Monday)."""
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=STOCKHOLM)


def local(instant: datetime | None) -> str:
    assert instant is not None
    return instant.astimezone(STOCKHOLM).strftime("%a %Y-%m-%d %H:%M")


def test_an_empty_diary_takes_the_earliest_quarter_hour() -> None:
    assert local(first_free_slot(at("2026-03-03", "10:07"), HALF_HOUR, [], ZONE)) == (
        "Tue 2026-03-03 10:15"
    )
    assert local(first_free_slot(at("2026-03-03", "10:00"), HALF_HOUR, [], ZONE)) == (
        "Tue 2026-03-03 10:00"
    )


def test_before_opening_waits_for_eight_oclock() -> None:
    assert local(first_free_slot(at("2026-03-03", "06:30"), HALF_HOUR, [], ZONE)) == (
        "Tue 2026-03-03 08:00"
    )


@pytest.mark.parametrize(
    ("earliest", "expected"),
    [
        (at("2026-03-06", "16:45"), "Mon 2026-03-09 08:00"),  # Friday: 16:45 + 30 min is too late
        (at("2026-03-06", "16:30"), "Fri 2026-03-06 16:30"),  # ends exactly at closing
        (at("2026-03-07", "11:00"), "Mon 2026-03-09 08:00"),  # Saturday
        (at("2026-03-08", "23:59"), "Mon 2026-03-09 08:00"),  # Sunday night
    ],
)
def test_the_weekend_is_skipped(earliest: datetime, expected: str) -> None:
    assert local(first_free_slot(earliest, HALF_HOUR, [], ZONE)) == expected


def test_around_existing_meetings() -> None:
    monday = "2026-03-09"
    booked = [
        (at(monday, "08:00"), at(monday, "09:00")),
        (at(monday, "09:15"), at(monday, "10:00")),
        (at(monday, "10:30"), at(monday, "11:00")),
    ]
    # 09:00-09:30 would overlap 09:15; 10:00-10:30 touches 10:30, which is fine.
    assert local(first_free_slot(at(monday, "07:00"), HALF_HOUR, booked, ZONE)) == (
        "Mon 2026-03-09 10:00"
    )
    # A quarter of an hour fits between the first two.
    assert local(first_free_slot(at(monday, "07:00"), timedelta(minutes=15), booked, ZONE)) == (
        "Mon 2026-03-09 09:00"
    )
    # An hour fits only after the third.
    assert local(first_free_slot(at(monday, "07:00"), timedelta(hours=1), booked, ZONE)) == (
        "Mon 2026-03-09 11:00"
    )


def test_a_meeting_that_ends_off_the_quarter_moves_the_next_start_to_the_quarter() -> None:
    day = "2026-03-10"
    booked = [(at(day, "08:00"), at(day, "08:50"))]
    assert local(first_free_slot(at(day, "08:00"), HALF_HOUR, booked, ZONE)) == (
        "Tue 2026-03-10 09:00"
    )


def test_across_a_weekend_and_around_meetings() -> None:
    friday, monday = "2026-03-06", "2026-03-09"
    booked = [
        (at(friday, "15:00"), at(friday, "17:00")),
        (at(monday, "08:00"), at(monday, "12:00")),
        # Booked in another zone: the diary compares instants, not wall clocks.
        (datetime(2026, 3, 9, 11, 0, tzinfo=UTC), datetime(2026, 3, 9, 12, 0, tzinfo=UTC)),
    ]
    # Friday is full from 15:00, Monday until 12:00 Stockholm, then 12:00-13:00 (11-12 UTC).
    assert local(first_free_slot(at(friday, "14:50"), HALF_HOUR, booked, ZONE)) == (
        "Mon 2026-03-09 13:00"
    )


def test_the_working_day_is_in_the_flows_time_zone() -> None:
    instant = datetime(2026, 3, 9, 13, 0, tzinfo=UTC)  # 14:00 Stockholm, 09:00 New York
    in_new_york = first_free_slot(instant, HALF_HOUR, [], "America/New_York")
    assert in_new_york == instant
    friday_evening_here = datetime(2026, 3, 6, 22, 0, tzinfo=UTC)  # 17:00 in New York
    assert local(first_free_slot(friday_evening_here, HALF_HOUR, [], ZONE)) == (
        "Mon 2026-03-09 08:00"
    )


def test_working_hours_follow_daylight_saving_time() -> None:
    # Stockholm moves to summer time on Sunday 29 March 2026: 08:00 is 07:00 UTC before, 06:00
    # after.
    before = first_free_slot(at("2026-03-27", "07:00"), HALF_HOUR, [], ZONE)
    after = first_free_slot(at("2026-03-30", "07:00"), HALF_HOUR, [], ZONE)
    assert before == datetime(2026, 3, 27, 7, 0, tzinfo=UTC)
    assert after == datetime(2026, 3, 30, 6, 0, tzinfo=UTC)


def test_a_full_diary_or_an_endless_meeting_finds_nothing() -> None:
    start = at("2026-03-09", "08:00")
    busy_week = [(start, start + timedelta(days=7))]
    assert first_free_slot(start, HALF_HOUR, busy_week, ZONE, search_days=5) is None
    assert first_free_slot(start, timedelta(hours=10), [], ZONE, search_days=14) is None


def test_naive_instants_and_empty_meetings_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        first_free_slot(datetime(2026, 3, 9, 8, 0), HALF_HOUR, [], ZONE)
    with pytest.raises(ValueError, match="some time"):
        first_free_slot(at("2026-03-09", "08:00"), timedelta(0), [], ZONE)


def test_meetings_are_not_booked_on_closed_days() -> None:
    # Wed 23 Dec 2026 after hours: Christmas Eve and Day are closed in Sweden, then the weekend,
    # and the flow closes Monday 28th itself.
    closed = ClosedDays("SE", dates=frozenset({date(2026, 12, 28)}))
    evening = at("2026-12-23", "17:30")
    assert local(first_free_slot(evening, HALF_HOUR, [], ZONE, closed=closed)) == (
        "Tue 2026-12-29 08:00"
    )
    assert local(first_free_slot(evening, HALF_HOUR, [], ZONE)) == "Thu 2026-12-24 08:00"
