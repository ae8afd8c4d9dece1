"""The expiry queue (etcd's lease_queue.go): a min-heap of (expiry, lease ID) with lazy
deletion. An entry is stale when its lease is gone or now expires at another time; stale entries
are dropped when they reach the top."""

from __future__ import annotations

import heapq

__all__ = ["ExpiryQueue"]


class ExpiryQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._expiry: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def register_or_update(self, lease_id: int, expiry: float) -> None:
        self._expiry[lease_id] = expiry
        heapq.heappush(self._heap, (expiry, lease_id))

    def unregister(self, lease_id: int) -> None:
        self._expiry.pop(lease_id, None)

    def peek(self) -> tuple[float, int] | None:
        """The earliest (expiry, lease ID) still registered."""
        heap = self._heap
        while heap:
            expiry, lease_id = heap[0]
            if self._expiry.get(lease_id) == expiry:
                return expiry, lease_id
            heapq.heappop(heap)
        return None

    def clear(self) -> None:
        self._heap.clear()
        self._expiry.clear()
