"""MemoryStorage: term/entries lookups, compaction, snapshots and appends."""

from __future__ import annotations

import pytest

from server.raft.raftpb import ConfState, Entry, Snapshot, SnapshotMetadata
from server.raft.storage import (
    CompactedError,
    MemoryStorage,
    SnapOutOfDateError,
    StorageError,
    UnavailableError,
)
from server.raft.util import NO_LIMIT, entry_size

from .helpers import ents


def storage_with(entries: list[Entry]) -> MemoryStorage:
    """A storage whose compaction point is entries[0] (like a snapshot at that entry)."""
    s = MemoryStorage()
    first = entries[0]
    s.apply_snapshot(Snapshot(metadata=SnapshotMetadata(index=first.index, term=first.term)))
    s.append(entries[1:])
    return s


BASE = [Entry(term=3, index=3), Entry(term=4, index=4), Entry(term=5, index=5)]


@pytest.mark.parametrize(
    ("i", "want"),
    [(2, CompactedError), (3, 3), (4, 4), (5, 5), (6, UnavailableError)],
)
def test_term(i: int, want: int | type[StorageError]) -> None:
    s = storage_with(BASE)
    if isinstance(want, int):
        assert s.term(i) == want
    else:
        with pytest.raises(want):
            s.term(i)


def big(term: int, index: int) -> Entry:
    return Entry(term=term, index=index)


SIZE = entry_size(Entry(term=5, index=5))


@pytest.mark.parametrize(
    ("lo", "hi", "max_size", "want"),
    [
        (2, 6, NO_LIMIT, CompactedError),
        (3, 4, NO_LIMIT, CompactedError),
        (4, 5, NO_LIMIT, ents(4, 4)),
        (4, 6, NO_LIMIT, ents(4, 4, 5)),
        (4, 7, NO_LIMIT, ents(4, 4, 5, 6)),
        # Always at least one entry, even over the limit.
        (4, 7, 0, ents(4, 4)),
        (4, 7, 2 * SIZE, ents(4, 4, 5)),
        (4, 7, 3 * SIZE - 1, ents(4, 4, 5)),
        (4, 7, 3 * SIZE, ents(4, 4, 5, 6)),
    ],
)
def test_entries(lo: int, hi: int, max_size: int, want: list[Entry] | type[StorageError]) -> None:
    s = storage_with([*BASE, Entry(term=6, index=6)])
    if isinstance(want, list):
        assert s.entries(lo, hi, max_size) == want
    else:
        with pytest.raises(want):
            s.entries(lo, hi, max_size)


def test_first_and_last_index() -> None:
    s = storage_with(BASE)
    assert (s.first_index(), s.last_index()) == (4, 5)
    s.append([Entry(term=5, index=6)])
    assert s.last_index() == 6
    s.compact(4)
    assert (s.first_index(), s.last_index()) == (5, 6)


def test_empty_storage() -> None:
    s = MemoryStorage()
    assert (s.first_index(), s.last_index()) == (1, 0)
    assert s.term(0) == 0
    with pytest.raises(UnavailableError):
        s.entries(1, 1, NO_LIMIT)


@pytest.mark.parametrize(
    ("i", "want_err", "want_first", "want_len"),
    [
        (2, CompactedError, 4, 3),
        (3, CompactedError, 4, 3),
        (4, None, 5, 2),
        (5, None, 6, 1),
        (6, UnavailableError, 4, 3),
    ],
)
def test_compact(i: int, want_err: type[StorageError] | None, want_first: int, want_len: int) -> None:
    s = storage_with(BASE)
    if want_err is None:
        s.compact(i)
    else:
        with pytest.raises(want_err):
            s.compact(i)
    assert s.first_index() == want_first
    assert s.last_index() - s.first_index() + 2 == want_len
    # The compaction point keeps its term.
    assert s.term(want_first - 1) == want_first - 1


CS = ConfState(voters=(1, 2, 3))


@pytest.mark.parametrize(
    ("i", "want"),
    [
        (4, Snapshot(data=b"data", metadata=SnapshotMetadata(conf_state=CS, index=4, term=4))),
        (5, Snapshot(data=b"data", metadata=SnapshotMetadata(conf_state=CS, index=5, term=5))),
    ],
)
def test_create_snapshot(i: int, want: Snapshot) -> None:
    s = storage_with(BASE)
    assert s.create_snapshot(i, CS, b"data") == want
    assert s.snapshot() == want
    assert s.initial_state()[1] == CS


def test_create_snapshot_errors() -> None:
    s = storage_with(BASE)
    with pytest.raises(SnapOutOfDateError):
        s.create_snapshot(3, CS, b"")
    with pytest.raises(UnavailableError):
        s.create_snapshot(6, CS, b"")
    s.create_snapshot(4, CS, b"")
    with pytest.raises(SnapOutOfDateError):
        s.create_snapshot(4, CS, b"")


@pytest.mark.parametrize(
    ("new", "want"),
    [
        (ents(1, 1, 2), ents(3, 3, 4, 5)),  # entirely compacted: ignored
        (ents(3, 3, 4, 5), ents(3, 3, 4, 5)),  # identical
        (ents(3, 3, 6, 6), ents(3, 3, 6, 6)),  # overwrite from index 4
        (ents(3, 3, 4, 5, 5), ents(3, 3, 4, 5, 5)),  # extend
        (ents(2, 3, 3, 5), ents(3, 3, 5)),  # straddles the compaction point: truncated
        (ents(4, 5), ents(3, 3, 5)),  # conflict at 4
        (ents(5, 5), ents(3, 3, 4, 5)),  # same entry
        (ents(6, 5), ents(3, 3, 4, 5, 5)),  # direct append
    ],
)
def test_append(new: list[Entry], want: list[Entry]) -> None:
    s = storage_with(BASE)
    s.append(new)
    got = [Entry(term=s.term(3), index=3), *s.entries(4, s.last_index() + 1, NO_LIMIT)]
    assert got == want


def test_append_with_gap_fails() -> None:
    s = storage_with(BASE)
    with pytest.raises(UnavailableError):
        s.append(ents(7, 5))


def test_apply_snapshot() -> None:
    s = MemoryStorage()
    s.apply_snapshot(Snapshot(metadata=SnapshotMetadata(conf_state=CS, index=4, term=4)))
    assert (s.first_index(), s.last_index(), s.term(4)) == (5, 4, 4)
    with pytest.raises(SnapOutOfDateError):
        s.apply_snapshot(Snapshot(metadata=SnapshotMetadata(conf_state=CS, index=3, term=3)))
