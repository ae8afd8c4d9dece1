"""RaftLog: conflict detection, appends, commit/apply bookkeeping and slicing across storage."""

from __future__ import annotations

import pytest

from server.raft.log import LogSlice, RaftLog
from server.raft.log_unstable import EntryID
from server.raft.logger import DiscardLogger
from server.raft.raftpb import Entry, Snapshot, SnapshotMetadata
from server.raft.storage import CompactedError, MemoryStorage
from server.raft.util import NO_LIMIT, InvariantError, entry_size

from .helpers import ents


def new_log(storage: MemoryStorage | None = None, max_applying: int = NO_LIMIT) -> RaftLog:
    return RaftLog(storage if storage is not None else MemoryStorage(), DiscardLogger(), max_applying)


def log_with(entries: list[Entry], committed: int = 0) -> RaftLog:
    log = new_log()
    log.append(entries)
    log.commit_to(committed)
    return log


PREV = ents(1, 1, 2, 3)


@pytest.mark.parametrize(
    ("new", "want"),
    [
        ([], 0),
        # No conflict, no new entries.
        (ents(1, 1, 2, 3), 0),
        (ents(2, 2, 3), 0),
        (ents(3, 3), 0),
        # No conflict, new entries: the first new index.
        (ents(1, 1, 2, 3, 4, 4), 4),
        (ents(3, 3, 4, 4), 4),
        (ents(4, 4, 4), 4),
        # Conflicts.
        (ents(1, 4, 4), 1),
        (ents(2, 1, 4, 4), 2),
        (ents(3, 1, 2, 4, 4), 3),
    ],
)
def test_find_conflict(new: list[Entry], want: int) -> None:
    assert log_with(PREV).find_conflict(new) == want


@pytest.mark.parametrize(
    ("log_terms", "first", "index", "term", "want"),
    [
        # Log 2 2 5 5 5 (indices 1-5).
        ((2, 2, 5, 5, 5), 1, 6, 2, (6, 0)),  # beyond the log
        ((2, 2, 5, 5, 5), 1, 5, 6, (5, 5)),
        ((2, 2, 5, 5, 5), 1, 5, 5, (5, 5)),
        ((2, 2, 5, 5, 5), 1, 5, 4, (2, 2)),
        ((2, 2, 5, 5, 5), 1, 5, 2, (2, 2)),
        ((2, 2, 5, 5, 5), 1, 5, 1, (0, 0)),
        ((2, 2, 5, 5, 5), 1, 1, 2, (1, 2)),
        ((2, 2, 5, 5, 5), 1, 1, 1, (0, 0)),
        ((2, 2, 5, 5, 5), 1, 0, 0, (0, 0)),
        # Compacted at 10 (term 3), then 3 3 3 4 4 4 at 11-16.
        ((3, 3, 3, 4, 4, 4), 11, 30, 3, (30, 0)),
        ((3, 3, 3, 4, 4, 4), 11, 14, 9, (14, 4)),
        ((3, 3, 3, 4, 4, 4), 11, 14, 4, (14, 4)),
        ((3, 3, 3, 4, 4, 4), 11, 14, 3, (13, 3)),
        ((3, 3, 3, 4, 4, 4), 11, 11, 3, (11, 3)),
        ((3, 3, 3, 4, 4, 4), 11, 10, 3, (10, 3)),  # the compaction point's term is known
        ((3, 3, 3, 4, 4, 4), 11, 14, 2, (9, 0)),  # walks past it: unknown term
        ((3, 3, 3, 4, 4, 4), 11, 9, 2, (9, 0)),
    ],
)
def test_find_conflict_by_term(
    log_terms: tuple[int, ...], first: int, index: int, term: int, want: tuple[int, int]
) -> None:
    s = MemoryStorage()
    if first > 1:
        s.apply_snapshot(Snapshot(metadata=SnapshotMetadata(index=first - 1, term=log_terms[0])))
    s.append(ents(first, *log_terms))
    assert new_log(s).find_conflict_by_term(index, term) == want


@pytest.mark.parametrize(
    ("their", "want"),
    [
        (EntryID(2, 2), False),  # lower term
        (EntryID(2, 3), False),
        (EntryID(2, 4), False),
        (EntryID(4, 2), True),  # higher term
        (EntryID(4, 3), True),
        (EntryID(4, 4), True),
        (EntryID(3, 2), False),  # same term, shorter
        (EntryID(3, 3), True),  # same term, equal or longer
        (EntryID(3, 4), True),
    ],
)
def test_is_up_to_date(their: EntryID, want: bool) -> None:
    assert log_with(ents(1, 1, 2, 3)).is_up_to_date(their) == want


