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
* Working days are Monday to Friday, less a flow's closed days (``ClosedDays``): a country's
  (or subdivision's) public holidays as the ``holidays`` package computes them, which is pure
  arithmetic on the year, plus dates the flow names itself.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from typing import Literal, get_args
from zoneinfo import ZoneInfo

import holidays
from holidays.registry import COUNTRIES
from temporalio import workflow

__all__ = [
    "WORKDAYS",
    "ClosedDays",
    "IntervalUnit",
    "add_interval",
    "closed_days_between",
    "describe_day",
    "describe_instant",
    "holiday_calendar_problem",
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


# --- closed days --------------------------------------------------------------------------------

# Besides public holidays, the days a country's law treats as holidays (Sweden: Midsummer Eve,
# Christmas Eve and New Year's Eve) are closed too, where the package knows such a category.
_CLOSING_CATEGORIES = ("public", "de_facto")
# Holiday names in English where the package has them, never in the host's locale (which the
# package would otherwise read): summaries must read the same on every worker.
_NAME_LANGUAGE = "en_US"


def _calendar_class(country: str) -> type[holidays.HolidayBase]:
    found: type[holidays.HolidayBase] = getattr(holidays, country)
    return found


@functools.cache
def _holidays(country: str, subdivision: str | None, year: int) -> Mapping[date, str]:
    """The closed days of one year, by date, with their names. Cached: it depends on nothing
    but its arguments (and the installed package), so the cache never changes an answer."""
    cls = _calendar_class(country)
    options: dict[str, bool] = {}
    # Sweden and Norway can list every Sunday as a holiday: Sundays are weekend days already
    # (an "all days" sending window means them open), so ask for holidays proper.
    if "include_sundays" in inspect.signature(cls.__init__).parameters:
        options["include_sundays"] = False
    categories = [c for c in _CLOSING_CATEGORIES if c in cls.supported_categories]
    language = _NAME_LANGUAGE if _NAME_LANGUAGE in cls.supported_languages else None
    make: Callable[..., holidays.HolidayBase] = cls  # some calendars take options of their own
    # The package names holidays through gettext, which the workflow sandbox refuses because it
    # can read the host's locale; given a language, as here, it reads only the package's own
    # catalogues. (Outside a workflow this changes nothing.)
    with workflow.unsafe.sandbox_unrestricted():
        calendar = make(
            subdiv=subdivision,
            years=year,
            categories=categories,
            language=language or cls.default_language,
            **options,
        )
    return MappingProxyType({day: str(name) for day, name in sorted(calendar.items())})


# The package's calendars by ISO 3166 alpha-2 code (its registry lists each country's class name,
# then that code, then other codes and aliases), read without importing every calendar.
CALENDARS: frozenset[str] = frozenset(codes[1] for codes in COUNTRIES.values())


def holiday_calendar_problem(country: str, subdivision: str | None) -> tuple[str, str] | None:
    """What is wrong with a holiday calendar's name, as (field, message); None if it is known."""
    if country not in CALENDARS:
        return "country", (
            f"no holiday calendar for {country!r}: use an ISO 3166 code the holidays package "
            "knows, such as SE, NO, DE or US"
        )
    subdivisions = _calendar_class(country).subdivisions
    if subdivision is not None and subdivision not in subdivisions:
        known = ", ".join(subdivisions[:12]) + (", ..." if len(subdivisions) > 12 else "")
        if not subdivisions:
            return "subdivision", f"{country}'s holiday calendar has no subdivisions"
        return "subdivision", f"{country} has no subdivision {subdivision!r}: one of {known}"
    return None


CLOSED_BY_THE_FLOW = "closed by the flow"


@dataclass(frozen=True)
class ClosedDays:
    """The days a flow treats as closed besides weekends: the public (and de facto) holidays of
    ``country`` (and ``subdivision``), if named, and the flow's own ``dates``."""

    country: str | None = None
    subdivision: str | None = None
    dates: frozenset[date] = frozenset()

    def name(self, day: date) -> str | None:
        """Why ``day`` is closed ("New Year's Day", "closed by the flow"), or None if it is
        not."""
        if self.country is not None:
            holiday = _holidays(self.country, self.subdivision, day.year).get(day)
            if holiday is not None:
                return holiday
        return CLOSED_BY_THE_FLOW if day in self.dates else None

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.name(day) is not None


NOTHING_CLOSED = ClosedDays()


def is_workday(day: date, closed: ClosedDays = NOTHING_CLOSED) -> bool:
    """True for Monday to Friday, unless ``closed`` names the day."""
    return day.weekday() in WORKDAYS and day not in closed


def closed_days_between(
    start: datetime, end: datetime, time_zone: str, closed: ClosedDays
) -> Iterator[tuple[date, str]]:
    """The closed days, with their names, on Monday to Friday after ``start``'s local date up
    to ``end``'s in ``time_zone``: what a working-day count stepped over."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    day, last = local_date(start, time_zone), local_date(end, time_zone)
    while day < last:
        day += timedelta(days=1)
        name = closed.name(day)
        if name is not None and day.weekday() in WORKDAYS:
            yield day, name


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


def add_interval(
    start: datetime,
    amount: int,
    unit: IntervalUnit,
    time_zone: str,
    closed: ClosedDays = NOTHING_CLOSED,
) -> datetime:
    """``start`` moved by ``amount`` units, as an aware UTC instant.

    * ``minutes``/``hours``: exact elapsed time (``time_zone`` is irrelevant).
    * ``days``/``weeks``: same wall-clock time in ``time_zone`` N calendar days/weeks later,
      so across a DST change the elapsed time is 23h or 25h.
    * ``working_days``: step one calendar day at a time, counting only Mon-Fri that are not
      ``closed``, until N are counted; keep the wall-clock time (Fri + 3 = Wed, Sat + 1 = Mon,
      Sun + 1 = Mon; with Swedish holidays Thu 31 Dec + 1 = Mon 4 Jan). A negative amount
      steps backwards the same way.

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
        if is_workday(local.date(), closed):
            remaining -= 1
    return _resolve(local, zone)


def next_window_opening(
    now: datetime,
    weekdays: frozenset[int],
    start: time,
    end: time,
    time_zone: str,
    closed: ClosedDays = NOTHING_CLOSED,
) -> datetime | None:
    """When a sending window next opens, or None if ``now`` is inside it (send now).

    The window is open on ``weekdays`` (Monday=0) from ``start`` (inclusive) to ``end``
    (exclusive) local time in ``time_zone``, with local times resolved as in
    ``local_to_instant``, and shut on ``closed`` days. Only same-day windows are supported, so
    ``start < end`` is required, as is a non-empty weekday set; otherwise ValueError.
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
    # in case a DST gap empties the only window of the week, and further while closed days
    # shut the windows (a year of them would be a calendar that is never open).
    for offset in range(-1, 15 + 366):
        day = today + timedelta(days=offset)
        if day.weekday() not in weekdays or day in closed:
            continue
        opening = _resolve(datetime.combine(day, start), zone)
        closing = _resolve(datetime.combine(day, end), zone)
        if opening >= closing or now >= closing:
            continue
        return None if now >= opening else opening
    # Unreachable without closed days: a non-empty weekday set opens at least once in any two
    # weeks; validation keeps a flow's own closed dates far from a whole year.
    raise ValueError("the sending window does not open within a year of closed days")


def describe_day(day: date) -> str:
    """A date for summaries, e.g. ``'Fri 1 Jan'``."""
    return f"{_DAY_NAMES[day.weekday()]} {day.day} {_MONTH_NAMES[day.month - 1]}"


def describe_instant(instant: datetime, time_zone: str) -> str:
    """Human text for summaries and status, e.g. ``'Wed 4 Mar 2026 08:00 Europe/Stockholm'``."""
    _require_aware(instant, "instant")
    local = instant.astimezone(ZoneInfo(time_zone))
    return f"{describe_day(local.date())} {local.year} {local:%H:%M} {time_zone}"
