"""Crash safety: torn final writes are cut off, every other kind of damage is refused.

Each test builds a small WAL, damages a copy of its bytes in one specific way and reopens it.
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
from dataclasses import dataclass

import pytest

from server.raft.raftpb import ConfState, Entry, HardState
from server.wal import WAL, CRCMismatchError, WALCorruptError, WALSnapshot, repair
from server.wal.decoder import Decoder, SegmentSource
from server.wal.encoder import Encoder, decode_frame_size
from server.wal.record import RecordType
from server.wal.util import wal_name
from tests.unit.wal.helpers import ents, read_back, reopen

N = 12
SEG = wal_name(0, 0)


@dataclass
class Layout:
    data: bytes  # the segment's bytes, trimmed to the end of the last record
    records: list[tuple[int, int, int]]  # (type, start offset, end offset) of every frame

    def last(self) -> tuple[int, int]:
        _, start, end = self.records[-1]
        return start, end


def layout(path: str) -> Layout:
    dec = Decoder([SegmentSource(path)])
    starts = []
    types = []
    while (rec := dec.decode()) is not None:
        starts.append(rec.offset)
        types.append(rec.type)
    ends = [*starts[1:], dec.last_offset]
    with open(path, "rb") as f:
        data = f.read()[: dec.last_offset]
    return Layout(data, list(zip(types, starts, ends, strict=True)))


def pad_bytes(data: bytes, start: int) -> int:
    return decode_frame_size(int.from_bytes(data[start : start + 8], "little"))[1]


def build(waldir: str, last: list[Entry] | None = None, state: HardState | None = None) -> Layout:
    """N one-entry saves, each fsynced; then optionally one more batch `last`."""
    with WAL.create(waldir, b"meta", preallocate=False) as w:
        for e in ents(1, N):
            w.save(HardState(), [e], must_sync=True)
        if last is not None:
            w.save(state or HardState(), last, must_sync=True)
    return layout(os.path.join(waldir, SEG))


def put(waldir: str, data: bytes) -> str:
    """Replace the WAL's only segment with `data` (and drop any .broken backup)."""
    for name in os.listdir(waldir):
        if name.endswith(".broken"):
            os.unlink(os.path.join(waldir, name))
    path = os.path.join(waldir, SEG)
    with open(path, "wb") as f:
        f.write(data)
    return path


def entries_after_reopen(waldir: str) -> list[Entry]:
    """Read-only first (must agree), then open for writing, which repairs."""
    ro = read_back(waldir).entries
    w, res = reopen(waldir)
    w.close()
    assert res.entries == ro
    return res.entries


def assert_appendable(waldir: str, expected: list[Entry]) -> None:
    """After a repair the log takes new writes and reads back cleanly."""
    nxt = expected[-1].index + 1 if expected else 1
    w, res = reopen(waldir)
    with w:
        assert res.entries == expected
        w.save(HardState(term=1, commit=nxt), ents(nxt, nxt + 2, data=b"new"))
    assert read_back(waldir).entries == expected + ents(nxt, nxt + 2, data=b"new")


# --- the last record torn in every way ----------------------------------------------------------


