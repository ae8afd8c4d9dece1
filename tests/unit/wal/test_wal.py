"""WAL behaviour: create/open/read_all, snapshots, segments, locks, retention, sync policy."""

from __future__ import annotations

import os
import shutil

import pytest

from server.api.raftpb import raftcodec
from server.raft.raftpb import ConfState, Entry, HardState
from server.wal import (
    WAL,
    EntryGapError,
    MetadataConflictError,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    WALClosedError,
    WALCorruptError,
    WALExistsError,
    WALLockedError,
    WALNotFoundError,
    WALSnapshot,
    WALStateError,
    exist,
    purge_segments,
    valid_snapshot_entries,
    verify,
)
from server.wal import wal as walmod
from server.wal.decoder import Decoder, SegmentSource
from server.wal.encoder import Encoder
from server.wal.record import RecordType
from server.wal.util import parse_wal_name, search_index, wal_name
from tests.unit.wal.helpers import ents, marker, read_back, reopen, wal_files

# --- create / open / read_all ------------------------------------------------------------------


def test_create_writes_a_readable_empty_log(waldir: str) -> None:
    assert not exist(waldir)
    w = WAL.create(waldir, b"meta")
    w.close()
    assert exist(waldir)
    assert wal_files(waldir) == [wal_name(0, 0)]
    assert not os.path.exists(waldir + ".tmp")
    md, st, es = read_back(waldir)
    assert (md, st, es) == (b"meta", HardState(), [])


def test_create_refuses_an_existing_wal(waldir: str) -> None:
    WAL.create(waldir, b"").close()
    with pytest.raises(WALExistsError):
        WAL.create(waldir, b"")
    assert isinstance(WALExistsError(), FileExistsError)


def test_create_refuses_a_non_empty_directory(waldir: str) -> None:
    os.makedirs(waldir)
    with open(os.path.join(waldir, "precious"), "w") as f:
        f.write("x")
    with pytest.raises(WALExistsError, match="not empty"):
        WAL.create(waldir, b"")
    assert os.path.exists(os.path.join(waldir, "precious"))


def test_create_accepts_an_empty_directory_and_clears_a_stale_tmp_dir(waldir: str) -> None:
    os.makedirs(waldir)
    os.makedirs(waldir + ".tmp")
    with open(os.path.join(waldir + ".tmp", "junk"), "w") as f:
        f.write("from an interrupted create")
    WAL.create(waldir, b"abc").close()
    assert not os.path.exists(waldir + ".tmp")
    assert read_back(waldir).metadata == b"abc"


def test_open_without_a_wal(waldir: str) -> None:
    with pytest.raises(WALNotFoundError):
        WAL.open(waldir)
    os.makedirs(waldir)
    with pytest.raises(WALNotFoundError):
        WAL.open(waldir)
    assert isinstance(WALNotFoundError(), FileNotFoundError)


def test_save_and_read_back(waldir: str) -> None:
    with WAL.create(waldir, b"meta") as w:
        w.save(HardState(term=1, vote=1, commit=1), ents(1, 1))
        w.save(HardState(term=2, vote=1, commit=3), ents(2, 3, term=2))
    md, st, es = read_back(waldir)
    assert md == b"meta"
    assert st == HardState(term=2, vote=1, commit=3)
    assert es == ents(1, 1) + ents(2, 3, term=2)


def test_reopen_and_append(waldir: str) -> None:
    with WAL.create(waldir, b"m") as w:
        w.save(HardState(term=1, commit=2), ents(1, 2))
    w, (_md, _st, _es) = reopen(waldir)
    with w:
        assert w.last_index == 2
        w.save(HardState(term=1, commit=4), ents(3, 4))
    assert read_back(waldir) == (b"m", HardState(term=1, commit=4), ents(1, 4))


