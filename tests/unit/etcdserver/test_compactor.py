"""Auto-compaction schedules with a fake clock (etcd's v3compactor tests, as scenarios).

We test these aspects:
- periodic: nothing before one retention period; then the revision sampled one period ago,
  then every min(period, 1h); retention as hours or a duration;
- revision: every 5 minutes, current revision minus the retention, skipped when unchanged;
- an already-compacted revision counts as done; other errors are retried.
"""

from __future__ import annotations

import asyncio

import pytest

from server.config import parse_retention
from server.etcdserver.compactor import Compactor
from server.mvcc.kv import CompactedError, FutureRevError


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.rev = 1
        self.compacted: list[tuple[float, int]] = []
        self.fail_with: Exception | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.rev += int(seconds)  # one revision per second of fake time
        await asyncio.sleep(0)

    async def compact(self, rev: int) -> None:
        if self.fail_with is not None:
            err, self.fail_with = self.fail_with, None
            raise err
        self.compacted.append((self.now, rev))


async def run_for(c: Compactor, t: FakeTime, seconds: float) -> None:
    task = asyncio.create_task(c.run())
    while t.now <= seconds:
        await asyncio.sleep(0)
    task.cancel()


@pytest.mark.parametrize(
    ("mode", "retention", "expected"),
    [
        ("periodic", "1", 3600.0),
        ("periodic", "30m", 1800.0),
        ("periodic", "1h30m", 5400.0),
        ("periodic", "0", 0.0),
        ("revision", "1000", 1000.0),
    ],
)
def test_parse_retention(mode: str, retention: str, expected: float) -> None:
    assert parse_retention(mode, retention) == expected


async def test_periodic_ten_minutes() -> None:
    t = FakeTime()
    c = Compactor("periodic", 600, lambda: t.rev, t.compact, clock=t.clock, sleep=t.sleep)
    await run_for(c, t, 1800)
    # samples every 60 s; first compaction after 600 s to the revision sampled 600 s before
    assert t.compacted[0] == (600.0, 1)
    assert [when for when, _ in t.compacted][:3] == [600.0, 1200.0, 1800.0]
    for when, rev in t.compacted:
        # at least one period old: the oldest of the samples kept (as etcd's ring of samples)
        assert when - 660 <= rev - 1 <= when - 600


async def test_periodic_over_an_hour_compacts_hourly() -> None:
    t = FakeTime()
    c = Compactor("periodic", 3 * 3600, lambda: t.rev, t.compact, clock=t.clock, sleep=t.sleep)
    await run_for(c, t, 5 * 3600)
    whens = [when for when, _ in t.compacted]
    assert whens[0] == 3 * 3600
    assert whens[1] - whens[0] == 3600


async def test_revision_mode() -> None:
    t = FakeTime()
    c = Compactor("revision", 100, lambda: t.rev, t.compact, clock=t.clock, sleep=t.sleep)
    await run_for(c, t, 900)
    assert t.compacted == [(300.0, 201), (600.0, 501), (900.0, 801)]


async def test_revision_mode_skips_unchanged_revision() -> None:
    t = FakeTime()
    c = Compactor("revision", 100, lambda: 500, t.compact, clock=t.clock, sleep=t.sleep)
    await run_for(c, t, 1200)
    assert [rev for _, rev in t.compacted] == [400]


@pytest.mark.parametrize(("error", "retried"), [(CompactedError(), False), (FutureRevError(), True)])
async def test_failures(error: Exception, retried: bool) -> None:
    t = FakeTime()
    t.fail_with = error
    c = Compactor("revision", 100, lambda: 500, t.compact, clock=t.clock, sleep=t.sleep)
    await run_for(c, t, 600)
    # the first attempt (at 300 s) fails; the revision does not move, so only a retry compacts again
    assert t.compacted == ([(600.0, 400)] if retried else [])


async def test_disabled() -> None:
    t = FakeTime()
    c = Compactor("periodic", 0, lambda: t.rev, t.compact, clock=t.clock, sleep=t.sleep)
    await c.run()
    assert t.compacted == []