def test_truncated_at_every_offset_of_the_last_record(waldir: str) -> None:
    big = [Entry(term=1, index=N + 1, data=bytes(range(256)) * 5)]  # spans three sectors
    lay = build(waldir, big)
    start, end = lay.last()
    assert end - start > 1024
    for cut in range(start, end + 1):
        put(waldir, lay.data[:cut])
        want = ents(1, N) + (big if cut == end else [])
        assert entries_after_reopen(waldir) == want, cut
        if start < cut < end:
            assert os.path.getsize(os.path.join(waldir, SEG)) == start  # cut off, in write mode
            assert os.path.exists(os.path.join(waldir, SEG + ".broken"))
    put(waldir, lay.data[: (start + end) // 2])
    assert_appendable(waldir, ents(1, N))


def test_zero_filled_from_every_offset_of_the_last_record(waldir: str) -> None:
    # A write that reached the file size but not all of its data (or preallocated space).
    big = [Entry(term=1, index=N + 1, data=b"\xab" * 1200)]
    lay = build(waldir, big)
    start, end = lay.last()
    pad_start = end - pad_bytes(lay.data, start)
    for cut in range(start, end + 1, 3):
        put(waldir, lay.data[:cut] + bytes(end - cut + 4096))
        want = ents(1, N) + (big if cut >= pad_start else [])
        assert entries_after_reopen(waldir) == want, cut


def test_trailing_zeros_are_not_damage(waldir: str) -> None:
    lay = build(waldir)
    put(waldir, lay.data + bytes(100_000))
    assert entries_after_reopen(waldir) == ents(1, N)
    assert not os.path.exists(os.path.join(waldir, SEG + ".broken"))
    assert_appendable(waldir, ents(1, N))


def test_flipped_byte_in_the_last_record(waldir: str) -> None:
    lay = build(waldir)
    start, end = lay.last()
    outcomes = set()
    for pos in range(start, end):
        damaged = bytearray(lay.data)
        damaged[pos] ^= 0xFF
        put(waldir, bytes(damaged))
        got = entries_after_reopen(waldir)
        assert got in (ents(1, N), ents(1, N - 1)), pos
        outcomes.add(len(got))
    assert outcomes == {N, N - 1}  # padding flips are harmless, the rest drop the record
    damaged = bytearray(lay.data)
    damaged[end - 12] ^= 0x01
    put(waldir, bytes(damaged))
    assert_appendable(waldir, ents(1, N - 1))


def test_flipped_byte_in_a_final_state_record(waldir: str) -> None:
    lay = build(waldir, ents(N + 1, N + 1), HardState(term=1, vote=1, commit=N))
    t, _start, end = lay.records[-1]
    assert t == RecordType.STATE
    damaged = bytearray(lay.data)
    damaged[end - 3] ^= 0x10
    put(waldir, bytes(damaged))
    res = read_back(waldir)
    assert res.entries == ents(1, N + 1) and res.state == HardState()


def test_torn_multi_record_write_with_an_unwritten_sector(waldir: str) -> None:
    # One unsynced batch of many records; the page cache wrote later sectors but not an
    # earlier one. Records after the hole are intact and chain correctly, yet were never
    # acknowledged, so they go too.
    batch = ents(N + 1, N + 20, data=b"\x5a" * 200)
    lay = build(waldir, batch)
    batch_start = lay.records[-20][1]
    hole = (batch_start // 512 + 2) * 512  # a sector well inside the batch
    damaged = bytearray(lay.data)
    damaged[hole : hole + 512] = bytes(512)
    put(waldir, bytes(damaged))
    got = entries_after_reopen(waldir)
    survivors = [i for i, (_, s, e) in enumerate(lay.records[-20:]) if e <= hole]
    assert got == ents(1, N) + batch[: len(survivors)]
    assert_appendable(waldir, got)


def test_etcd_written_log_with_a_torn_last_record(waldir: str) -> None:
    # From etcd's TestLastRecordLengthExceedFileEnd: three entries, the last one's length word
    # changed to 1000, past the end of the file.
    data = (
        b"\x04\x00\x00\x00\x00\x00\x00\x84\x08\x04\x10\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        b"\x00\x84\x08\x01\x10\x00\x00\x00\x00\x00\x0e\x00\x00\x00\x00\x00\x00\x82\x08\x05\x10\xa0"
        b"\xb3\x9b\x8f\x08\x1a\x04\x08\x00\x10\x00\x00\x00\x1a\x00\x00\x00\x00\x00\x00\x86\x08\x02"
        b"\x10\xba\x8b\xdc\x85\x0f\x1a\x10\x08\x00\x10\x00\x18\x01\x22\x08waldata1\x00\x00\x00\x00"
        b"\x00\x00\x1a\x00\x00\x00\x00\x00\x00\x86\x08\x02\x10\xa1\xe8\xff\x9c\x02\x1a\x10\x08\x00"
        b"\x10\x00\x18\x02\x22\x08waldata2\x00\x00\x00\x00\x00\x00\xe8\x03\x00\x00\x00\x00\x00\x86"
        b"\x08\x02\x10\xa1\x9c\xa1\xaa\x04\x1a\x10\x08\x00\x10\x00\x18\x03\x22\x08waldata3\x00\x00"
        b"\x00\x00\x00\x00"
    )
    os.makedirs(waldir)
    put(waldir, data)
    want = [Entry(term=0, index=i, data=b"waldata%d" % i) for i in (1, 2)]
    assert entries_after_reopen(waldir) == want
    # The fixed-up bytes are exactly what this WAL writes for the same calls.
    fixed = data.replace(b"\xe8\x03\x00\x00\x00\x00\x00\x86", b"\x1a\x00\x00\x00\x00\x00\x00\x86")
    put(waldir, fixed)
    assert len(entries_after_reopen(waldir)) == 3
    mine = waldir + "-mine"
    with WAL.create(mine, b"", preallocate=False) as w:
        for i in (1, 2, 3):
            w.save(HardState(), [Entry(term=0, index=i, data=b"waldata%d" % i)])
    with open(os.path.join(mine, SEG), "rb") as f:
        assert f.read() == fixed


# --- damage that is not a torn tail -------------------------------------------------------------


def test_flipped_byte_in_a_middle_record_is_corruption(waldir: str) -> None:
    lay = build(waldir)
    t, start, end = lay.records[8]
    assert t == RecordType.ENTRY
    pad_start = end - pad_bytes(lay.data, start)
    assert pad_start < end
    for pos in range(start, end):
        damaged = bytearray(lay.data)
        damaged[pos] ^= 0xFF
        path = put(waldir, bytes(damaged))
        if pos >= pad_start:
            assert read_back(waldir).entries == ents(1, N)  # padding is not data
            continue
        for opener in (read_back, reopen):
            with pytest.raises(WALCorruptError) as ei:
                opener(waldir)
            assert ei.value.path == path
            assert ei.value.offset == start, pos
            assert path in str(ei.value) and f"offset {start}" in str(ei.value)
        # Nothing was cut or backed up.
        assert os.path.getsize(path) == len(lay.data)
        assert not os.path.exists(path + ".broken")


def test_crc_mismatch_in_the_middle_names_file_and_offset(waldir: str) -> None:
    lay = build(waldir)
    _, start, end = lay.records[5]
    damaged = bytearray(lay.data)
    damaged[end - 9] ^= 0x01  # inside the entry data
    path = put(waldir, bytes(damaged))
    with pytest.raises(CRCMismatchError, match="crc mismatch") as ei:
        reopen(waldir)
    assert (ei.value.path, ei.value.offset) == (path, start)
    assert "intact record follows" in str(ei.value)


def test_second_to_last_record_damaged_is_corruption(waldir: str) -> None:
    lay = build(waldir)
    _, _start, end = lay.records[-2]
    damaged = bytearray(lay.data)
    damaged[end - 9] ^= 0x01
    put(waldir, bytes(damaged))
    with pytest.raises(CRCMismatchError):
        reopen(waldir)


def test_flipped_record_type_is_corruption(waldir: str) -> None:
    # The CRC covers data, not the type: ENTRY (2) read as STATE (3) must still be caught.
    lay = build(waldir)
    _, start, _ = lay.records[6]
    damaged = bytearray(lay.data)
    assert damaged[start + 8 : start + 10] == b"\x08\x02"
    damaged[start + 9] = 3
    put(waldir, bytes(damaged))
    with pytest.raises(WALCorruptError, match="state record"):
        read_back(waldir)


def test_zeroed_middle_record_is_corruption(waldir: str) -> None:
    lay = build(waldir)
    _, start, end = lay.records[4]
    damaged = bytearray(lay.data)
    damaged[start:end] = bytes(end - start)
    put(waldir, bytes(damaged))
    with pytest.raises(WALCorruptError):
        reopen(waldir)


def test_unknown_record_type_with_valid_crc_is_corruption(waldir: str) -> None:
    lay = build(waldir)
    path = put(waldir, lay.data)
    dec = Decoder([SegmentSource(path)])
    while dec.decode() is not None:
        pass
    fd = os.open(path, os.O_RDWR)
    try:
        enc = Encoder(fd, dec.last_crc, dec.last_offset)
        enc.encode(9, b"from the future")  # type: ignore[arg-type]
        enc.flush()
    finally:
        os.close(fd)
    with pytest.raises(WALCorruptError, match="unknown record type 9"):
        reopen(waldir)


def test_damaged_header_of_the_last_segment_is_corruption(waldir: str) -> None:
    lay = build(waldir)
    t, _start, end = lay.records[1]
    assert t == RecordType.METADATA
    damaged = bytearray(lay.data[:end])  # the header is all there is
    damaged[end - 5] ^= 0x01
    put(waldir, bytes(damaged))
    with pytest.raises(WALCorruptError, match="header"):
        reopen(waldir)


def test_torn_non_last_segment_is_corruption(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=512, preallocate=False) as w:
        for i in range(1, 30):
            w.save(HardState(term=1, commit=i), ents(i, i, data=b"x" * 100))
    names = sorted(n for n in os.listdir(waldir) if n.endswith(".wal"))
    assert len(names) > 3
    middle = os.path.join(waldir, names[1])
    os.truncate(middle, os.path.getsize(middle) - 5)
    with pytest.raises(WALCorruptError, match="not in the last segment") as ei:
        reopen(waldir)
    assert ei.value.path == middle
    # Cutting a whole record off a non-last segment is caught by the next segment's CRC record.
    shutil.rmtree(waldir)
    with WAL.create(waldir, b"", segment_size=512, preallocate=False) as w:
        for i in range(1, 30):
            w.save(HardState(term=1, commit=i), ents(i, i, data=b"x" * 100))
    lay = layout(middle)
    os.truncate(middle, lay.records[-1][1])
    with pytest.raises(CRCMismatchError, match="does not continue"):
        read_back(waldir)


def test_offline_repair(waldir: str) -> None:
    lay = build(waldir)
    start, end = lay.last()
    assert repair(waldir) is None
    put(waldir, lay.data[: end - 3])
    torn = repair(waldir)
    assert torn is not None and torn.offset == start
    assert os.path.getsize(os.path.join(waldir, SEG)) == start
    assert repair(waldir) is None
    assert read_back(waldir).entries == ents(1, N - 1)
    damaged = bytearray(lay.data)
    damaged[lay.records[3][2] - 9] ^= 1
    put(waldir, bytes(damaged))
    with pytest.raises(WALCorruptError):
        repair(waldir)


def test_torn_tail_at_a_snapshot_open(waldir: str) -> None:
    with WAL.create(waldir, b"", segment_size=1024, preallocate=False) as w:
        for i in range(1, 30):
            w.save(HardState(term=1, commit=i), ents(i, i, data=b"y" * 80))
        w.save_snapshot(WALSnapshot(index=29, term=1, conf_state=ConfState(voters=(1,))))
        w.save(HardState(), ents(30, 30, data=b"y" * 80))
        tail = w.segment_paths[-1]
        end = w.tail_offset
    os.truncate(tail, end - 20)
    snap = WALSnapshot(index=29, term=1)
    w = WAL.open(waldir, snap)
    with w:
        assert w.read_all().entries == []
    assert os.path.exists(tail + ".broken")


@pytest.mark.parametrize("room", ["whole segment", "only the cut", "none"])
def test_repair_on_a_full_disk(waldir: str, room: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup shrinks to what fits (the segment, the bytes cut, or the log); the cut happens."""
    repair_mod = importlib.import_module("server.wal.repair")  # the package re-exports repair()

    lay = build(waldir)
    start, end = lay.last()
    put(waldir, lay.data[: end - 3])
    real = repair_mod._write_file
    fits = {"whole segment": 1 << 30, "only the cut": end - start, "none": 0}[room]

    def write_file(path: str, data: bytes) -> None:
        if len(data) > fits:
            open(path, "wb").close()  # a partial file, as ENOSPC leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(repair_mod, "_write_file", write_file)
    torn = repair(waldir)
    assert torn is not None and torn.offset == start
    assert os.path.getsize(os.path.join(waldir, SEG)) == start
    broken = os.path.join(waldir, SEG + ".broken")
    if room == "none":
        assert not os.path.exists(broken)
    else:
        with open(broken, "rb") as f:
            saved = f.read()
        assert saved == (lay.data[: end - 3] if room == "whole segment" else lay.data[start : end - 3])
    assert read_back(waldir).entries == ents(1, N - 1)