def test_later_writes_of_an_index_replace_the_suffix(waldir: str) -> None:
    with WAL.create(waldir, b"") as w:
        w.save(HardState(term=1), ents(1, 5, term=1))
        # A new leader overwrites from index 3: entries 3.. of term 1 are gone, 4 and 5 too.
        w.save(HardState(term=2), [Entry(term=2, index=3, data=b"x")])
        w.save(HardState(term=2), [Entry(term=2, index=4, data=b"y")])
    es = read_back(waldir).entries
    assert es == [*ents(1, 2), Entry(term=2, index=3, data=b"x"), Entry(term=2, index=4, data=b"y")]


def test_entry_gap_is_corruption(waldir: str) -> None:
    with WAL.create(waldir, b"") as w:
        w.save(HardState(term=1), ents(1, 2))
        w.save(HardState(term=1), ents(5, 5))
    with pytest.raises(EntryGapError, match="entry 5") as ei:
        read_back(waldir)
    assert ei.value.path is not None and ei.value.path.endswith(wal_name(0, 0))


def test_empty_save_writes_nothing(waldir: str) -> None:
    with WAL.create(waldir, b"") as w:
        before = w.tail_offset
        w.save(HardState(), [])
        assert w.tail_offset == before
        w.save(HardState(), ents(1, 1))  # empty hard state is not written
    assert read_back(waldir).state == HardState()


# --- snapshot markers ----------------------------------------------------------------------------


def test_open_at_a_snapshot_returns_only_later_entries(waldir: str) -> None:
    with WAL.create(waldir, b"") as w:
        w.save(HardState(term=1, commit=5), ents(1, 5))
        w.save_snapshot(marker(3, 1))
        w.save(HardState(term=1, commit=7), ents(6, 7))
    _md, st, es = read_back(waldir, marker(3, 1))
    assert es == ents(4, 7)
    assert st == HardState(term=1, commit=7)
    w, res = reopen(waldir, marker(3, 1))
    w.close()
    assert res.entries == ents(4, 7)


def test_snapshot_marker_must_exist(waldir: str) -> None:
    with WAL.create(waldir, b"") as w:
        w.save(HardState(term=1), ents(1, 5))
    with pytest.raises(SnapshotNotFoundError):
        read_back(waldir, marker(3, 1))


def test_snapshot_marker_term_must_match(waldir: str) -> None:
    with WAL.create(waldir, b"") as w:
        w.save(HardState(term=1), ents(1, 5))
        w.save_snapshot(marker(3, 1))
    with pytest.raises(SnapshotMismatchError):
        read_back(waldir, marker(3, 2))


def test_snapshot_marker_needs_conf_state(waldir: str) -> None:
    with WAL.create(waldir, b"") as w, pytest.raises(ValueError, match="ConfState"):
        w.save_snapshot(WALSnapshot(index=3, term=1))


def test_snapshot_marker_round_trips_conf_state(waldir: str) -> None:
    cs = ConfState(voters=(1, 2, 3), learners=(9,))
    with WAL.create(waldir, b"") as w:
        w.save(HardState(term=1, commit=3), ents(1, 3))
        w.save_snapshot(WALSnapshot(index=3, term=1, conf_state=cs))
    assert valid_snapshot_entries(waldir) == [WALSnapshot(), WALSnapshot(index=3, term=1, conf_state=cs)]


def test_valid_snapshot_entries_filters_by_commit(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=1024) as w:
        w.save(HardState(term=1, commit=2), ents(1, 5))
        w.save_snapshot(marker(2, 1))
        w.save_snapshot(marker(5, 1))  # not committed yet
        for i in range(6, 40):
            w.save(HardState(term=1, commit=i - 1), ents(i, i, data=b"z" * 100))
        w.save_snapshot(marker(30, 1))
        w.save(HardState(term=1, commit=29), [])
    assert len(wal_files(waldir)) > 2
    assert [s.index for s in valid_snapshot_entries(waldir)] == [0, 2, 5]


# --- misuse ---------------------------------------------------------------------------------------


