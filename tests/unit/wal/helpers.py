"""Helpers shared by the WAL tests."""

from __future__ import annotations

import os

from server.raft.raftpb import ConfState, Entry
from server.wal import SEGMENT_SIZE_BYTES, WAL, ReadAllResult, WALSnapshot


def ents(lo: int, hi: int, term: int = 1, data: bytes | None = None) -> list[Entry]:
    """Entries lo..hi inclusive."""
    return [
        Entry(term=term, index=i, data=data if data is not None else b"e%d" % i) for i in range(lo, hi + 1)
    ]


def read_back(dirpath: str, snap: WALSnapshot | None = None) -> ReadAllResult:
    """Read a WAL read-only (no repair, no locks)."""
    w = WAL.open_for_read(dirpath, snap)
    try:
        return w.read_all()
    finally:
        w.close()


def reopen(
    dirpath: str, snap: WALSnapshot | None = None, *, segment_size: int = SEGMENT_SIZE_BYTES
) -> tuple[WAL, ReadAllResult]:
    """Open for writing and read everything (repairing a torn tail)."""
    w = WAL.open(dirpath, snap, segment_size=segment_size)
    try:
        return w, w.read_all()
    except BaseException:
        w.close()
        raise


def marker(index: int, term: int) -> WALSnapshot:
    return WALSnapshot(index=index, term=term, conf_state=ConfState(voters=(1,)))


def wal_files(dirpath: str) -> list[str]:
    return sorted(n for n in os.listdir(dirpath) if n.endswith(".wal"))
