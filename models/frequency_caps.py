"""Frequency caps: how many marketing messages one contact may get on a channel, across every
flow, counted in whole days of the contact's local calendar.

"At most 2 email in 7 days" counts the messages sent on today's local date and the 6 dates
before it; "1 SMS a day" those of today. A message over the cap may go at the local midnight
from which the oldest message that keeps it back no longer counts.

Pure: instants and zones in, instants out (nothing here reads the clock or the database), so the
workflow and the send activities compute the same answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from models.schedule import local_date, local_to_instant

Channel = Literal["email", "sms"]
WhenCapped = Literal["wait", "skip"]

# The contact fact that names the contact's own zone, when the CRM has one.
CONTACT_ZONE_FACT = "contact.time_zone"


class FrequencyCap(BaseModel):
    """At most ``max_messages`` marketing messages on ``channel`` in ``days`` local days."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Channel
    max_messages: int = Field(ge=1, le=1000, description="Messages allowed within the window")
    days: int = Field(
        ge=1, le=366, description="Local calendar days the window spans, today included"
    )

    def __str__(self) -> str:
        span = "a day" if self.days == 1 else f"in {self.days} days"
        return f"at most {self.max_messages} {self.channel} {span}"


class Capping(BaseModel):
    """What a send asks of the caps: what to do with a message over a cap, the zone whose
    calendar counts (the flow's, unless the contact has one of its own: ``counting_zone``), and
    the instant the participant decided to send, at which the message counts (the workflow's
    clock, so that its wait for a cap and the count agree; every retry counts at it too)."""

    model_config = ConfigDict(frozen=True)

    when_capped: WhenCapped
    time_zone: str
    at: datetime


def counting_zone(flow_zone: str, facts: Mapping[str, object]) -> str:
    """The zone whose calendar counts a contact's messages: the contact's own zone when the CRM
    holds a valid one, else the flow's. The one place that chooses it."""
    zone = facts.get(CONTACT_ZONE_FACT)
    if isinstance(zone, str) and zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            return flow_zone
        return zone
    return flow_zone


def _midnight(day: date, zone: str) -> datetime:
    return local_to_instant(datetime.combine(day, time()), zone)


def window_start(now: datetime, cap: FrequencyCap, zone: str) -> datetime:
    """The first instant whose messages count toward ``cap`` at ``now``: local midnight of the
    window's first day."""
    return _midnight(local_date(now, zone) - timedelta(days=cap.days - 1), zone)


def allowed_from(
    now: datetime, counted: Iterable[datetime], cap: FrequencyCap, zone: str
) -> datetime | None:
    """None when one more message fits ``cap`` at ``now``, given when the contact's counted
    messages went; otherwise the instant from which it fits."""
    start = window_start(now, cap, zone)
    days = sorted((local_date(at, zone) for at in counted if at >= start), reverse=True)
    if len(days) < cap.max_messages:
        return None
    # The window must move past the day of the max_messages-th newest message.
    return _midnight(days[cap.max_messages - 1] + timedelta(days=cap.days), zone)


def held_until(
    now: datetime, counted: Iterable[datetime], caps: Iterable[FrequencyCap], zone: str
) -> tuple[datetime, FrequencyCap] | None:
    """The latest instant any of ``caps`` holds a message back until, with that cap; None when
    it may go now."""
    sent = list(counted)
    held = [
        (until, cap) for cap in caps if (until := allowed_from(now, sent, cap, zone)) is not None
    ]
    return max(held, key=lambda pair: pair[0], default=None)
