"""The storage seam under MVCC, leases, membership and auth (etcd's server/storage/backend).

Readers and the single writer (the apply loop) see one consistent view: everything committed
to the B+tree plus everything written since, which still sits in write buffers. Commits run on
a dedicated writer thread so the apply loop never waits for the disk:

    apply loop                               writer thread
    ----------                               -------------
    batch_tx().put(...)  -> current buffer
    commit()             -> buffer sealed, queued ------> begin; put/delete all; commit (fsync)
    batch_tx().put(...)  -> next buffer                 buffer marked durable, dropped
    reads: current buffer, sealed buffers (newest first), then the B+tree

Invariant: a key's newest value is in the newest buffer that holds it, else in the B+tree; a
sealed buffer is dropped only after its commit returned, so a reader that misses it in the
buffer list always finds it in a read transaction begun afterwards.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator
from typing import IO, Protocol

from server.backend.schema import Bucket
from server.errors import EtcdError

__all__ = ["Backend", "BackendError", "BatchTx", "ReadTx"]

# Deleted-in-buffer marker: the key has been deleted since the last commit.
TOMBSTONE: None = None


class BackendError(EtcdError):
    """The backend could not persist or read data (IO error, disk full, corrupt file)."""


class ReadTx(Protocol):
    """A consistent read view of every bucket."""

    def get(self, bucket: Bucket, key: bytes) -> bytes | None:
        """The value of key, or None when absent."""

    def range(
        self, bucket: Bucket, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        """Pairs with start <= key < end in key order (end None: only start; limit 0: all)."""

    def iterate(self, bucket: Bucket, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every pair with key >= start in key order."""


class BatchTx(ReadTx, Protocol):
    """The single writer's view: reads see its own writes."""

    def put(self, bucket: Bucket, key: bytes, value: bytes) -> None: ...

    def delete(self, bucket: Bucket, key: bytes) -> None: ...


class Backend(Protocol):
    def read_tx(self) -> ReadTx: ...

    def batch_tx(self) -> BatchTx: ...

    def read_committed(self) -> contextlib.AbstractContextManager[ReadTx]:
        """A view of the committed database alone, unchanged while open (for snapshots: commit()
        first). Open, use and leave it on one thread."""

    def pending(self) -> int:
        """Writes buffered since the last commit() was requested."""

    def commit(self) -> concurrent.futures.Future[None]:
        """Seal the writes so far and persist them on the writer thread; the future completes
        when they are durable (or fails with BackendError)."""

    def force_commit(self) -> None:
        """commit() and wait for it."""

    def size(self) -> int:
        """Bytes the database file takes on disk."""

    def size_in_use(self) -> int:
        """Bytes of pages holding data (size() minus free pages)."""

    def defrag(self) -> None:
        """Rewrite the file without free pages; blocks readers and the writer meanwhile."""

    def snapshot_to(self, out: IO[bytes]) -> None:
        """Write a consistent, compacted copy of the committed database to out."""

    def hash(self, ignore: Callable[[Bucket, bytes], bool]) -> int:
        """CRC-32C over every bucket's name and pairs, skipping pairs ignore() selects."""

    def close(self) -> None: ...
