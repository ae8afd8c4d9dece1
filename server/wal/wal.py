"""The write-ahead log: raft's stable storage for entries, hard state and snapshot markers.

Life cycle (as in etcd):

    w = WAL.create(dir, metadata)           # new, empty log, ready to append
    ...or...
    w = WAL.open(dir, snap)                 # existing log, positioned at a snapshot marker
    metadata, state, entries = w.read_all() # must read everything before appending
    w.save(hard_state, entries)             # append, fdatasync when raft needs it
    w.save_snapshot(WALSnapshot(...))       # after a raft snapshot is saved by snap/
    w.release_lock_to(snapshot_index)       # old segments become purgeable
    w.purge(keep)                           # ...and are deleted (or purge_segments(dir, keep))
    w.close()

Invariants:

* Segments are append-only. A segment is renamed into place only after its header (CRC,
  METADATA, and STATE if known) is durable, and the previous segment is truncated to its end
  and fsynced before that, so only the last segment can end in a partial write.
* Every record is CRC-chained to all earlier ones (encoder.py). read_all in write mode cuts a
  torn tail off the last segment (logging it and keeping a `.broken` copy); any other damage
  raises WALCorruptError. No record that was fsynced is ever silently dropped.
* Entries read back are "last write wins" by index: an entry at index i discards every entry
  read so far with index >= i (raft's conflicting-suffix truncation), including when i is at
  or below the snapshot the WAL was opened at.
* One writer: a writable WAL flocks every segment it may still read, and the methods are not
  thread-safe; the server drives the WAL from one dedicated thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from server.api.raftpb import raftcodec
from server.failpoint import failpoint
from server.raft.raftpb import Entry, HardState
from server.wal.decoder import DecodedRecord, Decoder, SegmentSource
from server.wal.encoder import Encoder
from server.wal.errors import (
    EntryGapError,
    MetadataConflictError,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    WALClosedError,
    WALCorruptError,
    WALExistsError,
    WALNotFoundError,
    WALStateError,
)
from server.wal.file_pipeline import FilePipeline
from server.wal.file_pipeline import preallocate as preallocate_file
from server.wal.record import RecordType, WALSnapshot, marshal_wal_snapshot, unmarshal_wal_snapshot
from server.wal.repair import truncate_torn_tail
from server.wal.util import (
    FILE_MODE,
    exist,
    fsync_dir,
    is_valid_seq,
    lock_fd,
    parse_wal_name,
    purge_segments,
    read_wal_names,
    search_index,
    wal_name,
)

__all__ = [
    "SEGMENT_SIZE_BYTES",
    "WAL",
    "ReadAllResult",
    "raft_must_sync",
    "valid_snapshot_entries",
    "verify",
]

log = logging.getLogger(__name__)

# A segment is cut once it grows past this many bytes (etcd's SegmentSizeBytes).
SEGMENT_SIZE_BYTES = 64 * 1000 * 1000
# An fdatasync slower than this is logged.
WARN_SYNC_SECONDS = 1.0
FP_BEFORE_SYNC = failpoint("walBeforeSync")
FP_AFTER_SYNC = failpoint("walAfterSync")


class ReadAllResult(NamedTuple):
    metadata: bytes
    state: HardState
    entries: list[Entry]


@dataclass(slots=True)
class _Segment:
    path: str
    seq: int
    index: int
    fd: int | None  # locked read-write fd (writable WAL) or read-only fd; None once closed


def raft_must_sync(st: HardState, prev: HardState, entries: int) -> bool:
    """raft's MustSync: term, vote and new entries must be durable before messages go out;
    a commit index change alone may be lost and recomputed."""
    return entries != 0 or st.vote != prev.vote or st.term != prev.term


def _record_value(rec: DecodedRecord, what: str, exc: Exception) -> Exception:
    return WALCorruptError(f"{what} record does not decode: {exc}", rec.path, rec.offset)


# Record payloads are decoded strictly (no unknown fields) and sanity-checked, because the
# CRC protects a record's data but not its type byte: a flipped type makes valid data be read
# as another kind of record, which these checks catch in all but contrived cases.


def _decode_entry(rec: DecodedRecord) -> Entry:
    try:
        return raftcodec.unmarshal_entry(rec.data, strict=True)
    except raftcodec.RaftCodecError as exc:
        raise _record_value(rec, "entry", exc) from exc


def _decode_state(rec: DecodedRecord) -> HardState:
    try:
        st = raftcodec.unmarshal_hard_state(rec.data, strict=True)
    except raftcodec.RaftCodecError as exc:
        raise _record_value(rec, "state", exc) from exc
    if st.term == 0 and not st.is_empty():
        # raft never votes or commits in term 0 (and an empty state is never written).
        raise WALCorruptError(f"state record {st} has vote or commit in term 0", rec.path, rec.offset)
    return st


def _decode_snapshot(rec: DecodedRecord) -> WALSnapshot:
    try:
        return unmarshal_wal_snapshot(rec.data, strict=True)
    except raftcodec.RaftCodecError as exc:
        raise _record_value(rec, "snapshot", exc) from exc


def _select_segments(dirpath: str, snap: WALSnapshot) -> list[_Segment]:
    names = read_wal_names(dirpath)
    i = search_index(names, snap.index)
    if i is None:
        raise WALNotFoundError(
            f"wal: no segment in {dirpath} covers snapshot index {snap.index} (oldest is {names[0]})"
        )
    if not is_valid_seq(names[i:]):
        raise WALCorruptError(
            f"segment sequence numbers do not increase continuously: {', '.join(names[i:])}", dirpath
        )
    out = []
    for name in names[i:]:
        seq, index = parse_wal_name(name)
        out.append(_Segment(os.path.join(dirpath, name), seq, index, None))
    return out


def _close_fds(segments: Sequence[_Segment]) -> None:
    for seg in segments:
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None


def _open_fds(segments: Sequence[_Segment], write: bool) -> None:
    try:
        for seg in segments:
            if write:
                seg.fd = os.open(seg.path, os.O_RDWR)
                lock_fd(seg.fd, seg.path)
            else:
                seg.fd = os.open(seg.path, os.O_RDONLY)
    except BaseException:
        _close_fds(segments)
        raise


class WAL:
    """A write-ahead log directory. Construct with WAL.create, WAL.open or WAL.open_for_read."""

    def __init__(
        self,
        dirpath: str,
        segments: list[_Segment],
        *,
        write: bool,
        start: WALSnapshot,
        segment_size: int,
        preallocate: bool,
        unsafe_no_sync: bool,
    ) -> None:
        self._dir = dirpath
        self._segments = segments
        self._write = write
        self._start = start
        self._segment_size = segment_size
        self._preallocate = preallocate
        self._unsafe_no_sync = unsafe_no_sync
        self._metadata = b""
        self._state = HardState()
        self._enti = 0
        self._encoder: Encoder | None = None
        self._decoder: Decoder | None = None
        self._pipeline = FilePipeline(dirpath, segment_size, preallocate=preallocate) if write else None
        self._closed = False
        self._cut_failing = False

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        dirpath: str,
        metadata: bytes,
        *,
        segment_size: int = SEGMENT_SIZE_BYTES,
        preallocate: bool = True,
        unsafe_no_sync: bool = False,
    ) -> WAL:
        """Create a WAL in `dirpath` (which must not exist, or be empty) ready for appending.

        The first segment is built in `<dirpath>.tmp` and the directory renamed into place once
        it is durable, so a crash leaves either no WAL or a complete empty one.
        """
        if exist(dirpath):
            raise WALExistsError(f"wal: {dirpath} already holds a WAL")
        if os.path.isdir(dirpath) and os.listdir(dirpath):
            raise WALExistsError(f"wal: {dirpath} is not empty: {sorted(os.listdir(dirpath))}")
        dirpath = os.path.normpath(dirpath)
        tmpdir = dirpath + ".tmp"
        if os.path.exists(tmpdir):
            shutil.rmtree(tmpdir)
        os.makedirs(tmpdir, mode=0o700)
        seg = _Segment(os.path.join(tmpdir, wal_name(0, 0)), 0, 0, None)
        w = cls(
            dirpath,
            [seg],
            write=True,
            start=WALSnapshot(),
            segment_size=segment_size,
            preallocate=preallocate,
            unsafe_no_sync=unsafe_no_sync,
        )
        try:
            seg.fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
            lock_fd(seg.fd, seg.path)
            if preallocate:
                preallocate_file(seg.fd, segment_size)
            w._metadata = metadata
            w._encoder = Encoder(seg.fd, 0, 0)
            w._encoder.encode(RecordType.CRC)
            w._encoder.encode(RecordType.METADATA, metadata)
            w.save_snapshot(WALSnapshot())  # flushes and syncs
            if os.path.isdir(dirpath):
                os.rmdir(dirpath)  # empty, checked above
            os.rename(tmpdir, dirpath)
            fsync_dir(os.path.dirname(dirpath) or ".")
        except BaseException:
            _close_fds(w._segments)
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        seg.path = os.path.join(dirpath, wal_name(0, 0))
        log.info("created WAL %s", dirpath)
        return w

    @classmethod
    def open(
        cls,
        dirpath: str,
        snap: WALSnapshot | None = None,
        *,
        segment_size: int = SEGMENT_SIZE_BYTES,
        preallocate: bool = True,
        unsafe_no_sync: bool = False,
    ) -> WAL:
        """Open the WAL for appending, positioned at the snapshot marker `snap`.

        Locks every segment from the one holding `snap` onward (WALLockedError if another WAL
        has them). Call read_all() before appending.
        """
        snap = snap or WALSnapshot()
        segments = _select_segments(dirpath, snap)
        _open_fds(segments, write=True)
        w = cls(
            dirpath,
            segments,
            write=True,
            start=snap,
            segment_size=segment_size,
            preallocate=preallocate,
            unsafe_no_sync=unsafe_no_sync,
        )
        w._decoder = Decoder([SegmentSource(s.path, s.fd) for s in segments])
        return w

    @classmethod
    def open_for_read(cls, dirpath: str, snap: WALSnapshot | None = None) -> WAL:
        """Open the WAL read-only (no locks, no repair, no appending) at the marker `snap`."""
        snap = snap or WALSnapshot()
        segments = _select_segments(dirpath, snap)
        _open_fds(segments, write=False)
        w = cls(
            dirpath,
            segments,
            write=False,
            start=snap,
            segment_size=SEGMENT_SIZE_BYTES,
            preallocate=False,
            unsafe_no_sync=True,
        )
        w._decoder = Decoder([SegmentSource(s.path, s.fd) for s in segments])
        return w

    # --- reading -----------------------------------------------------------------------------

    def read_all(self) -> ReadAllResult:
        """Read every record after the snapshot marker the WAL was opened at.

        Returns the metadata, the last hard state, and the entries after the snapshot (later
        writes of an index replacing earlier ones and everything after them). Entries beyond
        state.commit may still be replaced by raft. Afterwards a writable WAL is ready to append
        (a torn tail having been cut off); a read-only WAL releases its files.

        Raises SnapshotNotFoundError if the log has no marker matching the snapshot,
        SnapshotMismatchError if the marker has another term, WALCorruptError on damage; after
        an error the WAL is unusable and should be closed.
        """
        self._check_open()
        dec = self._decoder
        if dec is None:
            raise WALStateError("wal: read_all may only be called once, on an opened WAL")
        start = self._start
        metadata: bytes | None = None
        state = HardState()
        ents: list[Entry] = []
        match = False
        while (rec := dec.decode()) is not None:
            if rec.type == RecordType.ENTRY:
                e = _decode_entry(rec)
                if e.index > start.index:
                    off = e.index - start.index - 1
                    if off > len(ents):
                        raise EntryGapError(
                            f"entry {e.index} (term {e.term}) leaves a gap: snapshot index "
                            f"{start.index}, {len(ents)} entries read",
                            rec.path,
                            rec.offset,
                        )
                    del ents[off:]
                    ents.append(e)
                else:
                    # Writing index i replaced raft's log from i on, and every entry held here
                    # is above the snapshot, so above i: all of them were replaced. (etcd keeps
                    # them, resurrecting stale uncommitted entries after such a rewrite.)
                    ents.clear()
                self._enti = e.index
            elif rec.type == RecordType.STATE:
                state = _decode_state(rec)
            elif rec.type == RecordType.METADATA:
                if metadata is not None and metadata != rec.data:
                    raise MetadataConflictError(
                        "metadata differs from earlier segments", rec.path, rec.offset
                    )
                metadata = rec.data
            elif rec.type == RecordType.SNAPSHOT:
                snap = _decode_snapshot(rec)
                if snap.index == start.index:
                    if snap.term != start.term:
                        raise SnapshotMismatchError(
                            f"wal: snapshot marker at index {snap.index} has term {snap.term}, "
                            f"expected {start.term} ({rec.path} offset {rec.offset})"
                        )
                    match = True
                self._enti = max(self._enti, snap.index)
            # CRC records were verified by the decoder.

        tail = self._segments[-1]
        if dec.torn is not None:
            if self._write:
                truncate_torn_tail(dec.torn, tail.fd)
            else:
                log.info(
                    "WAL %s ends in a torn write at offset %d (read-only: left as is)",
                    dec.torn.path,
                    dec.torn.offset,
                )
        if not match:
            raise SnapshotNotFoundError(
                f"wal: no snapshot marker at index {start.index} term {start.term} in {self._dir}"
            )
        self._decoder = None
        self._start = WALSnapshot()
        self._metadata = metadata or b""
        self._state = state
        if self._write:
            assert tail.fd is not None
            self._encoder = Encoder(tail.fd, dec.last_crc, dec.last_offset)
        else:
            _close_fds(self._segments)
        return ReadAllResult(self._metadata, state, ents)

    # --- appending ---------------------------------------------------------------------------

    def save(self, hard_state: HardState, entries: Sequence[Entry], must_sync: bool | None = None) -> None:
        """Append `entries`, then `hard_state` (unless empty), as one batch.

        The batch is fdatasynced when `must_sync` is true; None means raft's rule (raft_must_sync()).
        A batch that carries the segment past the size limit cuts a new segment, which always
        syncs the old one.
        """
        enc = self._writable()
        if hard_state.is_empty() and not entries:
            return
        if must_sync is None:
            must_sync = raft_must_sync(hard_state, self._state, len(entries))
        saved = (enc.checkpoint(), self._enti, self._state)
        try:
            for e in entries:
                enc.encode(RecordType.ENTRY, raftcodec.marshal_entry(e))
                self._enti = e.index
            if not hard_state.is_empty():
                enc.encode(RecordType.STATE, raftcodec.marshal_hard_state(hard_state))
                self._state = hard_state
            if must_sync and enc.offset < self._segment_size:
                if FP_BEFORE_SYNC.armed:
                    FP_BEFORE_SYNC.hit()
                self._sync()
                if FP_AFTER_SYNC.armed:
                    FP_AFTER_SYNC.hit()
            elif enc.offset >= self._segment_size:
                self._sync()
        except BaseException:
            # nothing of this batch counts: the next save overwrites it from the same offset
            # (bytes left beyond the new end do not continue the CRC chain: a torn tail)
            enc.rollback(saved[0])
            self._enti, self._state = saved[1], saved[2]
            raise
        if enc.offset >= self._segment_size:
            try:
                self._cut()
            except OSError as e:
                # the batch is durable in the current segment; the cut is retried on the next
                # save (the segment grows past the size limit meanwhile)
                if not self._cut_failing:
                    log.warning("cannot start a new WAL segment (%s); will retry", e)
                self._cut_failing = True
            else:
                if self._cut_failing:
                    log.info("started a new WAL segment again")
                self._cut_failing = False

    def save_snapshot(self, snap: WALSnapshot) -> None:
        """Append a snapshot marker and sync. A non-initial marker must carry its ConfState."""
        if snap.conf_state is None and snap.index > 0:
            raise ValueError(f"wal: snapshot marker at index {snap.index} is missing its ConfState")
        enc = self._writable()
        enc.encode(RecordType.SNAPSHOT, marshal_wal_snapshot(snap))
        self._enti = max(self._enti, snap.index)
        self._sync()

    def sync(self) -> None:
        """Flush buffered records and fdatasync the last segment."""
        self._writable()
        self._sync()

    def _writable(self) -> Encoder:
        self._check_open()
        if not self._write:
            raise WALStateError("wal: opened read-only")
        if self._encoder is None:
            raise WALStateError("wal: read_all must be called before appending")
        return self._encoder

    def _check_open(self) -> None:
        if self._closed:
            raise WALClosedError("wal: closed")

    def _sync(self) -> None:
        enc = self._encoder
        assert enc is not None
        enc.flush()
        if self._unsafe_no_sync:
            return
        fd = self._segments[-1].fd
        assert fd is not None
        t0 = time.monotonic()
        os.fdatasync(fd)
        took = time.monotonic() - t0
        if took > WARN_SYNC_SECONDS:
            log.warning("slow fdatasync of %s: %.3fs", self._segments[-1].path, took)

    def _cut(self) -> None:
        """Close the current segment at its end and start the next one (see file_pipeline)."""
        enc = self._encoder
        tail = self._segments[-1]
        assert enc is not None and tail.fd is not None and self._pipeline is not None
        enc.flush()
        os.ftruncate(tail.fd, enc.offset)  # drop unused preallocated space
        self._sync()

        tmp_path, fd = self._pipeline.open()
        try:
            new = _Segment(
                os.path.join(self._dir, wal_name(tail.seq + 1, self._enti + 1)),
                tail.seq + 1,
                self._enti + 1,
                fd,
            )
            new_enc = Encoder(fd, enc.crc, 0)
            new_enc.encode(RecordType.CRC)
            new_enc.encode(RecordType.METADATA, self._metadata)
            if not self._state.is_empty():
                new_enc.encode(RecordType.STATE, raftcodec.marshal_hard_state(self._state))
            new_enc.flush()
            if not self._unsafe_no_sync:
                os.fdatasync(fd)
            os.rename(tmp_path, new.path)
            fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        self._segments.append(new)
        self._encoder = new_enc
        log.info("created a new WAL segment %s", new.path)

    # --- segment retention -------------------------------------------------------------------

    def release_lock_to(self, index: int) -> None:
        """Release the locks of segments no longer needed to recover from a snapshot at `index`:
        those before the last segment whose start index is below `index`. That segment is kept
        (it may contain the snapshot's marker and the entries right after it), as is the tail.
        Released segments can then be deleted by purge_segments()."""
        self._check_open()
        if not self._write or not self._segments:
            return
        smaller = len(self._segments) - 1
        for i, seg in enumerate(self._segments):
            if seg.index >= index:
                smaller = i - 1
                break
        if smaller <= 0:
            return
        _close_fds(self._segments[:smaller])
        del self._segments[:smaller]

    def purge(self, max_segments: int = 0) -> list[str]:
        """Delete released segments (see release_lock_to), oldest first, while more than
        `max_segments` segment files remain. Returns the removed paths."""
        self._check_open()
        return purge_segments(self._dir, max_segments)

    # --- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and sync pending records (writable WAL) and release every file. Idempotent."""
        if self._closed:
            return
        try:
            if self._write and self._encoder is not None and self._segments[-1].fd is not None:
                self._sync()
        finally:
            self._closed = True
            self._encoder = None
            self._decoder = None
            _close_fds(self._segments)

    def __enter__(self) -> WAL:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- introspection -----------------------------------------------------------------------

    @property
    def dir(self) -> str:
        return self._dir

    @property
    def last_index(self) -> int:
        """Index of the last entry (or snapshot marker, if later) written to the log."""
        return self._enti

    @property
    def segment_paths(self) -> list[str]:
        """Paths of the segments this WAL holds, oldest first (the last one is the tail)."""
        return [s.path for s in self._segments]

    @property
    def tail_offset(self) -> int:
        """Logical end of the tail segment (including buffered, not yet written records)."""
        if self._encoder is None:
            raise WALStateError("wal: not appendable")
        return self._encoder.offset


# --- whole-directory checks ----------------------------------------------------------------


def verify(dirpath: str, snap: WALSnapshot | None = None) -> HardState:
    """Read the WAL from the marker `snap` on, without locking or modifying it, and check it is
    intact (a torn tail is accepted). Returns the last hard state.

    Raises SnapshotNotFoundError / SnapshotMismatchError for a missing or different marker,
    MetadataConflictError and WALCorruptError for damage.
    """
    snap = snap or WALSnapshot()
    segments = _select_segments(dirpath, snap)
    _open_fds(segments, write=False)
    try:
        dec = Decoder([SegmentSource(s.path, s.fd) for s in segments])
        metadata: bytes | None = None
        state = HardState()
        match = False
        while (rec := dec.decode()) is not None:
            if rec.type == RecordType.METADATA:
                if metadata is not None and metadata != rec.data:
                    raise MetadataConflictError(
                        "metadata differs from earlier segments", rec.path, rec.offset
                    )
                metadata = rec.data
            elif rec.type == RecordType.SNAPSHOT:
                s = _decode_snapshot(rec)
                if s.index == snap.index:
                    if s.term != snap.term:
                        raise SnapshotMismatchError(
                            f"wal: snapshot marker at index {s.index} has term {s.term}, expected {snap.term}"
                        )
                    match = True
            elif rec.type == RecordType.STATE:
                state = _decode_state(rec)
            elif rec.type == RecordType.ENTRY:
                _decode_entry(rec)
    finally:
        _close_fds(segments)
    if not match:
        raise SnapshotNotFoundError(
            f"wal: no snapshot marker at index {snap.index} term {snap.term} in {dirpath}"
        )
    return state


def valid_snapshot_entries(dirpath: str) -> list[WALSnapshot]:
    """Every snapshot marker in the WAL whose index is covered by the last hard state's commit
    index: the snapshots the server may restart from (snap.Snapshotter.load_newest_available)."""
    names = read_wal_names(dirpath)
    segments = [_Segment(os.path.join(dirpath, n), *parse_wal_name(n), None) for n in names]
    if not is_valid_seq(names):
        raise WALCorruptError(
            f"segment sequence numbers do not increase continuously: {', '.join(names)}", dirpath
        )
    _open_fds(segments, write=False)
    snaps: list[WALSnapshot] = []
    state = HardState()
    try:
        dec = Decoder([SegmentSource(s.path, s.fd) for s in segments])
        while (rec := dec.decode()) is not None:
            if rec.type == RecordType.SNAPSHOT:
                snaps.append(_decode_snapshot(rec))
            elif rec.type == RecordType.STATE:
                state = _decode_state(rec)
    finally:
        _close_fds(segments)
    return [s for s in snaps if s.index <= state.commit]
