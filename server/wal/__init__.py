"""The write-ahead log (etcd's server/storage/wal): see wal.py for the life cycle, encoder.py
for the on-disk framing and decoder.py for what counts as a torn tail versus corruption."""

from server.wal.errors import (
    CRCMismatchError,
    EntryGapError,
    MetadataConflictError,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    WALClosedError,
    WALCorruptError,
    WALError,
    WALExistsError,
    WALLockedError,
    WALNotFoundError,
    WALStateError,
)
from server.wal.record import RecordType, WALSnapshot
from server.wal.repair import repair
from server.wal.util import exist, purge_segments
from server.wal.wal import (
    SEGMENT_SIZE_BYTES,
    WAL,
    ReadAllResult,
    raft_must_sync,
    valid_snapshot_entries,
    verify,
)

__all__ = [
    "SEGMENT_SIZE_BYTES",
    "WAL",
    "CRCMismatchError",
    "EntryGapError",
    "MetadataConflictError",
    "ReadAllResult",
    "RecordType",
    "SnapshotMismatchError",
    "SnapshotNotFoundError",
    "WALClosedError",
    "WALCorruptError",
    "WALError",
    "WALExistsError",
    "WALLockedError",
    "WALNotFoundError",
    "WALSnapshot",
    "WALStateError",
    "exist",
    "purge_segments",
    "raft_must_sync",
    "repair",
    "valid_snapshot_entries",
    "verify",
]
