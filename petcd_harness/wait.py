"""Waiting for a condition: the one polling helper of the harness and its test suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

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
