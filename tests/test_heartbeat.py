"""Send activities heartbeat while they work, so that a dead worker is noticed within the
activity's heartbeat timeout (activities.heartbeat)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import timedelta

from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities.heartbeat import heartbeating, heartbeating_in_background


def environment(heartbeat_timeout: timedelta | None) -> tuple[ActivityEnvironment, list[object]]:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=heartbeat_timeout)
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    return env, beats


async def working(seconds: float) -> None:
    async with heartbeating():
        await asyncio.sleep(seconds)


@activity.defn
async def async_send() -> None:
    await working(0.5)


@activity.defn
def sync_send() -> None:
    # Its thread blocked (in a database write, say) the whole time: the beats go on beside it.
    with heartbeating_in_background():
        time.sleep(0.5)


async def test_an_async_activity_heartbeats_three_times_per_timeout() -> None:
    env, beats = environment(timedelta(seconds=0.3))
    await env.run(async_send)
    assert 4 <= len(beats) <= 7  # every 0.1 s for 0.5 s


async def test_a_blocked_sync_activity_heartbeats_from_a_thread_of_its_own() -> None:
    env, beats = environment(timedelta(seconds=0.3))
    await asyncio.to_thread(env.run, sync_send)
    assert 4 <= len(beats) <= 7


async def test_no_heartbeat_timeout_no_heartbeats() -> None:
    env, beats = environment(None)
    await env.run(async_send)
    assert beats == []
    await asyncio.to_thread(env.run, sync_send)
    assert beats == []
    await working(0.01)  # outside any activity it just runs
    with heartbeating_in_background():
        pass


async def test_a_send_done_within_a_third_of_the_timeout_costs_no_heartbeat() -> None:
    """The first beat comes a third of the timeout after the start: nearly every send is over by
    then, and a beat would be a round trip to the server for nothing."""
    env, beats = environment(timedelta(seconds=30))
    await env.run(async_send)
    await asyncio.to_thread(env.run, sync_send)
    assert beats == []