@pytest.mark.parametrize(
    ("new", "want_last", "want_entries", "want_unstable_offset"),
    [
        ([], 2, ents(1, 1, 2), 3),
        (ents(3, 2), 3, ents(1, 1, 2, 2), 3),
        (ents(1, 2), 1, ents(1, 2), 1),  # conflict at 1
        (ents(2, 3, 3), 3, ents(1, 1, 3, 3), 2),  # conflict at 2
    ],
)
def test_append(
    new: list[Entry], want_last: int, want_entries: list[Entry], want_unstable_offset: int
) -> None:
    s = MemoryStorage()
    s.append(ents(1, 1, 2))
    log = new_log(s)
    assert log.append(new) == want_last
    assert log.all_entries() == want_entries
    assert log.unstable.offset == want_unstable_offset


LAST_INDEX, LAST_TERM, COMMIT = 3, 3, 1


@pytest.mark.parametrize(
    ("log_term", "index", "committed", "new", "want_last", "want_commit", "want_panic"),
    [
        # Previous entry does not match: rejected.
        (LAST_TERM - 1, LAST_INDEX, LAST_INDEX, ents(4, 4), None, COMMIT, False),
        (LAST_TERM, LAST_INDEX + 1, LAST_INDEX, ents(5, 4), None, COMMIT, False),
        # Match with the last entry.
        (LAST_TERM, LAST_INDEX, LAST_INDEX, [], LAST_INDEX, LAST_INDEX, False),
        (LAST_TERM, LAST_INDEX, LAST_INDEX + 1, [], LAST_INDEX, LAST_INDEX, False),  # commit capped
        (LAST_TERM, LAST_INDEX, LAST_INDEX - 1, [], LAST_INDEX, LAST_INDEX - 1, False),
        (LAST_TERM, LAST_INDEX, 0, [], LAST_INDEX, COMMIT, False),  # never lower
        (LAST_TERM, LAST_INDEX, LAST_INDEX, ents(4, 4), LAST_INDEX + 1, LAST_INDEX, False),
        (LAST_TERM, LAST_INDEX, LAST_INDEX + 1, ents(4, 4), LAST_INDEX + 1, LAST_INDEX + 1, False),
        (LAST_TERM, LAST_INDEX, LAST_INDEX + 2, ents(4, 4), LAST_INDEX + 1, LAST_INDEX + 1, False),
        (LAST_TERM, LAST_INDEX, LAST_INDEX + 2, ents(4, 4, 4), LAST_INDEX + 2, LAST_INDEX + 2, False),
        # Match with an entry in the middle.
        (LAST_TERM - 1, LAST_INDEX - 1, LAST_INDEX, ents(3, 4), LAST_INDEX, LAST_INDEX, False),
        (LAST_TERM - 2, LAST_INDEX - 2, LAST_INDEX, ents(2, 4), LAST_INDEX - 1, LAST_INDEX - 1, False),
        # Conflict with a committed entry.
        (LAST_TERM - 3, LAST_INDEX - 3, LAST_INDEX, ents(1, 4), None, COMMIT, True),
        (LAST_TERM - 2, LAST_INDEX - 2, LAST_INDEX, ents(2, 4, 4), LAST_INDEX, LAST_INDEX, False),
    ],
)
def test_maybe_append(
    log_term: int,
    index: int,
    committed: int,
    new: list[Entry],
    want_last: int | None,
    want_commit: int,
    want_panic: bool,
) -> None:
    log = log_with(ents(1, 1, 2, 3), committed=COMMIT)
    a = LogSlice(term=100, prev=EntryID(log_term, index), entries=tuple(new))
    if want_panic:
        with pytest.raises(InvariantError):
            log.maybe_append(a, committed)
        return
    assert log.maybe_append(a, committed) == want_last
    assert log.committed == want_commit
    if want_last is not None and new:
        assert log.slice(log.last_index() - len(new) + 1, log.last_index() + 1, NO_LIMIT) == new


def test_commit_to() -> None:
    log = log_with(ents(1, 1, 2, 3), committed=2)
    log.commit_to(3)
    assert log.committed == 3
    log.commit_to(1)  # never decreases
    assert log.committed == 3
    with pytest.raises(InvariantError):
        log.commit_to(4)


@pytest.mark.parametrize(("applied", "ok"), [(1, True), (3, True), (0, False), (4, False)])
def test_applied_to(applied: int, ok: bool) -> None:
    log = log_with(ents(1, 1, 1, 1, 1), committed=3)
    log.applied_to(1, 0)
    if ok:
        log.applied_to(applied, 0)
        assert log.applied == applied
    else:
        with pytest.raises(InvariantError):
            log.applied_to(applied, 0)


