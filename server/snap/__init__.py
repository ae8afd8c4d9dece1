"""Raft snapshot files and database snapshot files (etcd's etcdserver/api/snap)."""

from server.snap.errors import (
    EmptySnapshotError,
    NoDBSnapshotError,
    NoSnapshotError,
    SnapError,
    SnapshotCorruptError,
    SnapshotCRCMismatchError,
)
from server.snap.snapshotter import Snapshotter, read

__all__ = [
    "EmptySnapshotError",
    "NoDBSnapshotError",
    "NoSnapshotError",
    "SnapError",
    "SnapshotCRCMismatchError",
    "SnapshotCorruptError",
    "Snapshotter",
    "read",
]
