"""The snapshotter's exceptions."""

from __future__ import annotations

__all__ = [
    "EmptySnapshotError",
    "NoDBSnapshotError",
    "NoSnapshotError",
    "SnapError",
    "SnapshotCRCMismatchError",
    "SnapshotCorruptError",
]


class SnapError(Exception):
    """Base class of every snapshotter failure."""


class NoSnapshotError(SnapError):
    """No usable snapshot file exists (etcd's snap.ErrNoSnapshot)."""


class SnapshotCorruptError(SnapError):
    """A snapshot file cannot be read back; `path` names it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"snap: {path}: {reason}")


class EmptySnapshotError(SnapshotCorruptError):
    """The file, or the snapshot inside it, is empty."""


class SnapshotCRCMismatchError(SnapshotCorruptError):
    """The snapshot bytes do not match the CRC stored with them."""


class NoDBSnapshotError(SnapError, FileNotFoundError):
    """No `<index>.snap.db` file exists for the requested index."""