def test_append_requires_read_all(waldir: str) -> None:
    WAL.create(waldir, b"").close()
    w = WAL.open(waldir)
    with w, pytest.raises(WALStateError, match="read_all"):
        w.save(HardState(term=1), ents(1, 1))


def test_read_all_only_once(waldir: str) -> None:
    with WAL.create(waldir, b"") as w, pytest.raises(WALStateError):
        w.read_all()
    w, _ = reopen(waldir)
    with w, pytest.raises(WALStateError):
        w.read_all()


def test_read_only_wal_cannot_append(waldir: str) -> None:
    WAL.create(waldir, b"").close()
    w = WAL.open_for_read(waldir)
    w.read_all()
    with w, pytest.raises(WALStateError, match="read-only"):
        w.save(HardState(term=1), ents(1, 1))


def test_closed_wal(waldir: str) -> None:
    w = WAL.create(waldir, b"")
    w.close()
    w.close()  # idempotent
    with pytest.raises(WALClosedError):
        w.save(HardState(term=1), ents(1, 1))


def test_second_writer_is_locked_out(waldir: str) -> None:
    w = WAL.create(waldir, b"")
    with pytest.raises(WALLockedError):
        WAL.open(waldir)
    # Readers take no locks.
    assert read_back(waldir).metadata == b""
    w.close()
    w2, _ = reopen(waldir)
    w2.close()


# --- segments ------------------------------------------------------------------------------------


def test_segments_are_cut_at_the_size_limit(waldir: str) -> None:
    with WAL.create(waldir, b"meta", segment_size=2048) as w:
        for i in range(1, 101):
            w.save(HardState(term=1, vote=1, commit=i - 1), ents(i, i, data=b"d" * 64))
        paths = w.segment_paths
    names = wal_files(waldir)
    assert len(names) == len(paths) > 3
    seqs = [parse_wal_name(n)[0] for n in names]
    assert seqs == list(range(len(names)))
    # Each segment is named after the index following the last entry before the cut, and a
    # closed segment is truncated to its data (no preallocated space left).
    for name in names[1:]:
        seq, _first = parse_wal_name(name)
        prev = os.path.join(waldir, names[seq - 1])
        assert os.path.getsize(prev) >= 2048
        assert os.path.getsize(prev) < 2048 + 200
    md, st, es = read_back(waldir)
    assert md == b"meta" and es == ents(1, 100, data=b"d" * 64) and st == HardState(1, 1, 99)


def test_new_segment_header_carries_the_hard_state(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=512) as w:
        w.save(HardState(term=3, vote=2, commit=4), ents(1, 4, data=b"x" * 200))
        w.save_snapshot(marker(4, 3))
    assert len(wal_files(waldir)) == 2
    # Reading from the last segment alone still yields the hard state.
    assert read_back(waldir, marker(4, 3)).state == HardState(term=3, vote=2, commit=4)


def test_open_at_snapshot_starts_in_the_right_segment(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=1024) as w:
        for i in range(1, 61):
            w.save(HardState(term=1, commit=i), ents(i, i, data=b"q" * 50))
            if i % 10 == 0:
                w.save_snapshot(marker(i, 1))
    names = wal_files(waldir)
    for snap_index in (10, 20, 30, 40, 50, 60):
        start = search_index(names, snap_index)
        assert start is not None
        assert read_back(waldir, marker(snap_index, 1)).entries == ents(snap_index + 1, 60, data=b"q" * 50)


def test_missing_middle_segment_is_refused(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=512) as w:
        for i in range(1, 30):
            w.save(HardState(term=1, commit=i), ents(i, i, data=b"x" * 100))
    names = wal_files(waldir)
    assert len(names) >= 4
    os.unlink(os.path.join(waldir, names[2]))
    with pytest.raises(WALCorruptError, match="continuously"):
        read_back(waldir)
    with pytest.raises(WALCorruptError, match="continuously"):
        WAL.open(waldir)
    with pytest.raises(WALCorruptError):
        valid_snapshot_entries(waldir)


