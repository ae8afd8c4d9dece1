"""The Backend on LMDB (py-lmdb): one named database per bucket, buffered writes, commits on a
writer thread. See backend.py for the buffering invariant."""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import crc32c
import lmdb

from server.backend.backend import BackendError, ReadTx
from server.backend.schema import Bucket
from server.failpoint import failpoint

__all__ = ["MAX_KEY_SIZE", "LmdbBackend", "check_length", "fsync_path", "is_lmdb"]

log = logging.getLogger(__name__)

FP_BEFORE_COMMIT = failpoint("beforeCommit")
FP_AFTER_COMMIT = failpoint("afterCommit")
FP_DEFRAG_BEFORE_COPY = failpoint("defragBeforeCopy")
FP_DEFRAG_BEFORE_RENAME = failpoint("defragBeforeRename")
DEFAULT_MAP_SIZE = 10 * 1024 * 1024 * 1024  # address space reserved, not disk used
# LMDB's compiled-in key limit (py-lmdb's Environment.max_key_size())
MAX_KEY_SIZE = 511

_Buffer = dict[Bucket, dict[bytes, bytes | None]]
# the committed values kept by _ReadCache (a value larger than a tenth is not kept)
READ_CACHE_BYTES = 32 * 1024 * 1024


class _Sealed:
    """A buffer handed to the writer thread; dropped once durable."""

    __slots__ = ("buf", "durable")

    def __init__(self, buf: _Buffer) -> None:
        self.buf = buf
        self.durable = False


# An LMDB file starts with two meta pages; each is a 16-byte page header then MDB_meta:
#   +0 magic u32 (0xBEEFC0DE)  +4 version u32  +8 address  +16 mapsize
#   +24 dbs[0] (free list; its first u32 holds the page size)  +72 dbs[1] (main)
#   +120 last_pg u64  +128 txnid u64
# The meta with the larger txnid is current; the file must reach its last page. LMDB maps the
# file and would touch pages past a short file's end: SIGBUS instead of an error.
_META = struct.Struct("<II16xI92xQQ")
_MAGIC = 0xBEEFC0DE


def is_lmdb(head: bytes) -> bool:
    """Whether a file starting with head looks like an LMDB file (meta magic after page 0's header)."""
    return head[16:20] == _MAGIC.to_bytes(4, "little")


def check_length(path: str) -> None:
    """Refuse (BackendError) an LMDB file shorter than its meta page says."""
    try:
        with open(path, "rb") as f:
            head = f.read(2 * 65536)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return
    metas = []
    if len(head) >= 16 + _META.size:
        psize = _META.unpack_from(head, 16)[2]
        for off in (0, psize):
            if 0 < psize <= 65536 and off + 16 + _META.size <= len(head):
                magic, _, _, last_pg, txnid = _META.unpack_from(head, off + 16)
                if magic == _MAGIC:
                    metas.append((txnid, (last_pg + 1) * psize))
    if metas:
        need = max(metas)[1]
        if size < need:
            raise BackendError(
                f"cannot open backend database {path}: the file is {size} bytes but its last "
                f"page ends at {need}: truncated"
            )


class _ReadCache:
    """Committed values of the KEY bucket (MVCC's records, one per revision) read back from LMDB
    on the writer's own thread, so that reading a record again needs no LMDB call: py-lmdb lets
    go of the GIL around each one, and another thread that takes it then (the gRPC server's)
    makes the event loop wait.

    Invariant: every entry equals the key's committed value with no newer write buffered, since
    a write (on the writer's thread) drops the key's entry and an entry is added only by a view
    that saw no write since it captured the buffers (`writes` unchanged). Views of other threads
    neither use nor fill it. Oldest entries go first past READ_CACHE_BYTES."""

    __slots__ = ("bytes", "owner", "values", "writes")

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.values: dict[bytes, bytes] = {}
        self.bytes = 0
        # KEY-bucket writes buffered so far
        self.writes = 0

    def drop(self, key: bytes) -> None:
        self.writes += 1
        value = self.values.pop(key, None)
        if value is not None:
            self.bytes -= len(value)

    def add(self, key: bytes, value: bytes) -> None:
        size = len(value)
        if size > READ_CACHE_BYTES // 10 or key in self.values:
            return
        values = self.values
        while values and self.bytes + size > READ_CACHE_BYTES:
            self.bytes -= len(values.pop(next(iter(values))))
        values[key] = value
        self.bytes += size

    def clear(self) -> None:
        self.values.clear()
        self.bytes = 0
        self.writes += 1


