"""The read side of raft's stable storage, and an in-memory implementation of it.

raft reads entries, terms and snapshots back from Storage; the application writes to Storage
(entries, hard state, snapshots) while processing a Ready, before calling advance().
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .raftpb import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from .util import limit_size

__all__ = [
    "CompactedError",
    "MemoryStorage",
    "SnapOutOfDateError",
    "SnapshotTemporarilyUnavailableError",
    "Storage",
    "StorageError",
    "UnavailableError",
]


class StorageError(Exception):
    """Base class of the errors a Storage may raise."""


class CompactedError(StorageError):
    """The requested index is older than the first retained index (it was compacted away)."""


class SnapOutOfDateError(StorageError):
    """The snapshot is not newer than the one the storage already holds."""


class UnavailableError(StorageError):
    """The requested index is beyond the last index of the storage."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """A snapshot is being produced and cannot be handed out right now; raft retries later."""


class Storage(Protocol):
    """What raft needs to read from stable storage.

    Indices are 1-based. The storage holds a (possibly compacted) prefix of the log: entries in
    [first_index(), last_index()], plus the term of first_index()-1 (the compaction point or
    snapshot index).
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted HardState and the ConfState of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """Entries in [lo, hi), limited to max_size bytes but always at least one if any exist.

        Raises CompactedError if lo <= the compaction point, UnavailableError if the range is
        not (yet) present.
        """
        ...

    def term(self, i: int) -> int:
        """The term of entry i, for i in [first_index()-1, last_index()].

        Raises CompactedError below that range and UnavailableError above it.
        """
        ...

    def last_index(self) -> int:
        """The index of the last entry (the snapshot index if there are no entries)."""
        ...

    def first_index(self) -> int:
        """The index of the first available entry (older ones are in the snapshot)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot; may raise SnapshotTemporarilyUnavailableError."""
        ...


class MemoryStorage:
    """Storage backed by a Python list; the reference implementation for tests and examples."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        # Invariant: _ents[0] is a dummy entry whose (index, term) is the compaction point; the
        # real entries follow with consecutive indices.
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # -- Storage protocol --------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See Storage.initial_state."""
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """See Storage.entries."""
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (compaction point {offset})")
        if hi > self._last_index() + 1:
            raise UnavailableError(f"entries hi {hi} is beyond last index {self._last_index()}")
        if len(self._ents) == 1:
            raise UnavailableError("storage holds no entries")
        return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def term(self, i: int) -> int:
        """See Storage.term."""
        offset = self._ents[0].index
        if i < offset:
            raise CompactedError(f"index {i} is compacted (compaction point {offset})")
        if i - offset >= len(self._ents):
            raise UnavailableError(f"index {i} is beyond last index {self._last_index()}")
        return self._ents[i - offset].term

    def last_index(self) -> int:
        """See Storage.last_index."""
        return self._last_index()

    def first_index(self) -> int:
        """See Storage.first_index."""
        return self._ents[0].index + 1

    def snapshot(self) -> Snapshot:
        """See Storage.snapshot."""
        return self._snapshot

    # -- write side --------------------------------------------------------------------------

    def hard_state(self) -> HardState:
        """The HardState most recently stored with set_hard_state."""
        return self._hard_state

    def set_hard_state(self, st: HardState) -> None:
        """Persist the hard state (term, vote, commit)."""
        self._hard_state = st

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with the snapshot.

        Raises SnapOutOfDateError if snap is not newer than the current snapshot.
        """
        if self._snapshot.metadata.index >= snap.metadata.index:
            raise SnapOutOfDateError(
                f"snapshot index {snap.metadata.index} <= current {self._snapshot.metadata.index}"
            )
        self._snapshot = snap
        self._ents = [Entry(term=snap.metadata.term, index=snap.metadata.index)]

    def create_snapshot(self, i: int, cs: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the applied state at index i (which must be in the log).

        The log is left untouched; call compact() to drop the covered entries. Raises
        SnapOutOfDateError if i is not newer than the current snapshot and UnavailableError if
        i is beyond the last index.
        """
        if i <= self._snapshot.metadata.index:
            raise SnapOutOfDateError(f"snapshot index {i} <= current {self._snapshot.metadata.index}")
        if i > self._last_index():
            raise UnavailableError(f"snapshot index {i} is beyond last index {self._last_index()}")
        offset = self._ents[0].index
        conf_state = cs if cs is not None else self._snapshot.metadata.conf_state
        self._snapshot = Snapshot(
            data=data,
            metadata=SnapshotMetadata(conf_state=conf_state, index=i, term=self._ents[i - offset].term),
        )
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries before compact_index; compact_index becomes the compaction point.

        The application must not compact beyond its applied index. Raises CompactedError if
        compact_index is at or before the current compaction point, UnavailableError if it is
        beyond the last index.
        """
        offset = self._ents[0].index
        if compact_index <= offset:
            raise CompactedError(f"index {compact_index} is already compacted (point {offset})")
        if compact_index > self._last_index():
            raise UnavailableError(f"compact {compact_index} is beyond last index {self._last_index()}")
        i = compact_index - offset
        head = self._ents[i]
        self._ents = [Entry(term=head.term, index=head.index), *self._ents[i + 1 :]]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries, truncating any existing suffix that they overwrite.

        Entries at or before the compaction point are ignored. The first entry must be at most
        last_index()+1 (no gaps); raises UnavailableError otherwise.
        """
        if not entries:
            return
        first = self.first_index()
        last = entries[0].index + len(entries) - 1
        if last < first:
            return
        ents = list(entries)
        if first > ents[0].index:
            ents = ents[first - ents[0].index :]
        offset = ents[0].index - self._ents[0].index
        if len(self._ents) > offset:
            self._ents = self._ents[:offset] + ents
        elif len(self._ents) == offset:
            self._ents.extend(ents)
        else:
            raise UnavailableError(
                f"missing log entry [last: {self._last_index()}, append at: {ents[0].index}]"
            )

    def _last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1
