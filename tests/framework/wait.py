"""Waiting for a condition: the harness's polling helper, and its twin for coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from petcd_harness.wait import wait_until

__all__ = ["await_until", "wait_until"]


async def await_until(cond: Callable[[], object], timeout: float = 30.0, *, what: str = "condition") -> None:
    """wait_until on the running event loop: cond is checked every 5 ms without blocking it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        await asyncio.sleep(0.005)
