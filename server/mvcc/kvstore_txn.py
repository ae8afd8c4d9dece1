"""Read and write transactions over the store (etcd's kvstore_txn.go).

A write transaction creates exactly one new main revision if it changes anything (its changes
take sub revisions 0, 1, ... in order) and none otherwise. Reads inside it see its own writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.backend.schema import Bucket
from server.mvcc.key_index import RevisionNotFoundError
from server.mvcc.kv import NO_LEASE, CompactedError, FutureRevError, KeyValue, RangeOptions, RangeResult
from server.mvcc.revision import Revision, rev_to_bytes

if TYPE_CHECKING:
    from server.backend.backend import ReadTx
    from server.mvcc.kvstore import KVStore

__all__ = ["StoreTxnRead", "StoreTxnWrite"]


class StoreTxnRead:
    __slots__ = ("_compact_rev", "_rev", "_store", "_tx")

    def __init__(self, store: KVStore, tx: ReadTx) -> None:
        self._store = store
        self._tx = tx
        self._rev = store.current_rev
        self._compact_rev = store.compact_main_rev

    def first_rev(self) -> int:
        return self._compact_rev

    def rev(self) -> int:
        return self._rev

    def range(self, key: bytes, end: bytes | None, ro: RangeOptions) -> RangeResult:
        self._store.stats.range += 1
        return self._range_keys(key, end, self._rev, ro)

    def _range_keys(self, key: bytes, end: bytes | None, cur_rev: int, ro: RangeOptions) -> RangeResult:
        rev = ro.rev
        if rev > cur_rev:
            raise FutureRevError()
        if rev <= 0:
            rev = cur_rev
        if rev < self._store.compact_main_rev:
            raise CompactedError()
        index = self._store.index
        if ro.count:
            return RangeResult([], cur_rev, index.count_revisions(key, end, rev))
        if end is None:  # one key (any limit keeps it)
            try:
                modified = index.get(key, rev)[0]
            except RevisionNotFoundError:
                return RangeResult([], cur_rev, 0)
            return RangeResult([self._record(modified)], cur_rev, 1)
        revs, total = index.revisions(key, end, rev, ro.limit)
        if ro.limit > 0:
            revs = revs[: ro.limit]
        return RangeResult([self._record(r) for r in revs], cur_rev, total)

    def _record(self, r: Revision) -> KeyValue:
        raw = self._tx.get(Bucket.KEY, rev_to_bytes(r))
        if raw is None:
            raise AssertionError(f"revision {r} is in the index but not in the backend")
        return KeyValue.FromString(raw)

    def end(self) -> None:
        pass


class StoreTxnWrite(StoreTxnRead):
    __slots__ = ("_begin_rev", "_changes", "_ops")

    def __init__(self, store: KVStore) -> None:
        super().__init__(store, store.backend.batch_tx())
        self._begin_rev = store.current_rev
        self._changes: list[KeyValue] = []
        self._ops = 0

    def rev(self) -> int:
        return self._begin_rev + 1 if self._changes else self._begin_rev

    def range(self, key: bytes, end: bytes | None, ro: RangeOptions) -> RangeResult:
        self._ops += 1
        self._store.stats.range += 1
        return self._range_keys(key, end, self.rev(), ro)

    def changes(self) -> list[KeyValue]:
        return self._changes

    def put(self, key: bytes, value: bytes, lease: int) -> int:
        store = self._store
        self._ops += 1
        store.stats.put += 1
        rev = self._begin_rev + 1
        created = rev
        ver = 0
        old_lease = NO_LEASE
        try:
            _, created_rev, ver = store.index.get(key, rev)
            created = created_rev.main
            old_lease = store.lessor.get_lease(key)
        except RevisionNotFoundError:
            pass
        idx_rev = Revision(rev, len(self._changes))
        kv = KeyValue(
            key=key, value=value, create_revision=created, mod_revision=rev, version=ver + 1, lease=lease
        )
        store.backend.batch_tx().put(Bucket.KEY, rev_to_bytes(idx_rev), kv.SerializeToString())
        store.index.put(key, idx_rev)
        self._changes.append(kv)
        if old_lease != lease:
            if old_lease != NO_LEASE:
                store.lessor.detach(old_lease, [key])
            if lease != NO_LEASE:
                store.lessor.attach(lease, [key])
        return rev

    def delete_range(self, key: bytes, end: bytes | None) -> tuple[int, int]:
        self._ops += 1
        self._store.stats.delete += 1
        keys, _ = self._store.index.range(key, end, self.rev())
        for k in keys:
            self._delete(k)
        return len(keys), self.rev()

    def _delete(self, key: bytes) -> None:
        store = self._store
        idx_rev = Revision(self._begin_rev + 1, len(self._changes))
        kv = KeyValue(key=key)
        store.backend.batch_tx().put(
            Bucket.KEY, rev_to_bytes(idx_rev, tombstone=True), kv.SerializeToString()
        )
        store.index.tombstone(key, idx_rev)
        self._changes.append(kv)
        lease = store.lessor.get_lease(key)
        if lease != NO_LEASE:
            store.lessor.detach(lease, [key])

    def end(self) -> None:
        if self._ops > 1:
            self._store.stats.txn += 1
        if self._changes:
            self._store.current_rev = self._begin_rev + 1
