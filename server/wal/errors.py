"""The WAL's exceptions.

Every failure the WAL can report is a WALError. Corruption is split from everything else so the
server can tell "this data directory is damaged, an operator must look" (WALCorruptError and its
subclasses, always naming the segment file and byte offset) from misuse or environment problems.
"""

from __future__ import annotations

__all__ = [
    "CRCMismatchError",
    "EntryGapError",
    "MetadataConflictError",
    "SnapshotMismatchError",
    "SnapshotNotFoundError",
    "WALClosedError",
    "WALCorruptError",
    "WALError",
    "WALExistsError",
    "WALLockedError",
    "WALNotFoundError",
    "WALStateError",
]


class WALError(Exception):
    """Base class of every WAL failure."""


class WALNotFoundError(WALError, FileNotFoundError):
    """The directory holds no WAL segment (or none that covers the requested snapshot)."""


class WALExistsError(WALError, FileExistsError):
    """create() was asked to initialise a directory that already holds a WAL."""


class WALLockedError(WALError):
    """A segment is locked by another open WAL (this process or another one)."""


class WALStateError(WALError):
    """The WAL was used out of order: appending before read_all, reading twice, a read-only WAL."""


class WALClosedError(WALStateError):
    """The WAL was used after close()."""


class WALCorruptError(WALError):
    """The on-disk log is damaged in a way that cannot be a torn final write.

    `path` is the segment file and `offset` the byte offset of the first bad record in it (both
    None when the damage is not tied to one record, e.g. a gap in the segment sequence).
    """

    def __init__(self, reason: str, path: str | None = None, offset: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.offset = offset
        where = ""
        if path is not None:
            where = f" in {path}" + (f" at offset {offset}" if offset is not None else "")
        super().__init__(f"wal: corrupt log{where}: {reason}")


class CRCMismatchError(WALCorruptError):
    """A record's stored CRC differs from the CRC chained over the log read so far."""

    def __init__(self, path: str, offset: int, stored: int, computed: int, detail: str = "") -> None:
        self.stored = stored
        self.computed = computed
        reason = f"crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
        if detail:
            reason = f"{reason}; {detail}"
        super().__init__(reason, path, offset)


class EntryGapError(WALCorruptError):
    """An entry's index leaves a hole after the entries read so far (etcd's ErrSliceOutOfRange)."""


class MetadataConflictError(WALCorruptError):
    """Two segments carry different metadata records."""


class SnapshotMismatchError(WALError):
    """The WAL has a snapshot marker at the requested index but with a different term."""


class SnapshotNotFoundError(WALError):
    """The WAL holds no snapshot marker matching the snapshot it was opened at."""