def test_swapped_segment_breaks_the_crc_chain(waldir: str) -> None:
    # Same names, but a segment from another WAL: caught by the CRC record at its head.
    other = waldir + "-other"
    for d, payload in ((waldir, b"a"), (other, b"b")):
        with WAL.create(d, b"", segment_size=512) as w:
            for i in range(1, 20):
                w.save(HardState(term=1, commit=i), ents(i, i, data=payload * 100))
    names = wal_files(waldir)
    assert names == wal_files(other)
    shutil.copy(os.path.join(other, names[2]), os.path.join(waldir, names[2]))
    with pytest.raises(WALCorruptError, match="crc mismatch"):
        read_back(waldir)


def test_metadata_conflict(waldir: str) -> None:
    with WAL.create(waldir, b"cluster-a", segment_size=512) as w:
        w.save(HardState(term=1, commit=5), ents(1, 5, data=b"x" * 100))
        w.save(HardState(term=1, commit=5), ents(6, 6))
    names = wal_files(waldir)
    assert len(names) == 2
    # Rewrite segment 1 with a different metadata record but a correct CRC chain.
    first = os.path.join(waldir, names[0])
    dec = Decoder([SegmentSource(first)])
    while dec.decode() is not None:
        pass
    second = os.path.join(waldir, names[1])
    fd = os.open(second, os.O_RDWR | os.O_TRUNC)
    try:
        enc = Encoder(fd, dec.last_crc, 0)
        enc.encode(RecordType.CRC)
        enc.encode(RecordType.METADATA, b"cluster-b")
        enc.encode(RecordType.ENTRY, raftcodec.marshal_entry(Entry(term=1, index=6)))
        enc.flush()
    finally:
        os.close(fd)
    with pytest.raises(MetadataConflictError, match="metadata"):
        read_back(waldir)
    with pytest.raises(MetadataConflictError):
        verify(waldir)


def test_tail_write_without_slack_space(waldir: str) -> None:
    with WAL.create(waldir, b"m") as w:  # preallocated to 64 MB
        w.save(HardState(term=1), ents(1, 5))
        end, tail = w.tail_offset, w.segment_paths[-1]
    assert os.path.getsize(tail) == walmod.SEGMENT_SIZE_BYTES
    os.truncate(tail, end)
    w, res = reopen(waldir)
    with w:
        assert res.entries == ents(1, 5)
        w.save(HardState(term=1), ents(6, 10))
    assert read_back(waldir).entries == ents(1, 10)


def test_stale_tmp_file_from_an_interrupted_cut(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=600) as w:
        w.save(HardState(term=1, commit=1), ents(1, 1))
    # A crash during a cut leaves a half-written temporary segment behind.
    for name in ("0.tmp", "1.tmp"):
        with open(os.path.join(waldir, name), "wb") as f:
            f.write(b"\x01" * 5000)
    w, res = reopen(waldir, segment_size=600)
    with w:
        assert res.entries == ents(1, 1)
        for i in range(2, 30):
            w.save(HardState(term=1, commit=i), ents(i, i, data=b"t" * 100))
    assert len(wal_files(waldir)) > 3
    assert read_back(waldir).entries == ents(1, 1) + ents(2, 29, data=b"t" * 100)


# --- retention -----------------------------------------------------------------------------------


def _starts(paths: list[str]) -> list[int]:
    return [parse_wal_name(os.path.basename(p))[1] for p in paths]


