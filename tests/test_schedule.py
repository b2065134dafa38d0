"""Tests for models.schedule: calendar and time-zone maths (no Temporal needed).

Europe/Stockholm 2026: clocks go 02:00 CET -> 03:00 CEST on Sun 29 Mar and
03:00 CEST -> 02:00 CET on Sun 25 Oct; in 2027 forward on Sun 28 Mar, the Sunday between Good
Friday (26 Mar) and Easter Monday (29 Mar). America/New_York moves on Sun 8 Mar 2026.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from models import schedule
from models.schedule import (
    WORKDAYS,
    ClosedDays,
    IntervalUnit,
    add_interval,
    closed_days_between,
    describe_instant,
    holiday_calendar_problem,
    is_workday,
    local_to_instant,
    next_window_opening,
)

STHLM = "Europe/Stockholm"
NY = "America/New_York"
OFFICE_HOURS = (WORKDAYS, time(8, 0), time(17, 0))


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, tz: str = STHLM) -> datetime:
    """Aware datetime with the given wall-clock time in ``tz``."""
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz))


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def assert_utc(result: datetime | None) -> datetime:
    """Results must be aware and in UTC, not just the right instant."""
    assert result is not None
    assert result.tzinfo is UTC
    return result


# --- is_workday / WORKDAYS -------------------------------------------------------------


def test_workdays_are_monday_to_friday() -> None:
    assert frozenset({0, 1, 2, 3, 4}) == WORKDAYS


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 3, 2), True),  # Mon
        (date(2026, 3, 4), True),  # Wed
        (date(2026, 3, 6), True),  # Fri
        (date(2026, 3, 7), False),  # Sat
        (date(2026, 3, 8), False),  # Sun
    ],
)
def test_is_workday(day: date, expected: bool) -> None:
    assert is_workday(day) is expected


# --- add_interval: working_days ------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "amount", "expected"),
    [
        pytest.param(local(2026, 3, 6, 10, 15), 3, local(2026, 3, 11, 10, 15), id="fri+3=wed"),
        pytest.param(local(2026, 3, 6, 10, 15), 1, local(2026, 3, 9, 10, 15), id="fri+1=mon"),
        pytest.param(local(2026, 3, 7, 10, 15), 1, local(2026, 3, 9, 10, 15), id="sat+1=mon"),
        pytest.param(local(2026, 3, 8, 10, 15), 1, local(2026, 3, 9, 10, 15), id="sun+1=mon"),
        pytest.param(local(2026, 3, 7, 10, 15), 5, local(2026, 3, 13, 10, 15), id="sat+5=fri"),
        pytest.param(local(2026, 3, 2, 9, 0), 5, local(2026, 3, 9, 9, 0), id="mon+5=mon"),
        pytest.param(local(2026, 3, 2, 9, 0), 10, local(2026, 3, 16, 9, 0), id="mon+10"),
        pytest.param(local(2026, 3, 9, 9, 0), -1, local(2026, 3, 6, 9, 0), id="mon-1=fri"),
        pytest.param(local(2026, 3, 8, 9, 0), -1, local(2026, 3, 6, 9, 0), id="sun-1=fri"),
    ],
)
def test_add_working_days(start: datetime, amount: int, expected: datetime) -> None:
    assert assert_utc(add_interval(start, amount, "working_days", STHLM)) == expected


def test_working_days_keep_wall_clock_across_dst() -> None:
    # Fri 27 Mar 09:00 CET (08:00 UTC) + 1 working day = Mon 30 Mar 09:00 CEST (07:00 UTC).
    result = add_interval(local(2026, 3, 27, 9, 0), 1, "working_days", STHLM)
    assert assert_utc(result) == utc(2026, 3, 30, 7, 0)


def test_working_days_count_in_the_given_zone() -> None:
    # Fri 23:30 UTC is already Saturday 00:30 in Stockholm, so +1 working day is Monday.
    result = add_interval(utc(2026, 3, 6, 23, 30), 1, "working_days", STHLM)
    assert assert_utc(result) == local(2026, 3, 9, 0, 30)
    # In UTC it is still Friday, so +1 working day is Monday as well, but at 23:30 UTC.
    assert add_interval(utc(2026, 3, 6, 23, 30), 1, "working_days", "UTC") == utc(
        2026, 3, 9, 23, 30
    )
    # Thu 23:30 UTC is Fri in Stockholm: +1 working day is Monday there, Friday in UTC.
    assert add_interval(utc(2026, 3, 5, 23, 30), 1, "working_days", STHLM) == local(
        2026, 3, 9, 0, 30
    )
    assert add_interval(utc(2026, 3, 5, 23, 30), 1, "working_days", "UTC") == utc(
        2026, 3, 6, 23, 30
    )


# --- add_interval: zero, exact and calendar units -----------------------------------


@pytest.mark.parametrize("unit", ["minutes", "hours", "days", "working_days", "weeks"])
@pytest.mark.parametrize(
    "start",
    [local(2026, 3, 7, 10, 15), utc(2026, 3, 29, 1, 30), local(2026, 3, 4, 8, 0, tz=NY)],
)
def test_zero_amount_returns_start(start: datetime, unit: IntervalUnit) -> None:
    assert assert_utc(add_interval(start, 0, unit, STHLM)) == start


@pytest.mark.parametrize(
    ("amount", "unit", "expected"),
    [
        # 01:30 CET on the spring-forward night (00:30 UTC); elapsed time ignores the jump.
        (60, "minutes", utc(2026, 3, 29, 1, 30)),
        (90, "minutes", utc(2026, 3, 29, 2, 0)),
        (-45, "minutes", utc(2026, 3, 28, 23, 45)),
        (2, "hours", utc(2026, 3, 29, 2, 30)),
        (24, "hours", utc(2026, 3, 30, 0, 30)),
    ],
)
def test_minutes_and_hours_are_exact_elapsed_time(
    amount: int, unit: IntervalUnit, expected: datetime
) -> None:
    start = local(2026, 3, 29, 1, 30)
    result = assert_utc(add_interval(start, amount, unit, STHLM))
    assert result == expected
    assert result - start == timedelta(**{unit: amount})


def test_one_hour_over_spring_forward_reads_two_hours_on_the_wall() -> None:
    result = add_interval(local(2026, 3, 29, 1, 30), 1, "hours", STHLM)
    assert result.astimezone(ZoneInfo(STHLM)).time() == time(3, 30)


@pytest.mark.parametrize(
    ("start", "amount", "unit", "expected", "elapsed"),
    [
        pytest.param(
            local(2026, 3, 28, 9, 0),
            1,
            "days",
            local(2026, 3, 29, 9, 0),
            timedelta(hours=23),
            id="day-over-spring-forward",
        ),
        pytest.param(
            local(2026, 3, 27, 9, 0),
            3,
            "days",
            local(2026, 3, 30, 9, 0),
            timedelta(hours=71),
            id="days-over-spring-forward",
        ),
        pytest.param(
            local(2026, 10, 24, 9, 0),
            1,
            "days",
            local(2026, 10, 25, 9, 0),
            timedelta(hours=25),
            id="day-over-fall-back",
        ),
        pytest.param(
            local(2026, 3, 30, 9, 0),
            -2,
            "days",
            local(2026, 3, 28, 9, 0),
            -timedelta(hours=47),
            id="days-backwards-over-dst",
        ),
        pytest.param(
            local(2026, 3, 4, 8, 0),
            1,
            "weeks",
            local(2026, 3, 11, 8, 0),
            timedelta(weeks=1),
            id="week-no-dst",
        ),
        pytest.param(
            local(2026, 3, 23, 9, 0),
            1,
            "weeks",
            local(2026, 3, 30, 9, 0),
            timedelta(weeks=1, hours=-1),
            id="week-over-spring-forward",
        ),
        pytest.param(
            local(2026, 10, 19, 9, 0),
            2,
            "weeks",
            local(2026, 11, 2, 9, 0),
            timedelta(weeks=2, hours=1),
            id="weeks-over-fall-back",
        ),
    ],
)
def test_days_and_weeks_keep_wall_clock_time(
    start: datetime, amount: int, unit: IntervalUnit, expected: datetime, elapsed: timedelta
) -> None:
    result = assert_utc(add_interval(start, amount, unit, STHLM))
    assert result == expected
    assert result - start == elapsed
    assert result.astimezone(ZoneInfo(STHLM)).time() == start.time()


def test_days_use_the_given_zone_not_the_input_zone() -> None:
    # 08:00 UTC on Sat 28 Mar is 09:00 CET; +1 day keeps 09:00 Stockholm, i.e. 07:00 UTC.
    assert add_interval(utc(2026, 3, 28, 8, 0), 1, "days", STHLM) == utc(2026, 3, 29, 7, 0)
    assert add_interval(utc(2026, 3, 28, 8, 0), 1, "days", "UTC") == utc(2026, 3, 29, 8, 0)


def test_days_landing_in_the_gap_move_forward_by_the_gap() -> None:
    # 02:30 on 29 Mar does not exist in Stockholm; it becomes 03:30 CEST (01:30 UTC).
    result = assert_utc(add_interval(local(2026, 3, 28, 2, 30), 1, "days", STHLM))
    assert result == utc(2026, 3, 29, 1, 30)
    assert result.astimezone(ZoneInfo(STHLM)).replace(tzinfo=None) == datetime(2026, 3, 29, 3, 30)


def test_days_landing_on_an_ambiguous_time_take_the_first_occurrence() -> None:
    # 02:30 on 25 Oct happens twice; the first is 02:30 CEST = 00:30 UTC.
    result = add_interval(local(2026, 10, 24, 2, 30), 1, "days", STHLM)
    assert assert_utc(result) == utc(2026, 10, 25, 0, 30)


def test_add_interval_rejects_naive_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add_interval(datetime(2026, 3, 6, 10, 15), 1, "days", STHLM)


def test_add_interval_rejects_unknown_unit() -> None:
    with pytest.raises(ValueError, match="unit"):
        add_interval(local(2026, 3, 6), 1, "months", STHLM)  # type: ignore[arg-type]


# --- local_to_instant ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("naive", "tz", "expected"),
    [
        pytest.param(datetime(2026, 3, 4, 8, 0), STHLM, utc(2026, 3, 4, 7, 0), id="cet"),
        pytest.param(datetime(2026, 7, 1, 8, 0), STHLM, utc(2026, 7, 1, 6, 0), id="cest"),
        pytest.param(datetime(2026, 7, 1, 12, 0), NY, utc(2026, 7, 1, 16, 0), id="new-york"),
        pytest.param(datetime(2026, 7, 1, 12, 0), "UTC", utc(2026, 7, 1, 12, 0), id="utc"),
        pytest.param(datetime(2026, 3, 29, 2, 30), STHLM, utc(2026, 3, 29, 1, 30), id="gap"),
        pytest.param(datetime(2026, 3, 8, 2, 30), NY, utc(2026, 3, 8, 7, 30), id="gap-new-york"),
        pytest.param(
            datetime(2026, 10, 25, 2, 30), STHLM, utc(2026, 10, 25, 0, 30), id="ambiguous"
        ),
        pytest.param(
            datetime(2026, 10, 25, 2, 30, fold=1),
            STHLM,
            utc(2026, 10, 25, 0, 30),
            id="ambiguous-fold-ignored",
        ),
    ],
)
def test_local_to_instant(naive: datetime, tz: str, expected: datetime) -> None:
    assert assert_utc(local_to_instant(naive, tz)) == expected


def test_local_to_instant_rejects_aware_input() -> None:
    with pytest.raises(ValueError, match="naive"):
        local_to_instant(utc(2026, 3, 4, 8, 0), STHLM)


# --- next_window_opening -------------------------------------------------------------


@pytest.mark.parametrize(
    "now",
    [
        pytest.param(local(2026, 3, 4, 10, 0), id="wed-mid-morning"),
        pytest.param(local(2026, 3, 4, 8, 0), id="exactly-at-start"),
        pytest.param(local(2026, 3, 4, 16, 59), id="just-before-end"),
        pytest.param(local(2026, 3, 6, 12, 0), id="friday-noon"),
        pytest.param(utc(2026, 3, 4, 9, 0), id="given-in-utc"),
    ],
)
def test_inside_window_returns_none(now: datetime) -> None:
    assert next_window_opening(now, *OFFICE_HOURS, STHLM) is None


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(local(2026, 3, 10, 22, 0), local(2026, 3, 11, 8, 0), id="tue-22-to-wed"),
        pytest.param(local(2026, 3, 6, 22, 0), local(2026, 3, 9, 8, 0), id="fri-22-to-mon"),
        pytest.param(local(2026, 3, 4, 7, 0), local(2026, 3, 4, 8, 0), id="wed-07-same-day"),
        pytest.param(local(2026, 3, 4, 0, 0), local(2026, 3, 4, 8, 0), id="midnight"),
        pytest.param(local(2026, 3, 4, 17, 0), local(2026, 3, 5, 8, 0), id="exactly-at-end"),
        pytest.param(local(2026, 3, 6, 17, 0), local(2026, 3, 9, 8, 0), id="fri-end-to-mon"),
        pytest.param(local(2026, 3, 7, 10, 0), local(2026, 3, 9, 8, 0), id="saturday"),
        pytest.param(local(2026, 3, 8, 23, 59), local(2026, 3, 9, 8, 0), id="sunday-late"),
        # Fri 18:00 CET -> Mon 08:00 CEST, i.e. 06:00 UTC after the spring-forward weekend.
        pytest.param(local(2026, 3, 27, 18, 0), utc(2026, 3, 30, 6, 0), id="over-dst"),
    ],
)
def test_outside_window_returns_next_opening(now: datetime, expected: datetime) -> None:
    assert assert_utc(next_window_opening(now, *OFFICE_HOURS, STHLM)) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(local(2026, 3, 4, 12, 0), local(2026, 3, 7, 10, 0), id="wed-to-sat"),
        pytest.param(local(2026, 3, 7, 12, 0), None, id="sat-inside"),
        pytest.param(local(2026, 3, 8, 10, 0), None, id="sun-at-start"),
        pytest.param(local(2026, 3, 7, 14, 0), local(2026, 3, 8, 10, 0), id="sat-end-to-sun"),
        pytest.param(local(2026, 3, 8, 15, 0), local(2026, 3, 14, 10, 0), id="sun-to-next-sat"),
    ],
)
def test_weekend_only_window(now: datetime, expected: datetime | None) -> None:
    result = next_window_opening(now, frozenset({5, 6}), time(10, 0), time(14, 0), STHLM)
    if expected is None:
        assert result is None
    else:
        assert assert_utc(result) == expected


def test_single_weekday_window_already_closed_today_opens_next_week() -> None:
    result = next_window_opening(local(2026, 3, 4, 18, 0), frozenset({2}), *OFFICE_HOURS[1:], STHLM)
    assert assert_utc(result) == local(2026, 3, 11, 8, 0)


def test_time_zone_decides_whether_we_are_inside() -> None:
    now = utc(2026, 3, 4, 7, 30)  # Wed: 08:30 in Stockholm, 02:30 EST in New York.
    assert next_window_opening(now, *OFFICE_HOURS, STHLM) is None
    assert assert_utc(next_window_opening(now, *OFFICE_HOURS, NY)) == utc(2026, 3, 4, 13, 0)
    # Later the same UTC day it is the other way round: closed in Stockholm, open in NY.
    later = utc(2026, 3, 4, 17, 0)  # 18:00 Stockholm, 12:00 New York.
    assert next_window_opening(later, *OFFICE_HOURS, NY) is None
    assert next_window_opening(later, *OFFICE_HOURS, STHLM) == local(2026, 3, 5, 8, 0)


def sunday_window(now: datetime, start: time, end: time) -> datetime | None:
    return next_window_opening(now, frozenset({6}), start, end, STHLM)


@pytest.mark.parametrize(
    ("now", "start", "end", "expected"),
    [
        # Sunday-only 02:30-04:00 on the spring-forward day opens at 03:30 CEST (01:30 UTC).
        pytest.param(
            local(2026, 3, 28, 12, 0),
            time(2, 30),
            time(4, 0),
            utc(2026, 3, 29, 1, 30),
            id="gap-start",
        ),
        # 03:10 CEST reads as inside 02:30-04:00 on the wall, but the window opens at 03:30.
        pytest.param(
            utc(2026, 3, 29, 1, 10),
            time(2, 30),
            time(4, 0),
            utc(2026, 3, 29, 1, 30),
            id="before-moved",
        ),
        pytest.param(utc(2026, 3, 29, 1, 30), time(2, 30), time(4, 0), None, id="at-moved-start"),
        # Wholly inside the gap: both ends move forward, 03:15-03:45 CEST.
        pytest.param(
            local(2026, 3, 28, 12, 0),
            time(2, 15),
            time(2, 45),
            utc(2026, 3, 29, 1, 15),
            id="in-gap",
        ),
        pytest.param(utc(2026, 3, 29, 1, 20), time(2, 15), time(2, 45), None, id="in-moved-window"),
        # 02:30-03:00 resolves to 03:30-03:00 CEST: empty that day, so next Sunday.
        pytest.param(
            local(2026, 3, 28, 12, 0),
            time(2, 30),
            time(3, 0),
            local(2026, 4, 5, 2, 30),
            id="emptied",
        ),
        # Fall-back: 02:00-02:30 is the first occurrence (CEST); the repeat in CET is outside.
        pytest.param(
            utc(2026, 10, 25, 0, 10), time(2, 0), time(2, 30), None, id="first-occurrence"
        ),
        pytest.param(
            utc(2026, 10, 25, 1, 10), time(2, 0), time(2, 30), local(2026, 11, 1, 2, 0), id="repeat"
        ),
    ],
)
def test_window_across_dst_transitions(
    now: datetime, start: time, end: time, expected: datetime | None
) -> None:
    result = sunday_window(now, start, end)
    if expected is None:
        assert result is None
    else:
        assert assert_utc(result) == expected


@pytest.mark.parametrize(
    ("weekdays", "start", "end", "match"),
    [
        pytest.param(WORKDAYS, time(17, 0), time(8, 0), "before end", id="start-after-end"),
        pytest.param(WORKDAYS, time(8, 0), time(8, 0), "before end", id="empty-window"),
        pytest.param(WORKDAYS, time(22, 0), time(2, 0), "before end", id="overnight"),
        pytest.param(frozenset[int](), time(8, 0), time(17, 0), "empty", id="no-weekdays"),
        pytest.param(frozenset({7}), time(8, 0), time(17, 0), "0..6", id="weekday-7"),
        pytest.param(frozenset({-1, 0}), time(8, 0), time(17, 0), "0..6", id="weekday-neg"),
        pytest.param(
            WORKDAYS, time(8, 0, tzinfo=UTC), time(17, 0), "naive", id="aware-window-time"
        ),
    ],
)
def test_invalid_window_raises(
    weekdays: frozenset[int], start: time, end: time, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        next_window_opening(local(2026, 3, 4, 10, 0), weekdays, start, end, STHLM)


def test_next_window_opening_rejects_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_window_opening(datetime(2026, 3, 4, 10, 0), *OFFICE_HOURS, STHLM)


# --- describe_instant ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "tz", "expected"),
    [
        (utc(2026, 3, 4, 7, 0), STHLM, "Wed 4 Mar 2026 08:00 Europe/Stockholm"),
        (utc(2026, 3, 4, 7, 0), NY, "Wed 4 Mar 2026 02:00 America/New_York"),
        (utc(2026, 3, 4, 7, 0), "UTC", "Wed 4 Mar 2026 07:00 UTC"),
        (utc(2026, 7, 12, 22, 5), STHLM, "Mon 13 Jul 2026 00:05 Europe/Stockholm"),
        (local(2026, 12, 31, 23, 59), STHLM, "Thu 31 Dec 2026 23:59 Europe/Stockholm"),
        (utc(2026, 3, 29, 1, 30), STHLM, "Sun 29 Mar 2026 03:30 Europe/Stockholm"),
    ],
)
def test_describe_instant(instant: datetime, tz: str, expected: str) -> None:
    assert describe_instant(instant, tz) == expected


def test_describe_instant_rejects_naive() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        describe_instant(datetime(2026, 3, 4, 8, 0), STHLM)


# --- closed days: holiday calendars and the flow's own dates --------------------------------

SWEDEN = ClosedDays("SE")


@pytest.mark.parametrize(
    ("day", "name"),
    [
        (date(2026, 1, 1), "New Year's Day"),
        (date(2026, 1, 6), "Epiphany"),
        (date(2026, 4, 3), "Good Friday"),
        (date(2026, 4, 6), "Easter Monday"),
        (date(2026, 5, 1), "May Day"),
        (date(2026, 5, 14), "Ascension Day"),
        (date(2026, 6, 6), "National Day"),
        # The days Swedish law treats as Sundays: closed too.
        (date(2026, 6, 19), "Midsummer Eve"),
        (date(2026, 12, 24), "Christmas Eve"),
        (date(2026, 12, 25), "Christmas Day"),
        (date(2026, 12, 26), "Second Day of Christmas"),
        (date(2026, 12, 31), "New Year's Eve"),
        (date(2027, 1, 1), "New Year's Day"),
        # Ordinary days, and ordinary Sundays (the package can list every Sunday: not here).
        (date(2026, 6, 18), None),
        (date(2026, 12, 23), None),
        (date(2026, 3, 1), None),
        (date(2026, 11, 29), None),
    ],
)
def test_the_swedish_calendar_closes_holidays_and_their_eves(day: date, name: str | None) -> None:
    assert SWEDEN.name(day) == name
    assert (day in SWEDEN) is (name is not None)


def test_norway_lists_no_ordinary_sundays_either() -> None:
    norway = ClosedDays("NO")
    assert date(2026, 5, 17) in norway  # Constitution Day, a Sunday in 2026
    assert date(2026, 3, 1) not in norway  # an ordinary Sunday


def test_a_subdivision_adds_its_own_holidays() -> None:
    epiphany = date(2027, 1, 6)  # a Wednesday: closed in Bavaria, not in Berlin
    assert epiphany in ClosedDays("DE", "BY")
    assert epiphany not in ClosedDays("DE", "BE")
    assert is_workday(epiphany, ClosedDays("DE", "BE"))
    assert not is_workday(epiphany, ClosedDays("DE", "BY"))


def test_the_flows_own_dates_are_closed_with_or_without_a_country() -> None:
    own = ClosedDays(dates=frozenset({date(2026, 12, 28)}))
    assert own.name(date(2026, 12, 28)) == "closed by the flow"
    assert date(2026, 12, 29) not in own
    both = ClosedDays("SE", dates=frozenset({date(2026, 12, 28)}))
    assert [day.day for day in (date(2026, 12, d) for d in range(24, 32)) if day in both] == [
        24,
        25,
        26,
        28,
        31,
    ]


def test_holiday_names_do_not_follow_the_hosts_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.setenv(variable, "sv_SE.UTF-8")
    schedule._holidays.cache_clear()
    try:
        assert ClosedDays("SE").name(date(2026, 6, 19)) == "Midsummer Eve"
    finally:
        schedule._holidays.cache_clear()


def test_the_year_end_wait_from_new_years_eve_continues_on_monday() -> None:
    # Thu 31 Dec is closed itself; Fri 1 Jan is New Year's Day; then the weekend.
    start = local(2026, 12, 31, 10, 0)
    result = assert_utc(add_interval(start, 1, "working_days", STHLM, SWEDEN))
    assert result == local(2027, 1, 4, 10, 0)
    assert describe_instant(result, STHLM) == "Mon 4 Jan 2027 10:00 Europe/Stockholm"
    # Without the calendar it lands on New Year's Day.
    assert add_interval(start, 1, "working_days", STHLM) == local(2027, 1, 1, 10, 0)
    skipped = list(closed_days_between(start, result, STHLM, SWEDEN))
    assert skipped == [(date(2027, 1, 1), "New Year's Day")]


def test_working_days_over_easter_and_spring_forward() -> None:
    # Thu 25 Mar 2027 09:00 CET; Good Friday, the DST weekend and Easter Monday are skipped.
    result = add_interval(local(2027, 3, 25, 9, 0), 1, "working_days", STHLM, SWEDEN)
    assert result == utc(2027, 3, 30, 7, 0)  # Tue 09:00 CEST
    assert result == local(2027, 3, 30, 9, 0)


def test_working_days_over_a_closed_date_and_fall_back() -> None:
    closed = ClosedDays(dates=frozenset({date(2026, 10, 23)}))
    result = add_interval(local(2026, 10, 22, 10, 0), 1, "working_days", STHLM, closed)
    assert result == utc(2026, 10, 26, 9, 0)  # Mon 10:00 CET, 25 hours' weekend between


def test_working_days_backwards_skip_holidays_too() -> None:
    result = add_interval(local(2027, 1, 4, 9, 0), -1, "working_days", STHLM, SWEDEN)
    assert result == local(2026, 12, 30, 9, 0)


def test_calendar_units_other_than_working_days_ignore_the_calendar() -> None:
    start = local(2026, 12, 23, 9, 0)
    assert add_interval(start, 1, "days", STHLM, SWEDEN) == local(2026, 12, 24, 9, 0)
    assert add_interval(start, 1, "weeks", STHLM, SWEDEN) == local(2026, 12, 30, 9, 0)
    assert add_interval(start, 30, "hours", STHLM, SWEDEN) == utc(2026, 12, 24, 14, 0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # The window would open on Christmas Eve: it opens after Christmas instead.
        pytest.param(local(2026, 12, 23, 18, 0), local(2026, 12, 28, 8, 0), id="christmas"),
        pytest.param(local(2026, 12, 24, 7, 0), local(2026, 12, 28, 8, 0), id="on-the-eve"),
        # Inside the hours, but on a closed day: wait for the next open one.
        pytest.param(local(2026, 12, 31, 10, 0), local(2027, 1, 4, 8, 0), id="new-years-eve"),
        pytest.param(local(2026, 6, 19, 9, 0), local(2026, 6, 22, 8, 0), id="midsummer-eve"),
        # Good Friday to Easter Monday over spring-forward: Tue 08:00 CEST is 06:00 UTC.
        pytest.param(local(2027, 3, 25, 18, 0), utc(2027, 3, 30, 6, 0), id="easter-dst"),
        pytest.param(local(2026, 12, 30, 10, 0), None, id="open-day"),
    ],
)
def test_a_sending_window_stays_shut_on_closed_days(
    now: datetime, expected: datetime | None
) -> None:
    result = next_window_opening(now, *OFFICE_HOURS, STHLM, SWEDEN)
    if expected is None:
        assert result is None
    else:
        assert assert_utc(result) == expected


def test_a_window_on_every_day_is_open_on_sundays_but_not_on_holidays() -> None:
    every_day = (frozenset(range(7)), time(8, 0), time(17, 0))
    sunday = local(2026, 11, 29, 9, 0)
    assert next_window_opening(sunday, *every_day, STHLM, SWEDEN) is None
    christmas_day = local(2026, 12, 25, 9, 0)
    assert next_window_opening(christmas_day, *every_day, STHLM, SWEDEN) == local(
        2026, 12, 27, 8, 0
    )


def test_a_window_shut_for_a_year_is_an_error() -> None:
    closed = ClosedDays(dates=frozenset(date(2027, 1, 1) + timedelta(days=n) for n in range(400)))
    with pytest.raises(ValueError, match="does not open within a year"):
        next_window_opening(local(2027, 1, 1, 9, 0), *OFFICE_HOURS, STHLM, closed)


@pytest.mark.parametrize(
    ("country", "subdivision", "expected"),
    [
        ("SE", None, None),
        ("DE", "BY", None),
        ("US", "NY", None),
        ("XX", None, ("country", "no holiday calendar for 'XX'")),
        ("se", None, ("country", "no holiday calendar for 'se'")),
        ("DE", "ZZ", ("subdivision", "DE has no subdivision 'ZZ': one of BB, BE")),
        ("SE", "AB", ("subdivision", "SE's holiday calendar has no subdivisions")),
    ],
)
def test_holiday_calendar_names_are_checked(
    country: str, subdivision: str | None, expected: tuple[str, str] | None
) -> None:
    found = holiday_calendar_problem(country, subdivision)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found[0] == expected[0]
        assert found[1].startswith(expected[1])
