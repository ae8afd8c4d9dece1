"""The server's counters for /metrics (etcd's etcdserver/metrics.go names, see
server/httpapi/metrics.py): plain ints bumped where the events happen, read at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.mvcc.metrics import MvccStats

__all__ = ["ServerStats"]


@dataclass(slots=True)
class ServerStats:
    leader_changes: int = 0
    proposals_failed: int = 0
    proposals_pending: int = 0
    mvcc: MvccStats = field(default_factory=MvccStats)
    # faults injected on purpose, by kind (server/faults); empty while that surface is off
    faults_injected: dict[str, int] = field(default_factory=dict)

    @property
    def mvcc_range(self) -> int:
        return self.mvcc.range

    @property
    def mvcc_put(self) -> int:
        return self.mvcc.put

    @property
    def mvcc_delete(self) -> int:
        return self.mvcc.delete

    @property
    def mvcc_txn(self) -> int:
        return self.mvcc.txn
