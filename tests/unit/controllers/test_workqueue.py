"""controllers.workqueue against client-go's workqueue semantics.

We test these aspects:
- de-duplication: an item added several times while queued is handed out once;
- an item re-added while it is processed is not handed to a second worker; done() requeues it;
- add_after: the item appears after its delay, the earliest of several delays wins;
- rate limiting: per-item exponential backoff 5 ms * 2^n capped, forget() resets it, the
  token bucket only delays past its burst, and the default limiter is the max of both;
- shutdown: get() drains what is queued, then returns None; add() is ignored; drain waits for
  the items in processing.
"""

from __future__ import annotations

import itertools
import threading
import time

from controllers.workqueue import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    WorkQueue,
)
from tests.framework.wait import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dedup_while_queued() -> None:
    q: WorkQueue[str] = WorkQueue()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None


def test_item_in_flight_is_not_handed_out_twice() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # changed again while a worker reconciles it
    q.add("a")
    assert len(q) == 0, "a dirty item in processing must wait for done()"
    assert q.get(timeout=0) is None
    q.done("a")
    assert len(q) == 1
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.get(timeout=0) is None


def test_done_without_readd_leaves_queue_empty() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.get(timeout=0)
    q.done("a")
    assert len(q) == 0 and q.processing == 0


def test_add_after_and_earliest_delay_wins() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("a", 10)
    q.add_after("a", 2)  # earlier: wins
    q.add_after("a", 5)  # later: ignored
    assert q.get(timeout=0) is None
    clock.now += 2
    assert q.get(timeout=0) == "a"
    q.done("a")
    clock.now += 10
    assert q.get(timeout=0) is None, "the superseded 10 s entry must not fire again"


def test_add_after_zero_is_add() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 0)
    assert q.get(timeout=0) == "a"


def test_get_blocks_until_delay_passes() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 0.1)
    t0 = time.monotonic()
    assert q.get(timeout=2) == "a"
    assert 0.08 <= time.monotonic() - t0 < 1.5


def test_item_exponential_backoff() -> None:
    rl = ItemExponentialFailureRateLimiter(0.005, 1.0)
    delays = [rl.when("a") for _ in range(10)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert delays[-1] == 1.0
    assert rl.num_requeues("a") == 10
    assert rl.when("b") == 0.005, "per item"
    rl.forget("a")
    assert rl.num_requeues("a") == 0
    assert rl.when("a") == 0.005
    for _ in range(100):
        rl.when("c")
    assert rl.when("c") == 1.0  # no overflow past 2**62


def test_bucket_limits_only_past_burst() -> None:
    clock = FakeClock()
    b = BucketRateLimiter(qps=10, burst=3, clock=clock)
    assert [b.when(i) for i in range(3)] == [0.0, 0.0, 0.0]
    assert abs(b.when(3) - 0.1) < 1e-9
    assert abs(b.when(4) - 0.2) < 1e-9
    clock.now += 10
    assert b.when(5) == 0.0


def test_max_of() -> None:
    clock = FakeClock()
    rl = MaxOfRateLimiter(ItemExponentialFailureRateLimiter(0.005, 1000), BucketRateLimiter(10, 1, clock))
    assert rl.when("a") == 0.005
    assert abs(rl.when("b") - 0.1) < 1e-9  # the bucket is empty now


def test_add_rate_limited_and_forget() -> None:
    clock = FakeClock()
    q: WorkQueue[str] = WorkQueue(ItemExponentialFailureRateLimiter(1.0, 60), clock=clock)
    assert q.add_rate_limited("a") == 1.0
    assert q.get(timeout=0) is None
    clock.now += 1
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.add_rate_limited("a") == 2.0
    assert q.num_requeues("a") == 2
    q.forget("a")
    assert q.num_requeues("a") == 0


def test_shutdown_drains_queue_then_none() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.add_after("c", 100)
    q.shutdown()
    q.add("d")  # ignored
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) == "b"
    assert q.get() is None, "shut down and empty: None at once, delayed items dropped"


def test_shutdown_wakes_blocked_getters() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[object] = []
    ts = [threading.Thread(target=lambda: got.append(q.get())) for _ in range(3)]
    for t in ts:
        t.start()
    # every getter blocked in get() (CPython's Condition keeps its waiters in _waiters)
    wait_until(lambda: len(q._cond._waiters) == 3, 5, what="three blocked getters")  # type: ignore[attr-defined]
    q.shutdown()
    for t in ts:
        t.join(2)
    assert got == [None, None, None]


def test_shutdown_with_drain_waits_for_processing() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    finished: list[str] = []

    def finish() -> None:
        finished.append("a")
        q.done("a")

    threading.Timer(0.1, finish).start()
    assert q.shutdown(drain=True, timeout=5) is True
    assert finished == ["a"] and q.processing == 0
    q2: WorkQueue[str] = WorkQueue()
    q2.add("x")
    q2.get(timeout=0)
    assert q2.shutdown(drain=True, timeout=0.05) is False


def test_concurrent_workers_never_share_an_item() -> None:
    """No item is processed by two workers at once, and an item added again while it was
    processed is processed once more afterwards (client-go's dirty/processing sets)."""
    q: WorkQueue[int] = WorkQueue()
    active: set[int] = set()
    lock = threading.Lock()
    overlaps = []
    clock = itertools.count()
    last_added: dict[int, int] = {}
    last_started: dict[int, int] = {}

    def worker() -> None:
        while (item := q.get()) is not None:
            with lock:
                if item in active:
                    overlaps.append(item)
                active.add(item)
                last_started[item] = next(clock)
            time.sleep(0.001)  # work takes a while: adds land while the item is processed
            with lock:
                active.discard(item)
            q.done(item)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for i in range(300):
        with lock:
            last_added[i % 5] = next(clock)
        q.add(i % 5)
        if i % 7 == 0:
            time.sleep(0.001)
    wait_until(lambda: len(q) == 0 and q.processing == 0, 10, what="the queue drained")
    q.shutdown(drain=True, timeout=5)
    for t in ts:
        t.join(5)
    assert not overlaps
    assert all(last_started[k] > last_added[k] for k in range(5)), (last_added, last_started)
