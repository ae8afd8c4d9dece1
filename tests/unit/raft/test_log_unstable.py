"""Unstable: the in-memory, not-yet-persisted tail of the log."""

from __future__ import annotations

import pytest

from server.raft.log_unstable import EntryID, Unstable
from server.raft.logger import DiscardLogger
from server.raft.raftpb import Entry, Snapshot, SnapshotMetadata
from server.raft.util import InvariantError

from .helpers import ents


def snap(index: int, term: int) -> Snapshot:
    return Snapshot(metadata=SnapshotMetadata(index=index, term=term))


def unstable(
    entries: list[Entry], offset: int, snapshot: Snapshot | None = None, in_progress: int | None = None
) -> Unstable:
    u = Unstable(offset, DiscardLogger())
    u.entries = list(entries)
    u.snapshot = snapshot
    u.offset_in_progress = offset if in_progress is None else in_progress
    return u


@pytest.mark.parametrize(
    ("entries", "offset", "snapshot", "want"),
    [
        (ents(5, 1), 5, None, None),  # no snapshot
        ([], 0, None, None),
        (ents(5, 1), 5, snap(4, 1), 5),  # snapshot defines it
        ([], 5, snap(4, 1), 5),
    ],
)
def test_maybe_first_index(
    entries: list[Entry], offset: int, snapshot: Snapshot | None, want: int | None
) -> None:
    assert unstable(entries, offset, snapshot).maybe_first_index() == want


@pytest.mark.parametrize(
    ("entries", "offset", "snapshot", "want"),
    [
        (ents(5, 1), 5, None, 5),
        (ents(5, 1), 5, snap(4, 1), 5),
        ([], 5, snap(4, 1), 4),
        ([], 0, None, None),
    ],
)
def test_maybe_last_index(
    entries: list[Entry], offset: int, snapshot: Snapshot | None, want: int | None
) -> None:
    assert unstable(entries, offset, snapshot).maybe_last_index() == want


@pytest.mark.parametrize(
    ("entries", "offset", "snapshot", "index", "want"),
    [
        (ents(5, 1), 5, None, 5, 1),
        (ents(5, 1), 5, None, 6, None),
        (ents(5, 1), 5, None, 4, None),
        (ents(5, 1), 5, snap(4, 1), 5, 1),
        (ents(5, 1), 5, snap(4, 1), 6, None),
        (ents(5, 1), 5, snap(4, 1), 4, 1),  # the snapshot's own index
        (ents(5, 1), 5, snap(4, 1), 3, None),
        ([], 5, snap(4, 1), 5, None),
        ([], 5, snap(4, 1), 4, 1),
        ([], 0, None, 5, None),
    ],
)
def test_maybe_term(
    entries: list[Entry], offset: int, snapshot: Snapshot | None, index: int, want: int | None
) -> None:
    assert unstable(entries, offset, snapshot).maybe_term(index) == want


def test_restore() -> None:
    u = unstable(ents(5, 1), 5, snap(4, 1), in_progress=6)
    u.snapshot_in_progress = True
    s = snap(6, 2)
    u.restore(s)
    assert (u.offset, u.offset_in_progress, u.entries, u.snapshot, u.snapshot_in_progress) == (
        7,
        7,
        [],
        s,
        False,
    )


@pytest.mark.parametrize(
    ("entries", "in_progress", "want"),
    [
        ([], 5, []),
        (ents(5, 1, 1), 5, ents(5, 1, 1)),
        (ents(5, 1, 1), 6, ents(6, 1)),
        (ents(5, 1, 1), 7, []),
    ],
)
def test_next_entries(entries: list[Entry], in_progress: int, want: list[Entry]) -> None:
    assert unstable(entries, 5, in_progress=in_progress).next_entries() == want


@pytest.mark.parametrize(
    ("snapshot", "in_progress", "want_none"),
    [(None, False, True), (snap(4, 1), False, False), (snap(4, 1), True, True)],
)
def test_next_snapshot(snapshot: Snapshot | None, in_progress: bool, want_none: bool) -> None:
    u = unstable([], 5, snapshot)
    u.snapshot_in_progress = in_progress
    assert (u.next_snapshot() is None) == want_none


