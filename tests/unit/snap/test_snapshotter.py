"""Snapshotter: raft snapshot files (save, load newest intact, .broken handling, matching the
WAL's markers) and database snapshot files."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.api.raftpb import raftcodec
from server.raft.raftpb import ConfState, Snapshot, SnapshotMetadata
from server.snap import (
    EmptySnapshotError,
    NoDBSnapshotError,
    NoSnapshotError,
    SnapshotCorruptError,
    SnapshotCRCMismatchError,
    Snapshotter,
    read,
    snappb,
)
from server.wal import WALSnapshot


def snap(term: int, index: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(data=data, metadata=SnapshotMetadata(ConfState(voters=(1, 2, 3)), index=index, term=term))


@pytest.fixture
def ss(tmp_path: Path) -> Snapshotter:
    d = tmp_path / "snap"
    d.mkdir()
    return Snapshotter(str(d))


def path_of(ss: Snapshotter, term: int, index: int) -> str:
    return os.path.join(ss.dir, f"{term:016x}-{index:016x}.snap")


def files(ss: Snapshotter) -> list[str]:
    return sorted(os.listdir(ss.dir))


# --- raft snapshots ------------------------------------------------------------------------------


def test_save_and_load(ss: Snapshotter) -> None:
    s = snap(3, 100, b"x" * 10_000)
    ss.save_snap(s)
    assert files(ss) == ["0000000000000003-0000000000000064.snap"]
    assert ss.load() == s
    assert read(path_of(ss, 3, 100)) == s


def test_file_format_is_etcds(ss: Snapshotter) -> None:
    s = snap(1, 5)
    ss.save_snap(s)
    with open(path_of(ss, 1, 5), "rb") as f:
        raw = f.read()
    inner = raftcodec.marshal_snapshot(s)
    crc = crc32c.crc32c(inner)
    assert snappb.unmarshal(raw) == (crc, inner)
    assert raw.startswith(b"\x08") and raw[-len(inner) :] == inner


def test_empty_snapshot_is_not_saved(ss: Snapshotter) -> None:
    ss.save_snap(Snapshot())
    assert files(ss) == []
    with pytest.raises(NoSnapshotError):
        ss.load()


def test_load_picks_the_newest(ss: Snapshotter) -> None:
    for term, index in ((1, 10), (1, 30), (2, 20), (1, 25)):
        ss.save_snap(snap(term, index))
    # Newest = highest term, then highest index.
    assert ss.load().metadata.index == 20
    assert ss.snap_names()[0] == "0000000000000002-0000000000000014.snap"


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda b: b"", EmptySnapshotError),
        (lambda b: b[: len(b) // 2], SnapshotCorruptError),  # envelope cut short
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), SnapshotCRCMismatchError),
        (lambda b: snappb.marshal(0, b"abc"), EmptySnapshotError),  # crc 0
        (lambda b: snappb.marshal(crc32c.crc32c(b"\xff\xff"), b"\xff\xff"), SnapshotCorruptError),
        (lambda b: b"\x0f" + b, SnapshotCorruptError),  # bad wire type
    ],
)
def test_broken_newest_falls_back_to_older(ss: Snapshotter, damage: object, error: type[Exception]) -> None:
    ss.save_snap(snap(1, 10, b"older"))
    ss.save_snap(snap(1, 20, b"newer"))
    p = path_of(ss, 1, 20)
    with open(p, "rb") as f:
        raw = f.read()
    with open(p, "wb") as f:
        f.write(damage(raw))  # type: ignore[operator]
    with pytest.raises(error):
        read(p)
    assert ss.load().data == b"older"
    assert not os.path.exists(p)
    assert os.path.exists(p + ".broken")
    # The broken file is out of the way for good.
    assert ss.load().data == b"older"


def test_all_broken(ss: Snapshotter) -> None:
    ss.save_snap(snap(1, 10))
    with open(path_of(ss, 1, 10), "r+b") as f:
        f.seek(10)
        f.write(b"\x00\x00")
    with pytest.raises(NoSnapshotError):
        ss.load()
    assert files(ss) == ["0000000000000001-000000000000000a.snap.broken"]


def test_load_newest_available_matches_the_wal(ss: Snapshotter) -> None:
    for term, index in ((1, 10), (1, 20), (2, 30)):
        ss.save_snap(snap(term, index))
    markers = [WALSnapshot(), WALSnapshot(index=10, term=1), WALSnapshot(index=20, term=1)]
    # 30 is newer but the WAL has no marker for it (crash between the two saves).
    assert ss.load_newest_available(markers).metadata.index == 20
    # Same index, other term: no match.
    assert (
        ss.load_newest_available(
            [WALSnapshot(index=20, term=2), WALSnapshot(index=10, term=1)]
        ).metadata.index
        == 10
    )
    with pytest.raises(NoSnapshotError):
        ss.load_newest_available([WALSnapshot(index=5, term=1)])
    with pytest.raises(NoSnapshotError):
        ss.load_newest_available([])
    # Unmatched snapshots are left alone (not renamed broken).
    assert len([n for n in files(ss) if n.endswith(".snap")]) == 3


def test_leftovers_are_cleaned_and_strangers_reported(
    ss: Snapshotter, caplog: pytest.LogCaptureFixture
) -> None:
    ss.save_snap(snap(1, 10))
    for name in ("0000000000000001-0000000000000014.snap.tmp", "db.tmp.123", "db", "notes.txt"):
        with open(os.path.join(ss.dir, name), "wb") as f:
            f.write(b"junk")
    with caplog.at_level(logging.WARNING, logger="server.snap"):
        assert ss.load().metadata.index == 10
    assert files(ss) == ["0000000000000001-000000000000000a.snap", "db", "notes.txt"]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(m.endswith("notes.txt") for m in warned)
    assert not any(m.endswith(": db") for m in warned)


def test_purge_snapshots(ss: Snapshotter) -> None:
    for i in range(1, 8):
        ss.save_snap(snap(1, i * 10))
    removed = ss.purge_snapshots(3)
    assert [os.path.basename(p) for p in removed] == [f"{1:016x}-{i * 10:016x}.snap" for i in range(1, 5)]
    assert ss.load().metadata.index == 70
    assert ss.purge_snapshots(5) == []


def test_no_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Snapshotter(str(tmp_path / "missing")).load()


# --- database snapshots --------------------------------------------------------------------------


def test_save_db_from(ss: Snapshotter) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    n = ss.save_db_from(io.BytesIO(blob), 42)
    assert n == len(blob)
    p = ss.db_file_path(42)
    assert os.path.basename(p) == f"{42:016x}.snap.db"
    with open(p, "rb") as f:
        assert f.read() == blob
    assert files(ss) == [f"{42:016x}.snap.db"]  # no temporary file left behind


def test_save_db_from_keeps_an_existing_file(ss: Snapshotter) -> None:
    ss.save_db_from(io.BytesIO(b"first"), 7)
    assert ss.save_db_from(io.BytesIO(b"second copy"), 7) == len(b"second copy")
    with open(ss.db_file_path(7), "rb") as f:
        assert f.read() == b"first"
    assert files(ss) == [f"{7:016x}.snap.db"]


def test_save_db_from_failing_reader_leaves_nothing(ss: Snapshotter) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int = -1, /) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("peer went away")
            return b"x" * 1000

    with pytest.raises(ConnectionResetError):
        ss.save_db_from(Broken(), 9)
    assert files(ss) == []
    with pytest.raises(NoDBSnapshotError):
        ss.db_file_path(9)
    assert isinstance(NoDBSnapshotError(), FileNotFoundError)


def test_release_snap_dbs(ss: Snapshotter) -> None:
    for i in (5, 10, 15):
        ss.save_db_from(io.BytesIO(b"db%d" % i), i)
    ss.save_snap(snap(1, 10))
    removed = ss.release_snap_dbs(snap(1, 10))
    assert [os.path.basename(p) for p in removed] == [f"{5:016x}.snap.db"]
    assert sorted(n for n in files(ss) if n.endswith(".db")) == [f"{10:016x}.snap.db", f"{15:016x}.snap.db"]


def test_db_temp_files_are_cleaned_on_load(ss: Snapshotter) -> None:
    ss.save_snap(snap(1, 1))
    leftover = os.path.join(ss.dir, f"{3:016x}.snap.db.abc123.tmp")
    with open(leftover, "wb") as f:
        f.write(b"partial")
    ss.load()
    assert not os.path.exists(leftover)


# --- the envelope codec --------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=300))
def test_envelope_round_trip(crc: int, data: bytes) -> None:
    assert snappb.unmarshal(snappb.marshal(crc, data)) == (crc, data)


def test_envelope_skips_unknown_fields_and_rejects_garbage() -> None:
    extra = b"\x18\x05" + b"\x22\x02hi" + b"\x29" + bytes(8) + b"\x35" + bytes(4)
    assert snappb.unmarshal(extra + snappb.marshal(7, b"abc")) == (7, b"abc")
    for bad in (
        b"\x08",
        b"\x12\x05ab",
        b"\x08" + b"\xff" * 11,
        b"\x0b",
        b"\x00\x01",
        b"\x08\xff\xff\xff\xff\x7f",
        b"\x0a\x01x",
    ):
        with pytest.raises(snappb.WireError):
            snappb.unmarshal(bad)