def test_release_lock_to_and_purge(waldir: str) -> None:
    w = WAL.create(waldir, b"", segment_size=1)  # every save cuts a segment
    for i in range(1, 11):
        w.save(HardState(term=1, commit=i), ents(i, i))
    # Saving entry i cuts a segment starting at i + 1.
    names = wal_files(waldir)
    assert _starts(names) == [0, *range(2, 12)]
    # Nothing released yet: purging removes nothing.
    assert purge_segments(waldir) == []
    w.release_lock_to(5)
    # The last segment starting below 5 (at 4) is kept: it may hold the entries before 5.
    assert _starts(w.segment_paths) == list(range(4, 12))
    removed = w.purge()
    assert [os.path.basename(p) for p in removed] == names[:3]
    w.release_lock_to(100)
    assert _starts(w.segment_paths) == [11]  # the tail is never released
    assert len(purge_segments(waldir, max_segments=3)) == 5
    assert _starts(wal_files(waldir)) == [9, 10, 11]
    w.save_snapshot(marker(11, 1))
    w.save(HardState(term=1, commit=12), ents(12, 12))
    w.close()
    assert read_back(waldir, marker(11, 1)).entries == ents(12, 12)
    # A snapshot older than every remaining segment can no longer be opened.
    with pytest.raises(WALNotFoundError):
        read_back(waldir, marker(2, 1))


def test_purge_never_removes_the_newest_segment(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=1) as w:
        w.release_lock_to(10)
        assert len(w.segment_paths) == 1
        w.save(HardState(term=1, commit=1), ents(1, 1))
    assert len(wal_files(waldir)) == 2
    # Closed WAL: no locks, every segment but the newest is purgeable.
    assert len(purge_segments(waldir)) == 1
    assert exist(waldir)


# --- verify ---------------------------------------------------------------------------------------


def test_verify(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=512) as w:
        for i in range(1, 20):
            w.save(HardState(term=1, commit=i), ents(i, i, data=b"x" * 60))
        w.save_snapshot(marker(12, 1))
        w.save(HardState(term=2, vote=3, commit=19), [])
        assert verify(waldir, marker(12, 1)) == HardState(term=2, vote=3, commit=19)
    assert verify(waldir) == HardState(term=2, vote=3, commit=19)
    with pytest.raises(SnapshotNotFoundError):
        verify(waldir, marker(13, 1))
    with pytest.raises(SnapshotMismatchError):
        verify(waldir, marker(12, 2))
    first = os.path.join(waldir, wal_files(waldir)[0])
    with open(first, "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0x40]))
    with pytest.raises(WALCorruptError):
        verify(waldir)


# --- sync policy ---------------------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def test_group_commit_is_one_fdatasync(waldir: str, fsyncs: list[int]) -> None:
    with WAL.create(waldir, b"") as w:
        fsyncs.clear()
        w.save(HardState(term=1, vote=1, commit=0), ents(1, 2000, data=b"v" * 100))
        assert len(fsyncs) == 1
    assert len(read_back(waldir).entries) == 2000


def test_sync_policy_follows_raft(waldir: str, fsyncs: list[int]) -> None:
    with WAL.create(waldir, b"") as w:
        fsyncs.clear()
        w.save(HardState(term=1, vote=1, commit=0), ents(1, 1))
        assert len(fsyncs) == 1  # new entries
        w.save(HardState(term=1, vote=1, commit=1), [])
        assert len(fsyncs) == 1  # commit-only change need not be durable
        w.save(HardState(term=2, vote=0, commit=1), [])
        assert len(fsyncs) == 2  # term change
        w.save(HardState(term=2, vote=0, commit=1), ents(2, 2), must_sync=False)
        assert len(fsyncs) == 2  # caller's explicit choice
        w.save(HardState(term=2, vote=0, commit=2), [], must_sync=True)
        assert len(fsyncs) == 3
        w.sync()
        assert len(fsyncs) == 4
    assert read_back(waldir).entries == ents(1, 2)


def test_unsafe_no_sync(waldir: str, fsyncs: list[int]) -> None:
    with WAL.create(waldir, b"", unsafe_no_sync=True) as w:
        w.save(HardState(term=1, vote=1), ents(1, 3))
    assert fsyncs == []
    assert read_back(waldir).entries == ents(1, 3)