class _View:
    """A read view: the buffers newest first, then one LMDB read transaction begun after the
    buffers were captured. On the writer's thread, KEY-bucket reads go through the read cache
    between the two."""

    __slots__ = ("_backend", "_cache", "_overlays", "_txn", "_writes")

    def __init__(self, backend: LmdbBackend, overlays: list[_Buffer] | None = None) -> None:
        self._backend = backend
        cache = backend._read_cache
        self._cache = cache if overlays is None and threading.get_ident() == cache.owner else None
        self._writes = cache.writes
        self._overlays = backend._overlays() if overlays is None else overlays
        self._txn: Any = None

    def _lmdb_txn(self) -> Any:
        if self._txn is None:
            self._txn = self._backend._env.begin(buffers=False)
        return self._txn

    def get(self, bucket: Bucket, key: bytes) -> bytes | None:
        if not key:
            return None  # LMDB has no empty keys; nothing is stored under one
        for overlay in self._overlays:
            kv = overlay.get(bucket)
            if kv is not None and key in kv:
                return kv[key]
        value: bytes | None
        cache = self._cache if bucket is Bucket.KEY else None
        if cache is not None:
            value = cache.values.get(key)
            if value is not None:
                return value
        try:
            value = self._lmdb_txn().get(key, db=self._backend._dbs[bucket])
        except lmdb.Error as e:
            raise self._backend.damaged(e) from e
        if cache is not None and value is not None and cache.writes == self._writes:
            cache.add(key, value)
        return value

    def iterate(self, bucket: Bucket, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        try:
            yield from self._iterate(bucket, start)
        except lmdb.Error as e:
            raise self._backend.damaged(e) from e

    def _iterate(self, bucket: Bucket, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        merged: dict[bytes, bytes | None] = {}
        for overlay in reversed(self._overlays):  # oldest first, so newer values win
            kv = overlay.get(bucket)
            if kv:
                merged.update(kv)
        cursor = self._lmdb_txn().cursor(db=self._backend._dbs[bucket])
        stored: Iterator[tuple[bytes, bytes]] = iter(())
        if cursor.set_range(start):
            stored = cursor.iternext(keys=True, values=True)
        if not merged:
            yield from stored
            return
        buffered = sorted((k, v) for k, v in merged.items() if k >= start)
        # Buffered pairs sort before stored ones with the same key (0 < 1), so they shadow them.
        last: bytes | None = None
        for key, _, value in heapq.merge(((k, 1, v) for k, v in stored), ((k, 0, v) for k, v in buffered)):
            if key == last:
                continue
            last = key
            if value is not None:
                yield key, value

    def range(
        self, bucket: Bucket, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        if end is None:
            value = self.get(bucket, start)
            return [] if value is None else [(start, value)]
        out: list[tuple[bytes, bytes]] = []
        for key, value in self.iterate(bucket, start):
            if key >= end:
                break
            out.append((key, value))
            if limit and len(out) >= limit:
                break
        return out


class _BatchTx:
    """The apply loop's write view."""

    __slots__ = ("_backend",)

    def __init__(self, backend: LmdbBackend) -> None:
        self._backend = backend

    def get(self, bucket: Bucket, key: bytes) -> bytes | None:
        return _View(self._backend).get(bucket, key)

    def range(
        self, bucket: Bucket, start: bytes, end: bytes | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        return _View(self._backend).range(bucket, start, end, limit)

    def iterate(self, bucket: Bucket, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return _View(self._backend).iterate(bucket, start)

    def put(self, bucket: Bucket, key: bytes, value: bytes) -> None:
        b = self._backend
        b._current.setdefault(bucket, {})[key] = value
        b._pending += 1
        if bucket is Bucket.KEY:
            b._read_cache.drop(key)

    def delete(self, bucket: Bucket, key: bytes) -> None:
        b = self._backend
        b._current.setdefault(bucket, {})[key] = None
        b._pending += 1
        if bucket is Bucket.KEY:
            b._read_cache.drop(key)


class LmdbBackend:
    """An LMDB environment holding etcd's buckets in one file (`path`, plus `path`-lock)."""

    def __init__(self, path: str, *, map_size: int = DEFAULT_MAP_SIZE, fsync: bool = True) -> None:
        self._path = path
        self._map_size = map_size
        self._fsync = fsync
        self._current: _Buffer = {}
        self._pending = 0
        self._sealed: list[_Sealed] = []
        self._lock = threading.Lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="backend-commit")
        self._last_commit: concurrent.futures.Future[None] | None = None
        self._env: Any = None
        self._dbs: dict[Bucket, Any] = {}
        self._size = self._size_in_use = 0
        self._read_cache = _ReadCache()
        self._open()

    def damaged(self, e: lmdb.Error) -> BackendError:
        return BackendError(f"backend database {self._path} is damaged: {e}")

    def _open(self) -> None:
        self._read_cache.clear()
        os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
        check_length(self._path)
        try:
            self._env = lmdb.open(
                self._path,
                subdir=False,
                map_size=self._map_size,
                max_dbs=len(Bucket) + 1,
                max_readers=1024,
                sync=self._fsync,
                metasync=self._fsync,
                readahead=False,
                lock=True,
            )
            with self._env.begin(write=True) as txn:
                self._dbs = {b: self._env.open_db(b.bucket_name, txn=txn, create=True) for b in Bucket}
        except lmdb.Error as e:
            raise BackendError(f"cannot open backend database {self._path}: {e}") from e
        self._refresh_size()

    # -- views ------------------------------------------------------------------------------------

    def _overlays(self) -> list[_Buffer]:
        with self._lock:
            sealed = [s.buf for s in reversed(self._sealed)]
        return [self._current, *sealed]

    def read_tx(self) -> _View:
        return _View(self)

    def batch_tx(self) -> _BatchTx:
        return _BatchTx(self)

    @contextlib.contextmanager
    def read_committed(self) -> Iterator[ReadTx]:
        """A view of the committed database alone (no write buffers), the same for as long as it
        is open: what a snapshot copies. Open, use and leave it on one thread."""
        view = _View(self, overlays=[])
        txn = view._lmdb_txn()  # begun now: the view is of this moment
        try:
            yield view
        finally:
            txn.abort()

    def pending(self) -> int:
        return self._pending

    # -- commits ----------------------------------------------------------------------------------

    def commit(self) -> concurrent.futures.Future[None]:
        """A future of its own for each caller: cancelling it (asyncio.wrap_future does when
        its waiter is cancelled) leaves the write, and every other waiter, as they were."""
        if self._current:
            sealed = _Sealed(self._current)
            with self._lock:
                self._sealed.append(sealed)
            self._current = {}
            self._pending = 0
            self._last_commit = self._writer.submit(self._write_sealed)
        elif self._last_commit is not None and self._last_commit.done() and self._last_commit.exception():
            self._last_commit = self._writer.submit(self._write_sealed)  # retries what failed
        last = self._last_commit
        answer: concurrent.futures.Future[None] = concurrent.futures.Future()
        if last is None:
            answer.set_result(None)
        else:
            last.add_done_callback(lambda f: _copy_outcome(f, answer))
        return answer

    def force_commit(self) -> None:
        self.commit().result()

    def _write_sealed(self) -> None:
        """Writer thread: persist every sealed buffer not yet durable, oldest first, in one
        transaction. A failed write leaves them sealed; the next commit retries them."""
        with self._lock:
            todo = [s for s in self._sealed if not s.durable]
        if not todo:
            return
        env = self._env
        try:
            txn = env.begin(write=True)
            try:
                for sealed in todo:
                    for bucket, kv in sealed.buf.items():
                        db = self._dbs[bucket]
                        for key, value in kv.items():
                            if value is None:
                                txn.delete(key, db=db)
                            else:
                                txn.put(key, value, db=db)
                if FP_BEFORE_COMMIT.armed:
                    FP_BEFORE_COMMIT.hit()
                txn.commit()
            except BaseException:
                txn.abort()
                raise
            if FP_AFTER_COMMIT.armed:
                FP_AFTER_COMMIT.hit()
        except lmdb.Error as e:
            raise BackendError(f"backend commit failed: {e}") from e
        self._refresh_size()
        with self._lock:
            for sealed in todo:
                sealed.durable = True
            self._sealed = [s for s in self._sealed if not s.durable]

    # -- size, defrag, snapshot, hash -------------------------------------------------------------

    def size(self) -> int:
        """The file size as of the last commit (cheap: the quota asks on every write)."""
        return self._size

    def _refresh_size(self) -> None:
        """Both sizes as of now, read together so that in-use never exceeds the file."""
        in_use = self._pages_in_use()
        try:
            size = os.path.getsize(self._path)
        except OSError:
            size = 0
        self._size, self._size_in_use = max(size, in_use), in_use

    def size_in_use(self) -> int:
        return self._size_in_use

    def _pages_in_use(self) -> int:
        env = self._env
        stat = env.stat()
        pages = 2 + stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        with env.begin() as txn:
            for db in self._dbs.values():
                s = txn.stat(db)
                pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        return int(pages * stat["psize"])

    def defrag(self) -> None:
        self.force_commit()
        tmp = f"{self._path}.defrag.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if FP_DEFRAG_BEFORE_COPY.armed:
            FP_DEFRAG_BEFORE_COPY.hit()
        try:
            self._env.copy(tmp, compact=True)
            fsync_path(tmp)
        except lmdb.Error as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise BackendError(f"defrag failed: {e}") from e
        self._env.close()
        if FP_DEFRAG_BEFORE_RENAME.armed:
            FP_DEFRAG_BEFORE_RENAME.hit()
        os.replace(tmp, self._path)
        fsync_path(os.path.dirname(self._path) or ".")
        self._open()

    def replace_with(self, db_path: str) -> None:
        """Swap the database for the one at db_path (a snapshot received from the leader);
        pending writes are discarded. The object stays the same, so its users keep it."""
        with self._lock:
            pending = [s for s in self._sealed if not s.durable]
        if pending:
            self.force_commit()
        self._current = {}
        self._pending = 0
        self._env.close()
        os.replace(db_path, self._path)
        fsync_path(os.path.dirname(self._path) or ".")
        self._open()

    def snapshot_to(self, out: IO[bytes]) -> None:
        with tempfile.TemporaryFile(dir=os.path.dirname(self._path) or ".") as tmp:
            self._env.copyfd(tmp.fileno(), compact=True)
            tmp.seek(0)
            while chunk := tmp.read(1 << 20):
                out.write(chunk)

    def hash(self, ignore: Callable[[Bucket, bytes], bool]) -> int:
        view = self.read_tx()
        h = 0
        for bucket in sorted(Bucket, key=lambda b: b.bucket_name):
            h = crc32c.crc32c(bucket.bucket_name, h)
            for key, value in view.iterate(bucket):
                if not ignore(bucket, key):
                    h = crc32c.crc32c(value, crc32c.crc32c(key, h))
        return h

    def close(self) -> None:
        with contextlib.suppress(BackendError):
            self.force_commit()
        self._writer.shutdown(wait=True)
        self._env.close()


def _copy_outcome(src: concurrent.futures.Future[None], dst: concurrent.futures.Future[None]) -> None:
    if not dst.set_running_or_notify_cancel():
        return
    e = src.exception()
    if e is None:
        dst.set_result(None)
    else:
        dst.set_exception(e)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
