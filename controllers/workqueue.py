"""A work queue with client-go's semantics (k8s.io/client-go/util/workqueue), for threads.

- De-duplication: an item waiting in the queue is queued once however often it is added
  (the `dirty` set).
- No parallel processing of one item: get() moves an item to `processing`; adding it again
  while it is processed only marks it dirty, and done() puts it back in the queue, so a worker
  that finishes sees the latest add and no two workers reconcile the same key at once.
- Delays: add_after(item, seconds) (the delaying queue; the earliest ready time wins).
- Rate-limited requeue: add_rate_limited(item) = add_after(item, limiter.when(item)); forget()
  resets the item's failure count after a success. The default limiter is client-go's
  DefaultControllerRateLimiter: the max of a per-item exponential backoff (5 ms * 2^failures,
  at most 1000 s) and an overall token bucket (10 per second, burst 100).
- shutdown(): add() is ignored from then on; get() hands out what is still queued (also an
  item that was dirty when it was done()), then returns None; items waiting for their delay
  are dropped. shutdown(drain=True) also waits until every item in processing is
  done().
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T", bound=Hashable)

Clock = Callable[[], float]


class RateLimiter(Protocol):
    def when(self, item: Hashable) -> float:
        """Seconds to wait before the item is processed again (counts a failure)."""
        ...

    def forget(self, item: Hashable) -> None: ...

    def num_requeues(self, item: Hashable) -> int: ...


class ItemExponentialFailureRateLimiter:
    """base * 2^failures, capped at max_delay (client-go's ItemExponentialFailureRateLimiter)."""

    def __init__(self, base: float = 0.005, max_delay: float = 1000.0) -> None:
        self.base = base
        self.max_delay = max_delay
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def when(self, item: Hashable) -> float:
        with self._lock:
            exp = self._failures.get(item, 0)
            self._failures[item] = exp + 1
        if exp > 62:  # 2**exp would overflow a Go duration; here it only needs capping
            return self.max_delay
        return min(float(self.base * (2**exp)), self.max_delay)

    def forget(self, item: Hashable) -> None:
        with self._lock:
            self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        with self._lock:
            return self._failures.get(item, 0)


class BucketRateLimiter:
    """An overall token bucket: `qps` tokens per second, at most `burst` saved up
    (client-go's BucketRateLimiter over golang.org/x/time/rate: a reservation, never refused)."""

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock = time.monotonic) -> None:
        self.qps = qps
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def when(self, item: Hashable) -> float:
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self.qps

    def forget(self, item: Hashable) -> None:
        pass

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    def __init__(self, *limiters: RateLimiter) -> None:
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


def default_controller_rate_limiter(
    base: float = 0.005, max_delay: float = 1000.0, qps: float = 10.0, burst: int = 100
) -> RateLimiter:
    return MaxOfRateLimiter(ItemExponentialFailureRateLimiter(base, max_delay), BucketRateLimiter(qps, burst))


class WorkQueue(Generic[T]):
    """client-go's rate-limiting, delaying work queue (one lock, one condition variable)."""

    def __init__(
        self,
        rate_limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.rate_limiter = rate_limiter or default_controller_rate_limiter()
        self.clock = clock
        self._on_depth = on_depth
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()
        self._processing: set[T] = set()
        # waiting for a delay: heap of (ready_at, seq, item), and the earliest ready_at per item
        self._waiting: list[tuple[float, int, T]] = []
        self._ready_at: dict[T, float] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._shutting_down = False

    # -- the basic queue -------------------------------------------------------------------------

    def add(self, item: T) -> None:
        with self._cond:
            self._add_locked(item)

    def _add_locked(self, item: T) -> None:
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        if item in self._processing:
            return  # done() requeues it
        self._queue.append(item)
        self._depth_changed()
        self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item (now in processing: call done(item) after), or None once the queue is
        shut down and empty, or after timeout seconds without an item."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                self._move_ready_locked()
                if self._queue:
                    item = self._queue.popleft()
                    self._processing.add(item)
                    self._dirty.discard(item)
                    self._depth_changed()
                    return item
                if self._shutting_down:
                    return None
                now = self.clock()
                wait: float | None = None
                if self._waiting:
                    wait = max(0.0, self._waiting[0][0] - now)
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                self._cond.wait(wait)

    def done(self, item: T) -> None:
        with self._cond:
            self._processing.discard(item)
            if item in self._dirty:
                self._queue.append(item)
                self._depth_changed()
                self._cond.notify()
            if not self._processing:
                self._cond.notify_all()  # shutdown(drain=True) waits for this

    def __len__(self) -> int:
        with self._cond:
            self._move_ready_locked()
            return len(self._queue)

    @property
    def processing(self) -> int:
        with self._cond:
            return len(self._processing)

    # -- delays ------------------------------------------------------------------------------------

    def add_after(self, item: T, delay: float) -> None:
        if delay <= 0:
            self.add(item)
            return
        with self._cond:
            if self._shutting_down:
                return
            ready = self.clock() + delay
            prev = self._ready_at.get(item)
            if prev is not None and prev <= ready:
                return
            self._ready_at[item] = ready
            heapq.heappush(self._waiting, (ready, next(self._seq), item))
            self._cond.notify_all()

    def _move_ready_locked(self) -> None:
        now = self.clock()
        while self._waiting and self._waiting[0][0] <= now:
            ready, _, item = heapq.heappop(self._waiting)
            if self._ready_at.get(item) != ready:
                continue  # superseded by an earlier add_after of the same item
            del self._ready_at[item]
            self._add_locked(item)

    # -- rate limiting -----------------------------------------------------------------------------

    def add_rate_limited(self, item: T) -> float:
        """Requeue after the rate limiter's delay for this item; returns the delay."""
        delay = self.rate_limiter.when(item)
        self.add_after(item, delay)
        return delay

    def forget(self, item: T) -> None:
        self.rate_limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self.rate_limiter.num_requeues(item)

    # -- shutdown ----------------------------------------------------------------------------------

    def shutdown(self, drain: bool = False, timeout: float | None = None) -> bool:
        """Stop accepting items and wake every get(). With drain, wait (up to timeout) until
        the items in processing are done(); returns whether nothing is left in processing."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            self._shutting_down = True
            self._waiting.clear()
            self._ready_at.clear()
            self._cond.notify_all()
            if drain:
                while self._processing:
                    remaining = None if deadline is None else deadline - self.clock()
                    if remaining is not None and remaining <= 0:
                        break
                    self._cond.wait(remaining)
            return not self._processing

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))
