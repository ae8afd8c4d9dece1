"""Raft snapshot files and database snapshot files (etcd's etcdserver/api/snap).

The snapshot directory holds:

    %016x-%016x.snap      (term, index): a snappb envelope {crc, data} around a marshalled
                          raftpb.Snapshot. Names sort by term, then index, so the
                          lexicographically greatest name is the newest snapshot.
    %016x.snap.db         (index): a copy of the backend database a leader shipped with a
                          snapshot message, received by a lagging follower.
    *.broken              snapshot files that failed to load, renamed out of the way.
    db                    the backend database itself (the server's, not ours).

Invariants: a .snap or .snap.db file appears under its name only once its contents are
durable (written to a temporary file, fsynced, renamed, directory fsynced), so a crash leaves
at most a stray temporary file, which load() removes. Loading never trusts a file without
checking its CRC; a file that fails is renamed to `.broken` and the next older one is tried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Protocol

import crc32c

from server.api.raftpb import raftcodec
from server.raft.raftpb import Snapshot
from server.snap import snappb
from server.snap.errors import (
    EmptySnapshotError,
    NoDBSnapshotError,
    NoSnapshotError,
    SnapshotCorruptError,
    SnapshotCRCMismatchError,
)
from server.wal.record import WALSnapshot

__all__ = ["SNAP_SUFFIX", "Reader", "Snapshotter", "read"]

log = logging.getLogger(__name__)

SNAP_SUFFIX = ".snap"
DB_SUFFIX = ".snap.db"
_SNAP_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_DB_NAME = re.compile(r"^([0-9a-f]{16})\.snap\.db$")
_TMP_SUFFIX = ".tmp"
_COPY_CHUNK = 1 << 20
# Files the snapshot directory may legitimately hold besides snapshots.
_KNOWN_FILES = frozenset({"db", "db-lock"})


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def snap_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}{SNAP_SUFFIX}"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.write(fd, view[written:])


def _fsync_dir(dirpath: str) -> None:
    fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> Snapshot:
    """Read and verify one snapshot file. Raises SnapshotCorruptError (or a subclass) when the
    file is empty, malformed or fails its CRC, OSError when it cannot be read."""
    with open(path, "rb") as f:
        b = f.read()
    if not b:
        raise EmptySnapshotError(path, "empty file")
    try:
        crc, data = snappb.unmarshal(b)
    except snappb.WireError as exc:
        raise SnapshotCorruptError(path, f"malformed envelope: {exc}") from exc
    if not data or crc == 0:
        raise EmptySnapshotError(path, "empty snapshot data")
    computed = crc32c.crc32c(data)
    if computed != crc:
        raise SnapshotCRCMismatchError(path, f"crc mismatch (stored {crc:#010x}, computed {computed:#010x})")
    try:
        return raftcodec.unmarshal_snapshot(data)
    except raftcodec.RaftCodecError as exc:
        raise SnapshotCorruptError(path, f"malformed raft snapshot: {exc}") from exc


class Snapshotter:
    """Saves and loads raft snapshots and database snapshot files in one directory."""

    def __init__(self, dirpath: str) -> None:
        self._dir = dirpath

    @property
    def dir(self) -> str:
        return self._dir

    # --- raft snapshots ----------------------------------------------------------------------

    def save_snap(self, snapshot: Snapshot) -> None:
        """Durably write `snapshot` as `<term>-<index>.snap`. An empty snapshot is ignored."""
        if snapshot.is_empty():
            return
        m = snapshot.metadata
        data = raftcodec.marshal_snapshot(snapshot)
        envelope = snappb.marshal(crc32c.crc32c(data), data)
        path = os.path.join(self._dir, snap_name(m.term, m.index))
        self._write_durably(path, envelope)
        log.info("saved snapshot %s (%d bytes)", path, len(envelope))

    def _write_durably(self, path: str, data: bytes) -> None:
        tmp = path + _TMP_SUFFIX
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self._dir)

    def load(self) -> Snapshot:
        """The newest snapshot that reads back intact. Raises NoSnapshotError if none does."""
        return self._load_matching(lambda _s: True)

    def load_newest_available(self, wal_snaps: Sequence[WALSnapshot]) -> Snapshot:
        """The newest intact snapshot the WAL also has a marker for (same term and index), so
        the server restarts from a snapshot whose following entries the WAL holds."""
        known = {(w.term, w.index) for w in wal_snaps}
        return self._load_matching(lambda s: (s.metadata.term, s.metadata.index) in known)

    def _load_matching(self, match: Callable[[Snapshot], bool]) -> Snapshot:
        for name in self.snap_names():
            snap = self._load_snap(name)
            if snap is not None and match(snap):
                return snap
        raise NoSnapshotError(f"snap: no available snapshot in {self._dir}")

    def _load_snap(self, name: str) -> Snapshot | None:
        path = os.path.join(self._dir, name)
        try:
            return read(path)
        except (SnapshotCorruptError, OSError) as exc:
            broken = path + ".broken"
            log.warning("failed to read snapshot file %s: %s", path, exc)
            try:
                os.rename(path, broken)
            except OSError as rexc:
                log.warning("failed to rename broken snapshot %s to %s: %s", path, broken, rexc)
            else:
                log.warning("renamed broken snapshot %s to %s", path, broken)
            return None

    def snap_names(self) -> list[str]:
        """Names of the .snap files, newest first. Removes leftover temporary files first."""
        names = os.listdir(self._dir)
        snaps = []
        for name in names:
            if name.endswith(_TMP_SUFFIX) or name.startswith("db.tmp"):
                log.info("removing orphaned temporary file %s", os.path.join(self._dir, name))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._dir, name))
            elif _SNAP_NAME.match(name):
                snaps.append(name)
            elif not (name in _KNOWN_FILES or name.endswith((".broken", DB_SUFFIX))):
                log.warning("unexpected file in snapshot directory: %s", name)
        snaps.sort(reverse=True)
        return snaps

    def purge_snapshots(self, max_snapshots: int) -> list[str]:
        """Delete the oldest .snap files so at most `max_snapshots` remain; returns the paths."""
        names = sorted(n for n in os.listdir(self._dir) if _SNAP_NAME.match(n))
        removed = []
        for name in names[: max(0, len(names) - max_snapshots)]:
            path = os.path.join(self._dir, name)
            os.unlink(path)
            removed.append(path)
        if removed:
            _fsync_dir(self._dir)
        return removed

    # --- database snapshots ------------------------------------------------------------------

    def save_db_from(self, reader: Reader, index: int) -> int:
        """Copy a database snapshot from `reader` to `<index>.snap.db`; returns bytes copied.

        The copy goes to a temporary file that is fsynced and renamed into place. If the file
        already exists (a previous transfer finished), the new copy is discarded.
        """
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=f"{index:016x}{DB_SUFFIX}.", suffix=_TMP_SUFFIX)
        n = 0
        try:
            try:
                while chunk := reader.read(_COPY_CHUNK):
                    _write_all(fd, chunk)
                    n += len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            dst = self._db_path(index)
            if os.path.exists(dst):
                os.unlink(tmp)
            else:
                os.rename(tmp, dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # Sync even when the file existed: the rename that created it may not be durable yet.
        _fsync_dir(self._dir)
        log.info("saved database snapshot %s (%d bytes)", self._db_path(index), n)
        return n

    def db_file_path(self, index: int) -> str:
        """Path of `<index>.snap.db`; NoDBSnapshotError when it does not exist."""
        path = self._db_path(index)
        if not os.path.exists(path):
            raise NoDBSnapshotError(f"snap: database snapshot {path} does not exist")
        return path

    def _db_path(self, index: int) -> str:
        return os.path.join(self._dir, f"{index:016x}{DB_SUFFIX}")

    def release_snap_dbs(self, snapshot: Snapshot) -> list[str]:
        """Delete .snap.db files older than `snapshot` (no longer needed to send or apply it)."""
        removed = []
        for name in os.listdir(self._dir):
            m = _DB_NAME.match(name)
            if m is None or int(m.group(1), 16) >= snapshot.metadata.index:
                continue
            path = os.path.join(self._dir, name)
            log.info("removing orphaned database snapshot %s", path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed
