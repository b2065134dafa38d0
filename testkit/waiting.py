"""Waiting for something that happens eventually, with a deadline: never a bare polling loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio.client import WorkflowHandle

from models.participant import ParticipantState
from workflows.participant import ParticipantWorkflow

T = TypeVar("T")


async def assert_eventually(
    fn: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.1,
    until: Callable[[T], object] = bool,
    what: str = "",
) -> T:
    """Await ``fn()`` every ``interval`` seconds until ``until`` holds for what it returns (by
    default: until it is truthy), and return that value.

    ``fn`` may also raise ``AssertionError`` while the condition does not hold yet. After
    ``timeout`` seconds this raises ``AssertionError`` with the last value (or the last
    assertion's message); ``what`` says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await fn()
            if until(value):
                return value
            last = f"last value: {value!r}"
        except AssertionError as failed:
            last = f"last check: {failed}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or fn!r}; {last}")
        await asyncio.sleep(interval)


async def waiting_at(
    handle: WorkflowHandle[Any, ParticipantState], step_id: str, *, timer: bool = True
) -> ParticipantState:
    """The participant's state once it waits at ``step_id``: on a timer, or (``timer=False``)
    frozen there without one, as a paused participant is at the end of its wait. On the
    time-skipping server time does not skip while this polls, so the wait cannot end under it."""
    return await assert_eventually(
        lambda: handle.query(ParticipantWorkflow.current_state),
        timeout=30,
        interval=0.05,
        until=lambda state: (
            state.current_step == step_id and (state.wait_until is not None) == timer
        ),
        what=f"waiting at {step_id}",
    )
