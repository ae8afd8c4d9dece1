"""The not-yet-persisted tail of the raft log (and a not-yet-persisted incoming snapshot)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .logger import Logger
from .raftpb import Entry, Snapshot
from .util import InvariantError

__all__ = ["EntryID", "Unstable"]


@dataclass(frozen=True, slots=True, order=True)
class EntryID:
    """Identifies a log entry by (term, index); term 0 only for the empty-log origin (0, 0)."""

    term: int
    index: int


class Unstable:
    """Entries and at most one snapshot that the application has not yet written to Storage.

    Invariants:
    - entries[i] has index offset + i;
    - if snapshot is set, offset == snapshot.metadata.index + 1 when there are no older entries;
    - offset <= offset_in_progress <= offset + len(entries); entries before offset_in_progress
      were handed to the application in a Ready and are being written.
    """

    def __init__(self, offset: int, logger: Logger) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        self.snapshot_in_progress = False
        self.offset_in_progress = offset
        self._logger = logger

    def maybe_first_index(self) -> int | None:
        """The first log index if an unstable snapshot defines it, else None."""
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """The last log index if the unstable part defines it, else None."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        """The term of entry i if the unstable part knows it, else None."""
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == i:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def next_entries(self) -> list[Entry]:
        """Unstable entries not yet handed out for writing."""
        in_progress = self.offset_in_progress - self.offset
        if len(self.entries) == in_progress:
            return []
        return self.entries[in_progress:]

    def next_snapshot(self) -> Snapshot | None:
        """The unstable snapshot if it has not been handed out for writing yet."""
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        """Mark everything currently unstable as handed out for writing."""
        if self.entries:
            self.offset_in_progress = self.entries[-1].index + 1
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, eid: EntryID) -> None:
        """Entries up to eid were persisted; drop them unless the log changed meanwhile."""
        gt = self.maybe_term(eid.index)
        if gt is None:
            self._logger.info("stable_to: index %d is not in the unstable log, ignored", eid.index)
            return
        if eid.index < self.offset:
            self._logger.info("stable_to: index %d is the unstable snapshot's, ignored", eid.index)
            return
        if gt != eid.term:
            self._logger.info(
                "stable_to: entry %d (term %d) was replaced by one of term %d, ignored",
                eid.index,
                eid.term,
                gt,
            )
            return
        num = eid.index + 1 - self.offset
        self.entries = self.entries[num:]
        self.offset = eid.index + 1
        self.offset_in_progress = max(self.offset_in_progress, self.offset)

    def stable_snap_to(self, i: int) -> None:
        """The snapshot at index i was persisted."""
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, s: Snapshot) -> None:
        """Replace everything with the snapshot s."""
        self.offset = s.metadata.index + 1
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = s
        self.snapshot_in_progress = False

    def truncate_and_append(self, ents: Sequence[Entry]) -> None:
        """Append ents, first dropping any unstable entries at or after ents[0].index."""
        from_index = ents[0].index
        if from_index == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif from_index <= self.offset:
            self._logger.info("unstable log replaced from index %d", from_index)
            self.entries = list(ents)
            self.offset = from_index
            self.offset_in_progress = self.offset
        else:
            self._logger.info("unstable log overwritten from index %d", from_index)
            self.entries = self.slice(self.offset, from_index) + list(ents)
            self.offset_in_progress = min(self.offset_in_progress, from_index)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Unstable entries in [lo, hi); the range must lie within the unstable entries."""
        self._must_check_out_of_bounds(lo, hi)
        return self.entries[lo - self.offset : hi - self.offset]

    def _must_check_out_of_bounds(self, lo: int, hi: int) -> None:
        if lo > hi:
            raise InvariantError(f"invalid unstable.slice {lo} > {hi}")
        upper = self.offset + len(self.entries)
        if lo < self.offset or hi > upper:
            raise InvariantError(f"unstable.slice[{lo},{hi}) out of bound [{self.offset},{upper}]")
