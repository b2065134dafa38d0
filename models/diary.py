"""An associate's diary: where a new meeting fits (spec §3, create_follow_up).

Pure, like ``models.schedule``: callers pass the instant to search from and the appointments
already booked, so the same question always gets the same answer (an activity retried a minute
later books the same slot).

Working hours are 08:00 to 17:00, Monday to Friday, in the flow's time zone, except on the flow's
closed days (its holiday calendar). Meetings start on a
quarter hour counted from the opening of the day, never overlap a booked appointment (touching
one is fine), and never run past the close of the day.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta

from models.schedule import NOTHING_CLOSED, ClosedDays, is_workday, local_date, local_to_instant

WORKING_DAY_START = time(8, 0)
WORKING_DAY_END = time(17, 0)
SLOT = timedelta(minutes=15)
SEARCH_DAYS = 366  # a diary without room for a year is full: the caller reports it

Interval = tuple[datetime, datetime]


def working_day_length() -> timedelta:
    return datetime.combine(datetime.min, WORKING_DAY_END) - datetime.combine(
        datetime.min, WORKING_DAY_START
    )


def _aligned(instant: datetime, opening: datetime, step: timedelta) -> datetime:
    """``instant`` moved forward to the next ``opening + k * step``."""
    if instant <= opening:
        return opening
    steps = -((opening - instant) // step)  # ceiling division of timedeltas
    return opening + steps * step


def first_free_slot(
    earliest: datetime,
    duration: timedelta,
    busy: Iterable[Interval],
    time_zone: str,
    *,
    search_days: int = SEARCH_DAYS,
    closed: ClosedDays = NOTHING_CLOSED,
) -> datetime | None:
    """The first start at or after ``earliest`` where a meeting of ``duration`` fits the working
    hours of a working day (not ``closed``) and overlaps none of the ``busy`` intervals; None if
    there is none within
    ``search_days`` days. Instants are aware; the result is UTC."""
    if earliest.tzinfo is None:
        raise ValueError(f"earliest must be timezone-aware, got {earliest!r}")
    if duration <= timedelta(0):
        raise ValueError("a meeting takes some time")
    earliest = earliest.astimezone(UTC)
    booked = sorted(
        (start.astimezone(UTC), end.astimezone(UTC)) for start, end in busy if end > start
    )
    first_day = local_date(earliest, time_zone)
    for offset in range(search_days + 1):
        day = first_day + timedelta(days=offset)
        if not is_workday(day, closed):
            continue
        opening = local_to_instant(datetime.combine(day, WORKING_DAY_START), time_zone)
        closing = local_to_instant(datetime.combine(day, WORKING_DAY_END), time_zone)
        start = _aligned(earliest, opening, SLOT)
        while start + duration <= closing:
            end = start + duration
            clash = next((b for b in booked if b[0] < end and b[1] > start), None)
            if clash is None:
                return start
            start = _aligned(clash[1], opening, SLOT)
    return None
