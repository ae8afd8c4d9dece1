"""Segment naming, directory helpers, file locks and purging.

A segment is named `%016x-%016x.wal` % (seq, index): `seq` counts segments from 0 with no gaps
among the live ones, `index` is the raft index the segment was cut at (the last entry or
snapshot index before it, plus one). Every entry with an index >= `index` written after the cut
lives in this segment or a later one, which is what search_index relies on.

Every segment a writable WAL may still need is held under an exclusive flock(2), so a second
writer (in this process or another) fails fast with WALLockedError, and purge_segments can tell
released segments from live ones by trying to take the lock itself.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import re

from server.wal.errors import WALLockedError, WALNotFoundError

__all__ = [
    "exist",
    "fsync_dir",
    "is_valid_seq",
    "lock_fd",
    "parse_wal_name",
    "purge_segments",
    "read_wal_names",
    "search_index",
    "wal_name",
]

log = logging.getLogger(__name__)

_WAL_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
FILE_MODE = 0o600


def wal_name(seq: int, index: int) -> str:
    return f"{seq:016x}-{index:016x}.wal"


def parse_wal_name(name: str) -> tuple[int, int]:
    """Return (seq, index) of a segment file name; ValueError if it is not one."""
    m = _WAL_NAME.match(name)
    if m is None:
        raise ValueError(f"wal: bad segment file name {name!r}")
    return int(m.group(1), 16), int(m.group(2), 16)


def _segment_names(names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            parse_wal_name(name)
        except ValueError:
            if not name.endswith((".tmp", ".broken")):
                log.warning("ignored file in WAL directory: %s", name)
            continue
        out.append(name)
    return sorted(out)


def exist(dirpath: str) -> bool:
    """True when `dirpath` holds at least one segment file."""
    try:
        names = os.listdir(dirpath)
    except OSError:
        return False
    return any(n.endswith(".wal") for n in names)


def read_wal_names(dirpath: str) -> list[str]:
    """Segment file names in `dirpath`, oldest first. WALNotFoundError when there are none."""
    try:
        names = os.listdir(dirpath)
    except FileNotFoundError as exc:
        raise WALNotFoundError(f"wal: directory {dirpath} does not exist") from exc
    segs = _segment_names(names)
    if not segs:
        raise WALNotFoundError(f"wal: no segment files in {dirpath}")
    return segs


def search_index(names: list[str], index: int) -> int | None:
    """Position of the last segment whose start index is <= `index`: where reading must begin
    to see every record written after the snapshot at `index`. None if every segment is newer."""
    for i in range(len(names) - 1, -1, -1):
        _, start = parse_wal_name(names[i])
        if index >= start:
            return i
    return None


def is_valid_seq(names: list[str]) -> bool:
    """True when the sequence numbers of `names` increase by exactly one each step."""
    seqs = [parse_wal_name(n)[0] for n in names]
    return all(b == a + 1 for a, b in itertools.pairwise(seqs))


def fsync_dir(dirpath: str) -> None:
    """Make directory entry changes (create, rename, unlink) in `dirpath` durable."""
    fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_fd(fd: int, path: str) -> None:
    """Take a non-blocking exclusive flock on `fd`; WALLockedError if someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WALLockedError(f"wal: segment {path} is locked by another WAL") from exc
        raise


def purge_segments(dirpath: str, max_segments: int = 0) -> list[str]:
    """Delete the oldest segments of `dirpath` while more than `max_segments` remain, stopping
    at the first one still locked by a WAL (see WAL.release_lock_to). Returns removed paths.

    Meant to run while the WAL is open (as etcd's purge loop does): then only segments the WAL
    released are removed, never the ones it reads on restart (from the segment holding its
    latest snapshot marker onward). The newest segment is never removed.
    """
    try:
        names = read_wal_names(dirpath)
    except WALNotFoundError:
        return []
    removed: list[str] = []
    for name in names[: max(0, min(len(names) - 1, len(names) - max_segments))]:
        path = os.path.join(dirpath, name)
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                lock_fd(fd, path)
            except WALLockedError:
                break
            os.unlink(path)
            removed.append(path)
            log.info("purged WAL segment %s", path)
        finally:
            os.close(fd)
    if removed:
        fsync_dir(dirpath)
    return removed
