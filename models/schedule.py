"""Calendar and time-zone maths for flows.

Pure and deterministic so it can run inside Temporal workflows (imported via
``workflow.unsafe.imports_passed_through()``) as well as in activities: nothing here reads
the clock, so callers pass the current instant in (``workflow.now()`` in a workflow).

Conventions:

* Instants are timezone-aware ``datetime``s (any zone) in, aware UTC ``datetime``s out.
  Naive instants are rejected, because guessing their zone would make results depend on
  the host.
* Local wall-clock times are resolved in an IANA zone with ``zoneinfo``. A time that does
  not exist (spring-forward gap) moves forward by the gap; an ambiguous one (fall-back)
  takes the first occurrence (``fold=0``). Both fall out of PEP 495 semantics for
  ``fold=0``, which uses the offset in force before the transition.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

__all__ = [
    "WORKDAYS",
    "IntervalUnit",
    "add_interval",
    "describe_instant",
    "is_workday",
    "local_date",
    "local_to_instant",
    "next_window_opening",
]

IntervalUnit = Literal["minutes", "hours", "days", "working_days", "weeks"]

# Monday=0 ... Sunday=6, as ``datetime.weekday()``.
WORKDAYS: frozenset[int] = frozenset({0, 1, 2, 3, 4})

# Fixed English names: ``strftime("%a")`` depends on the process locale, which would make
# workflow output differ between workers.
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)

_UNITS: frozenset[str] = frozenset(get_args(IntervalUnit))


def _require_aware(instant: datetime, name: str) -> None:
    """Reject naive datetimes: their meaning would depend on the host's zone."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {instant!r}")


def _resolve(local: datetime, zone: ZoneInfo) -> datetime:
    """Naive wall-clock time in ``zone`` -> aware UTC, with the module's gap/fold rules."""
    # fold=0 gives the pre-transition offset: gap times land after the gap, and ambiguous
    # times pick their first occurrence.
    return local.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _wall_clock(instant: datetime, zone: ZoneInfo) -> datetime:
    """Aware instant -> naive wall-clock time in ``zone``."""
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def is_workday(day: date) -> bool:
    """True for Monday to Friday (no holiday calendar)."""
    return day.weekday() in WORKDAYS


def local_to_instant(local: datetime, time_zone: str) -> datetime:
    """A naive local date-time in ``time_zone`` -> aware UTC instant.

    Gap times move forward by the gap; ambiguous times take the first occurrence.
    """
    if local.tzinfo is not None:
        raise ValueError(f"local must be a naive datetime, got {local!r}")
    return _resolve(local, ZoneInfo(time_zone))


def local_date(instant: datetime, time_zone: str) -> date:
    """The calendar date in ``time_zone`` at ``instant``."""
    _require_aware(instant, "instant")
    return _wall_clock(instant, ZoneInfo(time_zone)).date()


def add_interval(start: datetime, amount: int, unit: IntervalUnit, time_zone: str) -> datetime:
    """``start`` moved by ``amount`` units, as an aware UTC instant.

    * ``minutes``/``hours``: exact elapsed time (``time_zone`` is irrelevant).
    * ``days``/``weeks``: same wall-clock time in ``time_zone`` N calendar days/weeks later,
      so across a DST change the elapsed time is 23h or 25h.
    * ``working_days``: step one calendar day at a time, counting only Mon-Fri, until N
      are counted; keep the wall-clock time (Fri + 3 = Wed, Sat + 1 = Mon, Sun + 1 = Mon).
      A negative amount steps backwards the same way.

    ``amount`` 0 returns ``start`` (converted to UTC).
    """
    _require_aware(start, "start")
    if unit not in _UNITS:
        raise ValueError(f"unknown interval unit {unit!r}")
    if amount == 0:
        return start.astimezone(UTC)
    # Convert first: aware + timedelta in a non-UTC zone is wall-clock arithmetic in Python,
    # which would be off by an hour across a DST change.
    if unit == "minutes":
        return start.astimezone(UTC) + timedelta(minutes=amount)
    if unit == "hours":
        return start.astimezone(UTC) + timedelta(hours=amount)

    zone = ZoneInfo(time_zone)
    # Calendar units are wall-clock arithmetic: work on the naive local time, then resolve.
    local = _wall_clock(start, zone)
    if unit == "days":
        return _resolve(local + timedelta(days=amount), zone)
    if unit == "weeks":
        return _resolve(local + timedelta(weeks=amount), zone)

    # working_days
    step = timedelta(days=1 if amount > 0 else -1)
    remaining = abs(amount)
    while remaining:
        local += step
        if is_workday(local):
            remaining -= 1
    return _resolve(local, zone)


def next_window_opening(
    now: datetime,
    weekdays: frozenset[int],
    start: time,
    end: time,
    time_zone: str,
) -> datetime | None:
    """When a sending window next opens, or None if ``now`` is inside it (send now).

    The window is open on ``weekdays`` (Monday=0) from ``start`` (inclusive) to ``end``
    (exclusive) local time in ``time_zone``, with local times resolved as in
    ``local_to_instant``. Only same-day windows are supported, so ``start < end`` is
    required, as is a non-empty weekday set; otherwise ValueError.
    """
    _require_aware(now, "now")
    if not weekdays:
        raise ValueError("weekdays must not be empty")
    if not weekdays <= frozenset(range(7)):
        raise ValueError(f"weekdays must be in 0..6 (Monday=0), got {sorted(weekdays)}")
    if start.tzinfo is not None or end.tzinfo is not None:
        raise ValueError("window start/end must be naive local times")
    if not start < end:
        raise ValueError(f"window start {start} must be before end {end}")

    zone = ZoneInfo(time_zone)
    today = _wall_clock(now, zone).date()
    # Each day's window is the instants [resolve(day + start), resolve(day + end)), so the
    # gap/fold rules apply to windows too (02:30-04:00 on a spring-forward night opens at
    # 03:30; a window that resolves to nothing, e.g. 02:30-03:00, is skipped that day).
    # Windows are disjoint and in date order, so the first one not yet over decides. Start
    # at yesterday in case a gap spanning midnight pushed its window into today; run two weeks
    # in case a DST gap empties the only window of the week.
    for offset in range(-1, 15):
        day = today + timedelta(days=offset)
        if day.weekday() not in weekdays:
            continue
        opening = _resolve(datetime.combine(day, start), zone)
        closing = _resolve(datetime.combine(day, end), zone)
        if opening >= closing or now >= closing:
            continue
        return None if now >= opening else opening
    # Unreachable: a non-empty weekday set opens at least once in any two weeks.
    raise AssertionError("no window opening found within two weeks")


def describe_instant(instant: datetime, time_zone: str) -> str:
    """Human text for summaries and status, e.g. ``'Wed 4 Mar 2026 08:00 Europe/Stockholm'``."""
    _require_aware(instant, "instant")
    local = instant.astimezone(ZoneInfo(time_zone))
    return (
        f"{_DAY_NAMES[local.weekday()]} {local.day} {_MONTH_NAMES[local.month - 1]} "
        f"{local.year} {local:%H:%M} {time_zone}"
    )
