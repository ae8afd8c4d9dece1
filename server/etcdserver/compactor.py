"""Automatic compaction (etcd's server/etcdserver/api/v3compactor).

--auto-compaction-mode=periodic, --auto-compaction-retention=P (a duration, or a number of
hours): every P/10 (P capped at one hour) the current revision is sampled; once P has passed,
the revision sampled P ago is compacted, then again every min(P, 1h).

--auto-compaction-mode=revision, --auto-compaction-retention=N: every 5 minutes, compact to
the current revision minus N (when that moved since the last compaction).

A compaction that fails because the revision was already compacted counts as done; other
failures are retried at the next sample. Retention 0 disables automatic compaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.errors import EtcdError
from server.mvcc.kv import CompactedError

__all__ = ["Compactor"]

log = logging.getLogger(__name__)

REVISION_CHECK_INTERVAL = 300.0
HOUR = 3600.0
RETRY_DIVISOR = 10

Sleep = Callable[[float], Awaitable[None]]


class Compactor:
    def __init__(
        self,
        mode: str,
        retention: float,
        rev: Callable[[], int],
        compact: Callable[[int], Awaitable[object]],
        *,
        clock: Callable[[], float],
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.mode = mode
        self.retention = retention
        self._rev = rev
        self._compact = compact
        self._clock = clock
        self._sleep = sleep

    async def run(self) -> None:
        if self.retention <= 0:
            return
        if self.mode == "revision":
            await self._run_revision()
        else:
            await self._run_periodic()

    async def _try(self, rev: int) -> bool:
        try:
            await self._compact(rev)
        except CompactedError:
            return True
        except EtcdError as e:
            log.warning("auto compaction failed; will retry", extra={"revision": rev, "error": str(e)})
            return False
        log.info("auto compaction done", extra={"revision": rev, "mode": self.mode})
        return True

    async def _run_revision(self) -> None:
        last = 0
        while True:
            await self._sleep(REVISION_CHECK_INTERVAL)
            rev = self._rev() - int(self.retention)
            if rev <= 0 or rev == last:
                continue
            if await self._try(rev):
                last = rev

    async def _run_periodic(self) -> None:
        period = self.retention
        interval = min(period, HOUR)
        retry = interval / RETRY_DIVISOR
        keep = int(period / retry) + 1
        revs: list[int] = []
        last_rev = 0
        last_success = self._clock()
        base = period
        while True:
            revs.append(self._rev())
            del revs[:-keep]
            await self._sleep(retry)
            rev = revs[0]
            if self._clock() - last_success < base or rev == last_rev:
                continue
            base = interval
            if await self._try(rev):
                last_rev = rev
                last_success = self._clock()
