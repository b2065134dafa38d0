"""Waiting for something that happens eventually, with a deadline: never a bare polling loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
