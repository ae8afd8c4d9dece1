"""The raft log: the stable prefix in Storage joined with the unstable tail in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .log_unstable import EntryID, Unstable
from .logger import Logger
from .raftpb import Entry, Snapshot
from .storage import CompactedError, Storage, UnavailableError
from .util import NO_LIMIT, InvariantError, ents_size, limit_size

__all__ = ["LogSlice", "RaftLog"]


@dataclass(frozen=True, slots=True)
class LogSlice:
    """Entries a leader at `term` sends, following the entry `prev` in its log.

    Invariant (checked by valid()): entries have consecutive indices after prev.index and
    non-decreasing terms, none greater than `term`.
    """

    term: int
    prev: EntryID
    entries: tuple[Entry, ...]

    def last_index(self) -> int:
        """Index of the last entry of the slice (prev.index if it is empty)."""
        return self.prev.index + len(self.entries)

    def last_entry_id(self) -> EntryID:
        """ID of the last entry of the slice (prev if it is empty)."""
        if self.entries:
            e = self.entries[-1]
            return EntryID(e.term, e.index)
        return self.prev

    def valid(self) -> str | None:
        """None if the slice is well formed, else a description of the problem."""
        prev = self.prev
        for e in self.entries:
            if e.term < prev.term or e.index != prev.index + 1:
                return (
                    f"leader term {self.term}: entries {prev} and {EntryID(e.term, e.index)} not consistent"
                )
            prev = EntryID(e.term, e.index)
        if self.term < prev.term:
            return f"leader term {self.term}: entry {prev} has a newer term"
        return None


class RaftLog:
    """The log as raft sees it.

    Invariants: applied <= applying <= committed; committed <= last_index(); everything at or
    below committed is durable in Storage or in the unstable part already handed out.
    """

    def __init__(self, storage: Storage, logger: Logger, max_applying_ents_size: int = NO_LIMIT) -> None:
        first_index = storage.first_index()
        last_index = storage.last_index()
        self.storage = storage
        self.unstable = Unstable(last_index + 1, logger)
        # Entries up to `committed` are known to be committed by a quorum.
        self.committed = first_index - 1
        # Entries up to `applying` were handed to the application; up to `applied` it is done.
        self.applying = first_index - 1
        self.applied = first_index - 1
        self.max_applying_ents_size = max_applying_ents_size
        self.applying_ents_size = 0
        self.applying_ents_paused = False
        self._logger = logger

    def __str__(self) -> str:
        u = self.unstable
        return (
            f"committed={self.committed} applied={self.applied} applying={self.applying} "
            f"unstable=[offset={u.offset} in_progress={u.offset_in_progress} len={len(u.entries)}]"
        )

    # -- appending ---------------------------------------------------------------------------

    def maybe_append(self, a: LogSlice, committed: int) -> int | None:
        """Append the slice if its prev entry matches our log, then commit up to min(committed, end).

        Returns the index of the last entry of the slice, or None if prev does not match.
        """
        if not self.match_term(a.prev):
            return None
        last_new = a.prev.index + len(a.entries)
        ci = self.find_conflict(a.entries)
        if ci != 0:
            if ci <= self.committed:
                raise InvariantError(
                    f"entry {ci} conflicts with committed entry [committed({self.committed})]"
                )
            offset = a.prev.index + 1
            if ci - offset > len(a.entries):
                raise InvariantError(f"index {ci - offset} is out of range [{len(a.entries)}]")
            self.append(a.entries[ci - offset :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: Sequence[Entry]) -> int:
        """Append entries (truncating any conflicting unstable suffix); returns the last index."""
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise InvariantError(f"after({after}) is out of range [committed({self.committed})]")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """Index of the first entry whose term differs from (or is missing in) our log, else 0."""
        for e in ents:
            if not self.match_term(EntryID(e.term, e.index)):
                if e.index <= self.last_index():
                    self._logger.info(
                        "conflict at index %d: local term %d, incoming term %d",
                        e.index,
                        self.term_or_zero(e.index),
                        e.term,
                    )
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (index', term') with index' <= index and term' <= term in our log.

        Used by both sides of a rejected MsgApp to skip whole terms of a divergent tail. Returns
        (index', 0) if index' falls outside the retained log, and (0, 0) if nothing qualifies.
        """
        while index > 0:
            try:
                our_term = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    # -- what the application must persist and apply ------------------------------------------

    def next_unstable_ents(self) -> list[Entry]:
        """Unstable entries not yet handed to the application for writing."""
        return self.unstable.next_entries()

    def has_next_unstable_ents(self) -> bool:
        """Whether next_unstable_ents() is non-empty."""
        return bool(self.unstable.next_entries())

    def has_next_or_in_progress_unstable_ents(self) -> bool:
        """Whether any entry is not yet known to be persisted."""
        return bool(self.unstable.entries)

    def next_committed_ents(self, allow_unstable: bool) -> list[Entry]:
        """Committed entries not yet handed out for application, within the size budget."""
        if self.applying_ents_paused or self.has_next_or_in_progress_snapshot():
            return []
        lo, hi = self.applying + 1, self.max_appliable_index(allow_unstable) + 1
        if lo >= hi:
            return []
        max_size = self.max_applying_ents_size - self.applying_ents_size
        if max_size <= 0:
            raise InvariantError(f"applying entry size {self.applying_ents_size} exceeds the budget")
        return self.slice(lo, hi, max_size)

    def has_next_committed_ents(self, allow_unstable: bool) -> bool:
        """Whether next_committed_ents() would return anything."""
        if self.applying_ents_paused or self.has_next_or_in_progress_snapshot():
            return False
        return self.applying + 1 < self.max_appliable_index(allow_unstable) + 1

    def max_appliable_index(self, allow_unstable: bool) -> int:
        """The highest index that may be applied (committed and, unless allowed, persisted)."""
        hi = self.committed
        if not allow_unstable:
            hi = min(hi, self.unstable.offset - 1)
        return hi

    def next_unstable_snapshot(self) -> Snapshot | None:
        """The unstable snapshot if it has not been handed out yet."""
        return self.unstable.next_snapshot()

    def has_next_unstable_snapshot(self) -> bool:
        """Whether next_unstable_snapshot() is set."""
        return self.unstable.next_snapshot() is not None

    def has_next_or_in_progress_snapshot(self) -> bool:
        """Whether a snapshot is pending persistence (handed out or not)."""
        return self.unstable.snapshot is not None

    def snapshot(self) -> Snapshot:
        """The newest snapshot: the unstable one if any, else Storage's."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- indices and terms -------------------------------------------------------------------

    def first_index(self) -> int:
        """Index of the first entry still available."""
        i = self.unstable.maybe_first_index()
        if i is not None:
            return i
        return self.storage.first_index()

    def last_index(self) -> int:
        """Index of the last entry."""
        i = self.unstable.maybe_last_index()
        if i is not None:
            return i
        return self.storage.last_index()

    def commit_to(self, to_commit: int) -> None:
        """Raise the commit index to to_commit (never lowers it)."""
        if self.committed < to_commit:
            if self.last_index() < to_commit:
                raise InvariantError(
                    f"tocommit({to_commit}) is out of range [lastIndex({self.last_index()})]. "
                    "Was the raft log corrupted, truncated, or lost?"
                )
            self.committed = to_commit

    def applied_to(self, i: int, size: int) -> None:
        """The application finished applying entries up to i (size bytes of them)."""
        if self.committed < i or i < self.applied:
            raise InvariantError(
                f"applied({i}) is out of range [prevApplied({self.applied}), committed({self.committed})]"
            )
        self.applied = i
        self.applying = max(self.applying, i)
        self.applying_ents_size = max(0, self.applying_ents_size - size)
        self.applying_ents_paused = self.applying_ents_size >= self.max_applying_ents_size

    def accept_applying(self, i: int, size: int, allow_unstable: bool) -> None:
        """Entries up to i (size bytes) were handed to the application to apply."""
        if self.committed < i:
            raise InvariantError(f"applying({i}) is out of range [committed({self.committed})]")
        self.applying = i
        self.applying_ents_size += size
        # Pause when over budget, or when the budget cut the last batch short: the remainder is
        # handed out only after this batch is acknowledged.
        self.applying_ents_paused = (
            self.applying_ents_size >= self.max_applying_ents_size
            or i < self.max_appliable_index(allow_unstable)
        )

    def stable_to(self, eid: EntryID) -> None:
        """Entries up to eid were persisted."""
        self.unstable.stable_to(eid)

    def stable_snap_to(self, i: int) -> None:
        """The snapshot at index i was persisted."""
        self.unstable.stable_snap_to(i)

    def accept_unstable(self) -> None:
        """Everything unstable was handed out for writing."""
        self.unstable.accept_in_progress()

    def last_entry_id(self) -> EntryID:
        """(term, index) of the last entry."""
        index = self.last_index()
        try:
            return EntryID(self.term(index), index)
        except (CompactedError, UnavailableError) as e:
            raise InvariantError(f"unexpected error when getting the last term at {index}: {e}") from e

    def term(self, i: int) -> int:
        """Term of entry i; raises CompactedError/UnavailableError outside [first-1, last]."""
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        if i + 1 < self.first_index():
            raise CompactedError(f"index {i} is compacted")
        if i > self.last_index():
            raise UnavailableError(f"index {i} is beyond the last index {self.last_index()}")
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        """Term of entry i, or 0 if it is outside the retained log."""
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return 0

    def entries(self, i: int, max_size: int) -> list[Entry]:
        """Entries from i to the end, within max_size bytes (at least one if any).

        Raises CompactedError if i was compacted.
        """
        if i > self.last_index():
            return []
        return self.slice(i, self.last_index() + 1, max_size)

    def all_entries(self) -> list[Entry]:
        """Every retained entry (for tests)."""
        return self.entries(self.first_index(), NO_LIMIT)

    def is_up_to_date(self, their: EntryID) -> bool:
        """Whether a log ending at `their` is at least as up-to-date as ours (Raft §5.4.1)."""
        our = self.last_entry_id()
        return their.term > our.term or (their.term == our.term and their.index >= our.index)

    def match_term(self, eid: EntryID) -> bool:
        """Whether our log contains entry eid."""
        try:
            return self.term(eid.index) == eid.term
        except (CompactedError, UnavailableError):
            return False

    def maybe_commit(self, at: EntryID) -> bool:
        """Commit up to `at` if it is newer than our commit index and is in our log.

        The caller (the leader) passes its current term, so only entries of the current term
        are committed by counting replicas (Raft §5.4.2).
        """
        if at.term != 0 and at.index > self.committed and self.match_term(at):
            self.commit_to(at.index)
            return True
        return False

    def restore(self, s: Snapshot) -> None:
        """Reset the log to the snapshot; it becomes committed."""
        self._logger.info(
            "log (%s) is reset to snapshot at index %d, term %d",
            self,
            s.metadata.index,
            s.metadata.term,
        )
        self.committed = s.metadata.index
        self.unstable.restore(s)

    def scan(self, lo: int, hi: int, page_size: int, visit: Callable[[list[Entry]], bool]) -> None:
        """Visit entries in [lo, hi) in pages of at most page_size bytes until visit returns False."""
        while lo < hi:
            ents = self.slice(lo, hi, page_size)
            if not ents:
                raise InvariantError(f"got 0 entries in [{lo}, {hi})")
            if not visit(ents):
                return
            lo += len(ents)

    def slice(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """Entries in [lo, hi) within max_size bytes (at least one if the range is non-empty).

        Raises CompactedError if lo was compacted.
        """
        self._must_check_out_of_bounds(lo, hi)
        if lo == hi:
            return []
        if lo >= self.unstable.offset:
            return limit_size(self.unstable.slice(lo, hi), max_size)
        cut = min(hi, self.unstable.offset)
        try:
            ents = self.storage.entries(lo, cut, max_size)
        except UnavailableError as e:
            raise InvariantError(f"entries[{lo}:{cut}) is unavailable from storage") from e
        if hi <= self.unstable.offset:
            return ents
        # Storage returned fewer entries than asked for: the size budget is exhausted.
        if len(ents) < cut - lo:
            return ents
        size = ents_size(ents)
        if size >= max_size:
            return ents
        unstable = limit_size(self.unstable.slice(self.unstable.offset, hi), max_size - size)
        # limit_size always keeps one entry; drop it if it overflows the remaining budget.
        if len(unstable) == 1 and size + ents_size(unstable) > max_size:
            return ents
        return ents + unstable

    def _must_check_out_of_bounds(self, lo: int, hi: int) -> None:
        if lo > hi:
            raise InvariantError(f"invalid slice {lo} > {hi}")
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(f"index {lo} is compacted (first index {fi})")
        last = self.last_index()
        if hi > last + 1:
            raise InvariantError(f"slice[{lo},{hi}) out of bound [{fi},{last}]")
