"""Waiting for the apply loop (etcd's pkg/wait): `Wait` matches a proposal's ID to the future its
proposer awaits; `WaitTime` wakes whoever waits for the applied index to reach a value.

Both are triggered by the apply loop on the event loop thread; waiters are futures, so a
timeout or a cancelled caller leaves nothing behind but a done future.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Generic, TypeVar

__all__ = ["Wait", "WaitTime"]

T = TypeVar("T")


class Wait(Generic[T]):
    """ID -> the future of the caller waiting for that ID's result."""

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[T]] = {}

    def register(self, id_: int) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._futures[id_] = fut
        return fut

    def is_registered(self, id_: int) -> bool:
        """Someone on this member waits for the result (etcd's needResult)."""
        return id_ in self._futures

    def trigger(self, id_: int, result: T) -> None:
        fut = self._futures.pop(id_, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def take(self, id_: int) -> asyncio.Future[T] | None:
        """The waiting future, no longer registered (its result is set later)."""
        return self._futures.pop(id_, None)

    def cancel(self, id_: int) -> None:
        self._futures.pop(id_, None)

    def fail_all(self, exc: BaseException) -> None:
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(exc)
        self._futures.clear()


class WaitTime:
    """Futures that complete once the applied index reaches theirs (etcd's wait.WaitTime).

    Invariant: every pending waiter's index is above the last triggered one."""

    def __init__(self, last: int = 0) -> None:
        self._last = last
        self._seq = itertools.count()
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []

    @property
    def last(self) -> int:
        return self._last

    def wait(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if index <= self._last:
            fut.set_result(None)
        else:
            heapq.heappush(self._heap, (index, next(self._seq), fut))
        return fut

    def trigger(self, index: int) -> None:
        """The applied index is now index: wake every waiter at or below it."""
        self._last = max(self._last, index)
        heap = self._heap
        while heap and heap[0][0] <= self._last:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)
