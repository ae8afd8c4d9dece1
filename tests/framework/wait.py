"""Waiting for a condition: the one polling helper of the test suite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["wait_until", "wait_until_async"]

T = TypeVar("T")


def wait_until(
    fn: Callable[[], T | None], timeout: float = 20.0, *, what: str = "condition", interval: float = 0.05
) -> T:
    """Call fn until it returns something truthy (and return that), or fail after timeout.
    Exceptions from fn count as "not yet"; the last one is reported on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s (last: {last!r})")
        time.sleep(interval)


async def wait_until_async(
    fn: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """wait_until for a coroutine condition, on the running event loop."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = await fn()
            if value:
                return value
            last = value
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)