def test_accept_in_progress() -> None:
    u = unstable(ents(5, 1, 1), 5, snap(4, 1))
    u.accept_in_progress()
    assert (u.offset_in_progress, u.snapshot_in_progress) == (7, True)
    assert u.next_entries() == []
    assert u.next_snapshot() is None


@pytest.mark.parametrize(
    ("entries", "offset", "in_progress", "snapshot", "stable", "want_offset", "want_in_progress", "want_len"),
    [
        ([], 0, 0, None, EntryID(1, 4), 0, 0, 0),  # nothing to stabilise
        (ents(5, 1), 5, 6, None, EntryID(1, 5), 6, 6, 0),
        (ents(5, 1, 1), 5, 6, None, EntryID(1, 5), 6, 6, 1),
        (ents(5, 1, 1), 5, 7, None, EntryID(1, 5), 6, 7, 1),
        (ents(6, 2), 6, 7, None, EntryID(1, 6), 6, 7, 1),  # term mismatch: ignored
        (ents(5, 1), 5, 6, None, EntryID(1, 4), 5, 6, 1),  # index before the entries
        (ents(5, 1), 5, 6, None, EntryID(2, 4), 5, 6, 1),
        (ents(5, 1), 5, 6, snap(4, 1), EntryID(1, 4), 5, 6, 1),  # matches the snapshot: ignored
        (ents(5, 1, 1), 5, 6, snap(4, 1), EntryID(1, 5), 6, 6, 1),
    ],
)
def test_stable_to(
    entries: list[Entry],
    offset: int,
    in_progress: int,
    snapshot: Snapshot | None,
    stable: EntryID,
    want_offset: int,
    want_in_progress: int,
    want_len: int,
) -> None:
    u = unstable(entries, offset, snapshot, in_progress)
    u.stable_to(stable)
    assert (u.offset, u.offset_in_progress, len(u.entries)) == (want_offset, want_in_progress, want_len)


@pytest.mark.parametrize(
    ("entries", "offset", "in_progress", "append", "want_offset", "want_in_progress", "want"),
    [
        # Direct append.
        (ents(5, 1), 5, 5, ents(6, 1, 1), 5, 5, ents(5, 1, 1, 1)),
        (ents(5, 1), 5, 6, ents(6, 1, 1), 5, 6, ents(5, 1, 1, 1)),
        # Replace everything.
        (ents(5, 1), 5, 5, ents(5, 2, 2), 5, 5, ents(5, 2, 2)),
        (ents(5, 1), 5, 5, ents(4, 2, 2, 2), 4, 4, ents(4, 2, 2, 2)),
        (ents(5, 1), 5, 6, ents(5, 2, 2), 5, 5, ents(5, 2, 2)),
        # Truncate the tail and append; in-progress writes beyond the cut are void.
        (ents(5, 1, 1, 1), 5, 5, ents(6, 2), 5, 5, ents(5, 1, 2)),
        (ents(5, 1, 1, 1), 5, 5, ents(7, 2, 2), 5, 5, ents(5, 1, 1, 2, 2)),
        (ents(5, 1, 1, 1), 5, 8, ents(6, 2), 5, 6, ents(5, 1, 2)),
        (ents(5, 1, 1, 1), 5, 6, ents(7, 2), 5, 6, ents(5, 1, 1, 2)),
    ],
)
def test_truncate_and_append(
    entries: list[Entry],
    offset: int,
    in_progress: int,
    append: list[Entry],
    want_offset: int,
    want_in_progress: int,
    want: list[Entry],
) -> None:
    u = unstable(entries, offset, in_progress=in_progress)
    u.truncate_and_append(append)
    assert (u.offset, u.offset_in_progress, u.entries) == (want_offset, want_in_progress, want)


def test_slice_bounds() -> None:
    u = unstable(ents(5, 1, 1), 5)
    assert u.slice(5, 7) == ents(5, 1, 1)
    with pytest.raises(InvariantError):
        u.slice(4, 6)
    with pytest.raises(InvariantError):
        u.slice(6, 8)
    with pytest.raises(InvariantError):
        u.slice(6, 5)
