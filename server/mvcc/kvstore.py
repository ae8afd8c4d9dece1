"""The multi-version key-value store (etcd's kvstore.go): a tree index in memory, every
revision of every key in the backend's `key` bucket.

Invariants:
- current_rev starts at 1 on an empty store and grows by exactly one per write transaction
  that changes something; it never goes backwards, also across restarts and compactions.
- compact_main_rev is the last compaction revision (-1 before any): reads below it fail with
  CompactedError; the revision itself stays readable.
- A compaction is recorded (scheduledCompactRev) and committed before the index is compacted,
  so a crash in the middle resumes it on restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Self

from server.backend.backend import Backend
from server.backend.schema import Bucket, MetaKey
from server.failpoint import failpoint
from server.mvcc.hash import KeyValueHash, KVHasher, hash_by_rev
from server.mvcc.index import TreeIndex
from server.mvcc.key_index import KeyIndex
from server.mvcc.kv import NO_LEASE, CompactedError, FutureRevError, KeyValue, LeaseTracker
from server.mvcc.kvstore_txn import StoreTxnRead, StoreTxnWrite
from server.mvcc.metrics import MvccStats
from server.mvcc.revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes

__all__ = ["Compaction", "KVStore"]

log = logging.getLogger(__name__)

# non-const so tests can shrink it
COMPACTION_BATCH_LIMIT = 1000
# keys whose index entries one compaction step compacts
INDEX_COMPACTION_BATCH = 10_000
DEFAULT_COMPACTION_SLEEP_MS = 10
FP_BEFORE_COMMIT_SCHEDULED = failpoint("compactBeforeCommitScheduledCompact")
FP_AFTER_COMMIT_SCHEDULED = failpoint("compactAfterCommitScheduledCompact")
FP_BEFORE_SET_FINISHED = failpoint("compactBeforeSetFinishedCompact")
FP_AFTER_SET_FINISHED = failpoint("compactAfterSetFinishedCompact")
# how many hashes of finished compactions are kept for corruption checks
HASH_STORAGE_MAX_SIZE = 10


class Compaction:
    """A scheduled physical compaction: index compaction, then batched deletion of the
    revisions <= rev that no live key needs. Drive it with steps(); the caller commits the
    backend (and may pause) between steps."""

    def __init__(self, store: KVStore, rev: int, prev_rev: int, *, record_hash: bool = True) -> None:
        self.rev = rev
        self.prev_rev = prev_rev
        # a compaction resumed after a crash hashes a half-compacted bucket: its hash is not
        # comparable with other members' and is not recorded (etcd #15919)
        self.record_hash = record_hash
        self.hash: KeyValueHash | None = None
        self._store = store

    def steps(self, batch_limit: int = 0) -> Iterator[None]:
        """One step per batch_limit revisions read (etcd's --compaction-batch-limit: 0 is the
        default, below 0 one step for everything, as etcd's unbounded UnsafeRange)."""
        limit = max(batch_limit or COMPACTION_BATCH_LIMIT, 0)  # the backend's 0 is no limit
        store = self._store
        # the index a batch of keys at a time, so writes are served in between
        keep: set[Revision] = set()
        keys = store.index.keys()
        for start in range(0, len(keys), INDEX_COMPACTION_BATCH):
            if start:
                yield
            store.index.compact_keys(keys[start : start + INDEX_COMPACTION_BATCH], self.rev, keep)
        end = rev_to_bytes(Revision(self.rev + 1, 0))[:8]
        hasher = KVHasher(self.prev_rev, self.rev, keep)
        last = b""
        tx = store.backend.batch_tx()
        while True:
            batch = tx.range(Bucket.KEY, last, end, limit)
            for raw_rev, value in batch:
                if bytes_to_rev(raw_rev) not in keep:
                    tx.delete(Bucket.KEY, raw_rev)
                hasher.write_key_value(raw_rev, value)
            if not limit or len(batch) < limit:
                if FP_BEFORE_SET_FINISHED.armed:
                    FP_BEFORE_SET_FINISHED.hit()
                tx.put(Bucket.META, MetaKey.FINISHED_COMPACT_REV, rev_to_bytes(Revision(self.rev, 0)))
                if FP_AFTER_SET_FINISHED.armed:
                    FP_AFTER_SET_FINISHED.hit()
                self.hash = hasher.hash()
                if self.record_hash:
                    store.record_compaction_hash(self.hash)
                log.info("finished scheduled compaction", extra={"compact_revision": self.rev})
                return
            r = bytes_to_rev(batch[-1][0])
            last = rev_to_bytes(Revision(r.main, r.sub + 1))
            yield

    def run(self) -> None:
        """Run every step without pausing (tests, restore)."""
        for _ in self.steps():
            pass


class KVStore:
    """Use KVStore.open(); the constructor does no IO."""

    def __init__(self, backend: Backend, lessor: LeaseTracker) -> None:
        self.backend = backend
        self.lessor = lessor
        self.index = TreeIndex()
        self.current_rev = 1
        self.compact_main_rev = -1
        self.compaction_hashes: list[KeyValueHash] = []
        self.stats = MvccStats()

    @classmethod
    def open(cls, backend: Backend, lessor: LeaseTracker) -> tuple[Self, Compaction | None]:
        """Rebuild the store from the backend; returns it and the compaction a crash
        interrupted, if any (to be resumed by the caller)."""
        store = cls(backend, lessor)
        return store, store._restore()

    # -- transactions -----------------------------------------------------------------------------

    def read(self) -> StoreTxnRead:
        return StoreTxnRead(self, self.backend.read_tx())

    def write(self) -> StoreTxnWrite:
        return StoreTxnWrite(self)

    def rev(self) -> int:
        return self.current_rev

    def first_rev(self) -> int:
        return self.compact_main_rev

    # -- compaction -------------------------------------------------------------------------------

    def compact(self, rev: int) -> Compaction:
        """Make rev the compaction revision and return the physical compaction to run.
        CompactedError if rev <= the current compaction revision, FutureRevError if rev is
        ahead of the store."""
        if rev <= self.compact_main_rev:
            raise CompactedError()
        if rev > self.current_rev:
            raise FutureRevError()
        prev = self.compact_main_rev
        tx = self.backend.batch_tx()
        # the previous compaction finished (etcd records hashes only then)
        previous_done = tx.get(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV) == tx.get(
            Bucket.META, MetaKey.FINISHED_COMPACT_REV
        )
        self.compact_main_rev = rev
        tx.put(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV, rev_to_bytes(Revision(rev, 0)))
        # the scheduled revision must be durable before any record is deleted
        if FP_BEFORE_COMMIT_SCHEDULED.armed:
            FP_BEFORE_COMMIT_SCHEDULED.hit()
        self.backend.force_commit()
        if FP_AFTER_COMMIT_SCHEDULED.armed:
            FP_AFTER_COMMIT_SCHEDULED.hit()
        return Compaction(self, rev, prev, record_hash=previous_done)

    def record_compaction_hash(self, h: KeyValueHash) -> None:
        self.compaction_hashes.append(h)
        self.compaction_hashes.sort(key=lambda x: x.revision)
        del self.compaction_hashes[:-HASH_STORAGE_MAX_SIZE]

    # -- hashing ----------------------------------------------------------------------------------

    def hash_by_rev(self, rev: int) -> tuple[KeyValueHash, int]:
        """The HashKV of the key bucket up to rev (0: current) and the current revision. The hash a
        compaction recorded at exactly rev is returned as recorded (etcd's hashStorage)."""
        compact_rev, current = self.compact_main_rev, self.current_rev
        for h in self.compaction_hashes:
            if h.revision == rev:
                return h, current
        if 0 < rev < compact_rev:
            raise CompactedError()
        if rev > current:
            raise FutureRevError()
        if rev == 0:
            rev = current
        keep = self.index.keep(rev)
        return hash_by_rev(self.backend.read_tx(), compact_rev, rev, keep), current

    # -- restore ----------------------------------------------------------------------------------

    def restore(self) -> Compaction | None:
        """Rebuild everything in memory from the backend, which was just replaced (a snapshot
        from the leader): etcd's store.Restore."""
        self.index = TreeIndex()
        self.current_rev = 1
        self.compact_main_rev = -1
        self.compaction_hashes = []
        return self._restore()

    def _restore(self) -> Compaction | None:
        tx = self.backend.read_tx()
        finished = tx.get(Bucket.META, MetaKey.FINISHED_COMPACT_REV)
        scheduled = tx.get(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV)
        if finished is not None:
            self.compact_main_rev = bytes_to_rev(finished).main
        key_to_lease: dict[bytes, int] = {}
        tree = self.index
        for raw_rev, raw_kv in tx.iterate(Bucket.KEY, rev_to_bytes(Revision(1, 0))):
            kv = KeyValue.FromString(raw_kv)
            rev = bytes_to_rev(raw_rev)
            self.current_rev = rev.main
            ki: KeyIndex | None = tree.key_index(kv.key)
            if is_tombstone(raw_rev):
                if ki is None:
                    # its earlier records were compacted; the tombstone must stay indexed (and
                    # kept by the next compaction) so a watch from this revision sees the delete
                    tree.restore_tombstone(kv.key, rev)
                elif not ki.generations[-1].is_empty():
                    ki.tombstone(rev.main, rev.sub)
                key_to_lease.pop(kv.key, None)
                continue
            if ki is None:
                tree.restore(kv.key, Revision(kv.create_revision, 0), rev, kv.version)
            else:
                ki.put(rev.main, rev.sub)
            if kv.lease != NO_LEASE:
                key_to_lease[kv.key] = kv.lease
            else:
                key_to_lease.pop(kv.key, None)
        for key, lease in key_to_lease.items():
            try:
                self.lessor.attach(lease, [key])
            except LookupError:
                log.warning("key attached to a missing lease", extra={"key": key, "lease": lease})
        self.current_rev = max(self.current_rev, self.compact_main_rev, 1)
        if scheduled is None:
            return None
        scheduled_rev = bytes_to_rev(scheduled).main
        self.current_rev = max(self.current_rev, scheduled_rev)
        if finished is not None and scheduled_rev <= self.compact_main_rev:
            return None
        log.info("resuming scheduled compaction", extra={"compact_revision": scheduled_rev})
        prev = self.compact_main_rev
        self.compact_main_rev = scheduled_rev
        return Compaction(self, scheduled_rev, prev, record_hash=False)
