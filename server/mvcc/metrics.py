"""MVCC's operation counters (etcd's mvcc/metrics.go), read by /metrics at scrape time."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MvccStats"]


@dataclass(slots=True)
class MvccStats:
    range: int = 0
    put: int = 0
    delete: int = 0
    # transactions that ran more than one operation
    txn: int = 0
