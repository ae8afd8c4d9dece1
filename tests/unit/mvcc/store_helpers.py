"""Helpers shared by the MVCC store tests: a fake lessor, store construction over a real
LmdbBackend, one-shot write transactions and compaction driven to completion."""

from __future__ import annotations

from pathlib import Path

from server.backend.lmdb_backend import LmdbBackend
from server.mvcc.kv import KeyValue, RangeOptions, RangeResult
from server.mvcc.kvstore import Compaction, KVStore

NO_LEASE = 0


class FakeLessor:
    """The LeaseTracker MVCC needs: key -> lease, with every attach/detach recorded."""

    def __init__(self) -> None:
        self.item_map: dict[bytes, int] = {}
        self.calls: list[tuple[str, int, tuple[bytes, ...]]] = []

    def get_lease(self, key: bytes) -> int:
        return self.item_map.get(key, NO_LEASE)

    def attach(self, lease_id: int, keys: list[bytes]) -> None:
        self.calls.append(("attach", lease_id, tuple(keys)))
        for k in keys:
            self.item_map[k] = lease_id

    def detach(self, lease_id: int, keys: list[bytes]) -> None:
        self.calls.append(("detach", lease_id, tuple(keys)))
        for k in keys:
            if self.item_map.get(k) == lease_id:
                del self.item_map[k]


class StoreEnv:
    """A KVStore over an LmdbBackend in a directory, reopenable from the same file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path / "db")
        self.backend = LmdbBackend(self.path, map_size=1 << 26, fsync=False)
        self.lessor = FakeLessor()
        self.store, self.resumed = KVStore.open(self.backend, self.lessor)

    def reopen(self) -> Compaction | None:
        """Close the backend (committing its buffers) and rebuild the store from the file."""
        self.backend.close()
        self.backend = LmdbBackend(self.path, map_size=1 << 26, fsync=False)
        self.lessor = FakeLessor()
        self.store, self.resumed = KVStore.open(self.backend, self.lessor)
        return self.resumed

    def close(self) -> None:
        self.backend.close()

    # -- one-operation transactions (etcd's s.Put / s.DeleteRange / s.Range) ----------------------

    def put(self, key: bytes, value: bytes, lease: int = NO_LEASE) -> int:
        txn = self.store.write()
        rev = txn.put(key, value, lease)
        txn.end()
        return rev

    def delete(self, key: bytes, end: bytes | None = None) -> tuple[int, int]:
        txn = self.store.write()
        n, rev = txn.delete_range(key, end)
        txn.end()
        return n, rev

    def range(
        self, key: bytes, end: bytes | None = None, *, rev: int = 0, limit: int = 0, count: bool = False
    ) -> RangeResult:
        txn = self.store.read()
        try:
            return txn.range(key, end, RangeOptions(limit=limit, rev=rev, count=count))
        finally:
            txn.end()

    def compact(self, rev: int) -> Compaction:
        """Schedule and run a compaction to completion, then commit (the server's loop)."""
        job = self.store.compact(rev)
        job.run()
        self.backend.force_commit()
        return job


def kv(key: bytes, value: bytes, create: int, mod: int, version: int, lease: int = NO_LEASE) -> KeyValue:
    return KeyValue(
        key=key, value=value, create_revision=create, mod_revision=mod, version=version, lease=lease
    )
