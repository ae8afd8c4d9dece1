"""Allocation of new segment files.

A segment is born as a temporary file (`0.tmp` / `1.tmp`, alternating so a new one never
reuses the name of the one just renamed into place), locked, optionally preallocated to the
segment size, filled with its header records and fsynced, and only then renamed to its
`%016x-%016x.wal` name. So a segment visible under a .wal name always has a durable header,
and a crash during the cut leaves only a stray .tmp file, which readers ignore and the next
allocation overwrites.

etcd prepares the next file on a background goroutine; here allocation is synchronous, on the
WAL's single writer thread, because the server calls the WAL from a dedicated thread already.
"""

from __future__ import annotations

import errno
import logging
import os

from server.wal.util import FILE_MODE, lock_fd

__all__ = ["FilePipeline", "preallocate"]

log = logging.getLogger(__name__)


def preallocate(fd: int, size: int) -> None:
    """Reserve `size` bytes for the file (its length becomes `size`, reading as zeros).

    Filesystems without fallocate support fall back to a sparse extension with ftruncate,
    which gives the same zero-filled view without the reservation.
    """
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)


class FilePipeline:
    """Hands out fresh, locked, (optionally) preallocated temporary segment files."""

    def __init__(self, dirpath: str, size: int, *, preallocate: bool = True) -> None:
        self._dir = dirpath
        self._size = size
        self._preallocate = preallocate
        self._count = 0

    def open(self) -> tuple[str, int]:
        """Create the next temporary file; returns (path, read-write fd holding its lock)."""
        path = os.path.join(self._dir, f"{self._count % 2}.tmp")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            lock_fd(fd, path)
            os.ftruncate(fd, 0)
            if self._preallocate:
                preallocate(fd, self._size)
        except BaseException:
            os.close(fd)
            raise
        self._count += 1
        return path, fd
