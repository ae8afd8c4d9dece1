"""etcd snapshot files: the backend's buckets as etcd's bbolt database, and back (etcd's
backend.Snapshot and etcdutl's reading of snapshot files).

A snapshot file is the database followed by the SHA-256 of it, as Maintenance.Snapshot streams
it and `etcdctl snapshot save` stores it. The database's length is a multiple of 512, so a file
whose length is 32 more than a multiple of 512 carries the digest (etcd's hasChecksum); a
database copied out of a data directory has none.

Written: every bucket of schema.Bucket in etcd's encoding (petcd stores etcd's encodings), minus
the petcd-only cluster/clusterID, plus meta/storageVersion, so etcdutl and an etcd v3.6 started
on the restored directory read it as one of their own. Read: etcd's files (from etcd or petcd)
and petcd's older snapshot files, whose database is LMDB.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import lmdb

from server.backend.backend import Backend, ReadTx
from server.backend.bbolt import BboltReader, BboltWriter, is_bbolt
from server.backend.lmdb_backend import MAX_KEY_SIZE, check_length, is_lmdb
from server.backend.schema import Bucket, MetaKey

__all__ = [
    "SHA256_SIZE",
    "SnapshotError",
    "SnapshotFile",
    "has_checksum",
    "import_buckets",
    "read_buckets",
    "write_etcd_db",
]

SHA256_SIZE = 32
_CHUNK = 1 << 20
# cluster/clusterID: petcd's record of its cluster (etcd keeps it in the WAL metadata)
_PETCD_ONLY = {Bucket.CLUSTER: {b"clusterID"}}

Pairs = Iterator[tuple[bytes, bytes]]


class SnapshotError(Exception):
    """A snapshot file that cannot be used; the message says why in one line."""


def has_checksum(size: int) -> bool:
    return size % 512 == SHA256_SIZE


# -- writing ------------------------------------------------------------------------------------


def _etcd_pairs(view: ReadTx, bucket: Bucket, storage_version: str) -> Pairs:
    drop = _PETCD_ONLY.get(bucket, set())
    if bucket is Bucket.META:
        meta = dict(view.iterate(bucket))
        meta.setdefault(MetaKey.STORAGE_VERSION.value, storage_version.encode())
        yield from sorted(meta.items())
        return
    for key, value in view.iterate(bucket):
        if key not in drop:
            yield key, value


def write_etcd_db(view: ReadTx, out: BinaryIO, storage_version: str) -> int:
    """Write view's buckets to out as etcd's bbolt database; returns its length. view must stay
    the same while this runs (a committed read transaction)."""
    w = BboltWriter(out)
    for bucket in sorted(Bucket, key=lambda b: b.bucket_name):
        with w.bucket(bucket.bucket_name) as b:
            for key, value in _etcd_pairs(view, bucket, storage_version):
                b.put(key, value)
    return w.close()


# -- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    path: str
    format: Literal["bbolt", "lmdb"]
    # the database's bytes (the file minus the digest)
    db_size: int
    has_digest: bool

    @classmethod
    def open(cls, path: str, *, skip_hash_check: bool = False) -> SnapshotFile:
        """Check the file's kind and (unless skipped) its digest, as etcdutl restore does."""
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(4096)
        except OSError as e:
            raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from e
        if size == 0:
            raise SnapshotError(f"snapshot {path} is empty")
        if is_bbolt(head):
            fmt: Literal["bbolt", "lmdb"] = "bbolt"
        elif is_lmdb(head):
            fmt = "lmdb"
        else:
            raise SnapshotError(f"{path} is not a snapshot: not an etcd (bbolt) or petcd (LMDB) database")
        digest = has_checksum(size)
        snap = cls(path, fmt, size - SHA256_SIZE if digest else size, digest)
        if skip_hash_check:
            return snap
        if not digest:
            raise SnapshotError(
                f"snapshot {path} has no SHA-256 at its end (a database copied from a data directory?): "
                "snapshot missing hash but --skip-hash-check=false"
            )
        want, got = snap._digests()
        if want != got:
            raise SnapshotError(
                f"snapshot {path} is corrupt: its SHA-256 is {got.hex()}, the file ends with {want.hex()}"
            )
        return snap

    def _digests(self) -> tuple[bytes, bytes]:
        """(the digest the file ends with, the SHA-256 of its database)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            left = self.db_size
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            return f.read(SHA256_SIZE), h.digest()


def read_buckets(snap: SnapshotFile) -> Generator[tuple[bytes, Pairs], None, None]:
    """Each top-level bucket in name order with its pairs in key order (use up one bucket's
    pairs before asking for the next). Refuses what is not etcd's layout: a top-level key that
    is not a bucket, a bucket inside a bucket. Close the generator to release the file."""
    if snap.format == "bbolt":
        with BboltReader.open(snap.path) as db:
            for name, handle in db.items():
                if isinstance(handle, bytes):
                    raise SnapshotError(
                        f"{snap.path}: not an etcd snapshot: top-level key {name!r} is not a bucket"
                    )
                yield name, _flat(snap.path, name, db.items(handle))
        return
    check_length(snap.path)
    env: Any = lmdb.open(snap.path, subdir=False, readonly=True, lock=False, max_dbs=64)
    try:
        with env.begin() as txn:
            names = [name for name, _ in txn.cursor()]
            for name in names:
                db = env.open_db(name, txn=txn, create=False)
                yield name, _lmdb_pairs(snap.path, txn.cursor(db=db))
    except lmdb.Error as e:
        raise SnapshotError(f"{snap.path}: damaged LMDB database: {e}") from e
    finally:
        env.close()


def _lmdb_pairs(path: str, cursor: Any) -> Pairs:
    try:
        yield from cursor.iternext(keys=True, values=True)
    except lmdb.Error as e:
        raise SnapshotError(f"{path}: damaged LMDB database: {e}") from e


def _flat(path: str, name: bytes, items: Iterator[tuple[bytes, bytes | object]]) -> Pairs:
    for key, value in items:
        if not isinstance(value, bytes):
            raise SnapshotError(f"{path}: not an etcd snapshot: bucket {name!r} holds a bucket {key!r}")
        yield key, value


Check = Callable[[Bucket, bytes, bytes], None]


def import_buckets(
    snap: SnapshotFile, backend: Backend, check: Check | None = None, *, batch_bytes: int = 16 << 20
) -> list[bytes]:
    """Copy the snapshot's etcd buckets into backend, committing every batch_bytes so memory
    stays bounded; check (if given) may refuse a pair with SnapshotError. Returns the names of
    the buckets petcd does not know (not copied)."""
    known = {b.bucket_name: b for b in Bucket}
    skipped: list[bytes] = []
    pending = 0
    tx = backend.batch_tx()
    with contextlib.closing(read_buckets(snap)) as buckets:
        for name, pairs in buckets:
            bucket = known.get(name)
            if bucket is None:
                skipped.append(name)
                continue
            for key, value in pairs:
                if len(key) > MAX_KEY_SIZE:
                    raise SnapshotError(
                        f"{snap.path}: bucket {name.decode(errors='replace')}: a key of {len(key)} bytes; "
                        f"petcd's backend takes keys of at most {MAX_KEY_SIZE}"
                    )
                if check is not None:
                    check(bucket, key, value)
                tx.put(bucket, key, value)
                pending += len(key) + len(value)
                if pending >= batch_bytes:
                    backend.force_commit()
                    pending = 0
    backend.force_commit()
    return skipped