def test_next_committed_ents_respects_persistence() -> None:
    s = MemoryStorage()
    s.append(ents(1, 1, 1, 1))
    log = new_log(s)
    log.append(ents(4, 1, 1))  # unstable 4 and 5
    log.commit_to(5)
    assert [e.index for e in log.next_committed_ents(False)] == [1, 2, 3]
    assert [e.index for e in log.next_committed_ents(True)] == [1, 2, 3, 4, 5]


def test_next_committed_ents_respects_budget() -> None:
    s = MemoryStorage()
    s.append(ents(1, 1, 1, 1, 1, 1))
    size = entry_size(Entry(term=1, index=4))
    log = new_log(s, max_applying=2 * size)
    log.commit_to(5)
    assert [e.index for e in log.next_committed_ents(True)] == [1, 2]
    log.accept_applying(2, 2 * size, True)
    # Over budget: nothing more until the batch is acknowledged.
    assert log.applying_ents_paused
    assert not log.has_next_committed_ents(True)
    log.applied_to(2, 2 * size)
    assert [e.index for e in log.next_committed_ents(True)] == [3, 4]


def test_snapshot_pending_blocks_committed_ents() -> None:
    log = log_with(ents(1, 1, 1), committed=2)
    log.restore(Snapshot(metadata=SnapshotMetadata(index=5, term=2)))
    assert log.committed == 5
    assert not log.has_next_committed_ents(True)
    assert log.next_committed_ents(True) == []
    assert (log.first_index(), log.last_index()) == (6, 5)


def test_term_across_storage_and_unstable() -> None:
    s = MemoryStorage()
    s.apply_snapshot(Snapshot(metadata=SnapshotMetadata(index=3, term=3)))
    s.append(ents(4, 4, 4))
    log = new_log(s)
    log.append(ents(6, 5, 5))
    assert [log.term(i) for i in range(3, 8)] == [3, 4, 4, 5, 5]
    assert log.term_or_zero(2) == 0
    assert log.term_or_zero(8) == 0
    with pytest.raises(CompactedError):
        log.term(2)


@pytest.mark.parametrize(
    ("lo", "hi", "max_size", "want"),
    [
        (4, 8, NO_LIMIT, [4, 5, 6, 7]),  # spans storage (4, 5) and unstable (6, 7)
        (4, 6, NO_LIMIT, [4, 5]),
        (6, 8, NO_LIMIT, [6, 7]),
        (5, 7, NO_LIMIT, [5, 6]),
        (4, 8, 0, [4]),  # always at least one
        (6, 8, 0, [6]),
        (4, 8, 3, [4, 5, 6]),  # in entry-size units
        (4, 8, 2, [4, 5]),
        (5, 8, 1, [5]),  # the unstable entry would overflow: not included
        (7, 7, NO_LIMIT, []),
    ],
)
def test_slice(lo: int, hi: int, max_size: int, want: list[int]) -> None:
    s = MemoryStorage()
    s.apply_snapshot(Snapshot(metadata=SnapshotMetadata(index=3, term=3)))
    s.append(ents(4, 3, 3))
    log = new_log(s)
    log.append(ents(6, 3, 3))
    unit = entry_size(Entry(term=3, index=4))
    budget = max_size if max_size in (0, NO_LIMIT) else max_size * unit
    assert [e.index for e in log.slice(lo, hi, budget)] == want


def test_slice_out_of_bounds() -> None:
    log = log_with(ents(1, 1, 1))
    with pytest.raises(InvariantError):
        log.slice(1, 4, NO_LIMIT)
    with pytest.raises(InvariantError):
        log.slice(2, 1, NO_LIMIT)


def test_scan_pages_within_budget() -> None:
    log = log_with(ents(1, *([1] * 10)))
    unit = entry_size(Entry(term=1, index=1))
    pages: list[list[int]] = []

    def visit(page: list[Entry]) -> bool:
        pages.append([e.index for e in page])
        return True

    log.scan(1, 11, 3 * unit, visit)
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]


def test_stable_to_moves_entries_to_storage_view() -> None:
    s = MemoryStorage()
    log = new_log(s)
    log.append(ents(1, 1, 1))
    s.append(log.next_unstable_ents())
    log.stable_to(EntryID(1, 2))
    assert log.unstable.entries == []
    assert log.all_entries() == ents(1, 1, 1)


def test_log_slice_validity() -> None:
    assert LogSlice(term=3, prev=EntryID(1, 1), entries=tuple(ents(2, 1, 3))).valid() is None
    assert LogSlice(term=2, prev=EntryID(1, 1), entries=tuple(ents(2, 3))).valid() is not None
    assert LogSlice(term=3, prev=EntryID(2, 1), entries=tuple(ents(2, 1))).valid() is not None
    assert LogSlice(term=3, prev=EntryID(1, 1), entries=tuple(ents(3, 1))).valid() is not None
