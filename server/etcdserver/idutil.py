"""Unique request and lease IDs (etcd's pkg/idutil).

    | member ID low 16 bits | unix ms at start, low 40 bits | counter, 8 bits |
      prefix (16 bits)        suffix (48 bits, incremented as one number)

IDs are unique across members (prefix) and across restarts (the timestamp moves faster than a
member can allocate IDs).
"""

from __future__ import annotations

import time

__all__ = ["Generator"]

_TS_LEN = 40
_CNT_LEN = 8
_SUFFIX_LEN = _TS_LEN + _CNT_LEN


def _lowbit(x: int, n: int) -> int:
    return x & ((1 << n) - 1)


class Generator:
    def __init__(self, member_id: int, now_ms: int | None = None) -> None:
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        self._prefix = _lowbit(member_id, 16) << _SUFFIX_LEN
        self._suffix = _lowbit(now_ms, _TS_LEN) << _CNT_LEN

    def next(self) -> int:
        self._suffix += 1
        return self._prefix | _lowbit(self._suffix, _SUFFIX_LEN)
