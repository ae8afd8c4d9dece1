"""KVStore over a real LmdbBackend against a model, as a hypothesis state machine.

The model is, per key, the list of its changes (main revision, record or None for a delete).
Rules: puts, deletes (single key, [key, end), everything from key), multi-operation write
transactions (distinct keys, no put inside a delete range: what etcd's txn validation allows),
ranges at any revision with limits and count, compactions run to completion, restarts from the
backend file, and crashes after scheduling a compaction (with 0..n of its batches done).

Invariants: the revision starts at 1, grows by one per changing transaction and never goes
back; reads at or after the compaction revision never change; reads below it fail; versions
count the puts of one life of a key; create_revision is that life's first put; the lessor
tracks the lease of each key's newest record; after a compaction exactly the records a read at
>= its revision needs remain in the backend.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket
from server.mvcc import kvstore
from server.mvcc.kv import CompactedError, FutureRevError, KeyValue, RangeOptions
from server.mvcc.kvstore import KVStore
from server.mvcc.revision import bytes_to_rev, is_tombstone

from .store_helpers import FakeLessor

KEYS = [b"a", b"ab", b"b", b"ba", b"c"]
RANGES: list[tuple[bytes, bytes | None]] = [
    (b"a", None),
    (b"ab", None),
    (b"c", None),
    (b"zz", None),
    (b"a", b"b"),
    (b"ab", b"c"),
    (b"b", b""),
    (b"", b""),
    (b"ba", b"ba"),
]
LEASES = [0, 0, 1, 2]


def in_range(k: bytes, key: bytes, end: bytes | None) -> bool:
    if end is None:
        return k == key
    return k >= key and (end == b"" or k < end)


@dataclass
class Model:
    rev: int = 1
    compact: int = -1
    # key -> [(main, record or None for a delete)], oldest first
    history: dict[bytes, list[tuple[int, KeyValue | None]]] = field(default_factory=dict)

    def at(self, rev: int) -> dict[bytes, KeyValue]:
        out: dict[bytes, KeyValue] = {}
        for k in sorted(self.history):
            newest = [r for m, r in self.history[k] if m <= rev]
            if newest and newest[-1] is not None:
                out[k] = newest[-1]
        return out

    def current(self, key: bytes) -> KeyValue | None:
        h = self.history.get(key)
        return h[-1][1] if h else None

    def leases(self) -> dict[bytes, int]:
        return {k: v.lease for k, v in self.at(self.rev).items() if v.lease}

    def expected_records(self) -> set[tuple[int, bytes, bool]]:
        """The (main, key, tombstone) records a completed compaction leaves in the backend."""
        out: set[tuple[int, bytes, bool]] = set()
        for k, changes in self.history.items():
            older = [(m, r) for m, r in changes if m <= self.compact]
            if older:
                m, r = older[-1]
                if r is not None or m == self.compact:
                    out.add((m, k, r is None))
            out.update((m, k, r is None) for m, r in changes if m > self.compact)
        return out


# ("put", key, None, value, lease) or ("del", key, end, b"", 0)
Op = tuple[str, bytes, bytes | None, bytes, int]

put_ops = st.tuples(
    st.just("put"), st.sampled_from(KEYS), st.none(), st.binary(max_size=3), st.sampled_from(LEASES)
)
del_ops = st.sampled_from(RANGES).map(lambda r: ("del", r[0], r[1], b"", 0))


class KVStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="petcd-mvcc-model-")
        self.path = f"{self.dir}/db"
        self.backend = LmdbBackend(self.path, map_size=1 << 26, fsync=False)
        self.lessor = FakeLessor()
        self.store, resumed = KVStore.open(self.backend, self.lessor)
        assert resumed is None
        self.model = Model()
        self.saved_batch_limit = kvstore.COMPACTION_BATCH_LIMIT

    @initialize(batch=st.sampled_from([1, 2, 3, 1000]))
    def set_batch_limit(self, batch: int) -> None:
        kvstore.COMPACTION_BATCH_LIMIT = batch

    def teardown(self) -> None:
        kvstore.COMPACTION_BATCH_LIMIT = self.saved_batch_limit
        self.backend.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- applying a transaction to the model -----------------------------------------------------

    def _model_apply(self, ops: list[Op]) -> int:
        """Apply ops as one transaction; returns the number of changes."""
        m = self.model
        rev = m.rev + 1
        changes = 0
        for kind, key, end, value, lease in ops:
            if kind == "put":
                prev = m.current(key)
                if prev is None:
                    rec = KeyValue(
                        key=key, value=value, create_revision=rev, mod_revision=rev, version=1, lease=lease
                    )
                else:
                    rec = KeyValue(
                        key=key,
                        value=value,
                        create_revision=prev.create_revision,
                        mod_revision=rev,
                        version=prev.version + 1,
                        lease=lease,
                    )
                m.history.setdefault(key, []).append((rev, rec))
                changes += 1
            else:
                for k in sorted(m.history):
                    if in_range(k, key, end) and m.current(k) is not None:
                        m.history[k].append((rev, None))
                        changes += 1
        if changes:
            m.rev = rev
        return changes

    def _valid_txn(self, ops: list[Op]) -> list[Op]:
        """Keep the ops etcd's txn validation accepts together: distinct put keys, no put inside
        any delete range of the same transaction."""
        out: list[Op] = []
        puts: set[bytes] = set()
        dels: list[tuple[bytes, bytes | None]] = []
        for op in ops:
            kind, key, end, _, _ = op
            if kind == "put":
                if key in puts or any(in_range(key, k, e) for k, e in dels):
                    continue
                puts.add(key)
            else:
                if any(in_range(p, key, end) for p in puts):
                    continue
                dels.append((key, end))
            out.append(op)
        return out

    def _run(self, ops: list[Op]) -> None:
        begin = self.store.rev()
        txn = self.store.write()
        for kind, key, end, value, lease in ops:
            if kind == "put":
                assert txn.put(key, value, lease) == begin + 1
            else:
                _, rev = txn.delete_range(key, end)
                assert rev == (begin + 1 if txn.changes() else begin)
        changed = self._model_apply(ops)
        # reads inside the transaction see its writes
        assert txn.rev() == self.model.rev
        inner = txn.range(b"", b"", RangeOptions())
        assert inner.kvs == list(self.model.at(self.model.rev).values())
        assert len(txn.changes()) == changed
        txn.end()
        assert self.store.rev() == begin + (1 if changed else 0)

    # -- rules -----------------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), value=st.binary(max_size=3), lease=st.sampled_from(LEASES))
    def put(self, key: bytes, value: bytes, lease: int) -> None:
        self._run([("put", key, None, value, lease)])

    @rule(rng=st.sampled_from(RANGES))
    def delete_range(self, rng: tuple[bytes, bytes | None]) -> None:
        self._run([("del", rng[0], rng[1], b"", 0)])

    @rule(ops=st.lists(st.one_of(put_ops, del_ops), min_size=0, max_size=5))
    def txn(self, ops: list[Op]) -> None:
        self._run(self._valid_txn(ops))

    @rule(
        rng=st.sampled_from(RANGES),
        back=st.integers(min_value=-2, max_value=12),
        limit=st.integers(min_value=-1, max_value=3),
        count=st.booleans(),
    )
    def range(self, rng: tuple[bytes, bytes | None], back: int, limit: int, count: bool) -> None:
        """A range at current - back: negative back asks for a future revision."""
        key, end = rng
        m = self.model
        at = m.rev - back
        ro = RangeOptions(limit=limit, rev=at, count=count)
        txn = self.store.read()
        if at > m.rev:
            with pytest.raises(FutureRevError):
                txn.range(key, end, ro)
            return
        eff = at if at > 0 else m.rev
        if eff < m.compact:
            with pytest.raises(CompactedError):
                txn.range(key, end, ro)
            return
        want = [v for k, v in m.at(eff).items() if in_range(k, key, end)]
        r = txn.range(key, end, ro)
        txn.end()
        assert r.rev == m.rev
        assert r.count == len(want)
        if count:
            assert r.kvs == []
        else:
            assert r.kvs == (want[:limit] if limit > 0 else want)

    @precondition(lambda self: self.model.compact < self.model.rev)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        m = self.model
        c = data.draw(st.integers(min_value=max(m.compact + 1, 0), max_value=m.rev), label="compact")
        job = self.store.compact(c)
        assert (job.rev, job.prev_rev) == (c, m.compact)
        job.run()
        self.backend.force_commit()
        m.compact = c
        self._check_all()

    @precondition(lambda self: self.model.compact >= 0)
    @rule(below=st.integers(min_value=0, max_value=3))
    def compact_again_fails(self, below: int) -> None:
        with pytest.raises(CompactedError):
            self.store.compact(self.model.compact - below)

    @rule(ahead=st.integers(min_value=1, max_value=3))
    def compact_future_fails(self, ahead: int) -> None:
        with pytest.raises(FutureRevError):
            self.store.compact(self.model.rev + ahead)

    @rule()
    def reopen(self) -> None:
        self._reopen()
        assert self.resumed is None
        self._check_all()

    @precondition(lambda self: self.model.compact < self.model.rev)
    @rule(data=st.data(), steps=st.integers(min_value=0, max_value=3))
    def crash_during_compaction(self, data: st.DataObject, steps: int) -> None:
        """Schedule a compaction, run `steps` of its batches (committed, as the server's loop
        does), then restart: the store resumes it; finished, it equals a completed one."""
        m = self.model
        c = data.draw(st.integers(min_value=max(m.compact + 1, 0), max_value=m.rev), label="compact")
        job = self.store.compact(c)
        it = job.steps()
        finished = False
        for _ in range(steps):
            try:
                next(it)
            except StopIteration:
                finished = True
                break
            self.backend.force_commit()
        prev = m.compact
        self._reopen()
        m.compact = c
        if finished:
            assert self.resumed is None
        else:
            assert self.resumed is not None
            assert (self.resumed.rev, self.resumed.prev_rev) == (c, prev)
            # before it runs, reads below it already fail and reads at/after it already work
            assert self.store.first_rev() == c
            self._check_reads()
            self.resumed.run()
            self.backend.force_commit()
        self._check_all()

    # -- checks ----------------------------------------------------------------------------------

    def _reopen(self) -> None:
        self.backend.close()
        self.backend = LmdbBackend(self.path, map_size=1 << 26, fsync=False)
        self.lessor = FakeLessor()
        self.store, self.resumed = KVStore.open(self.backend, self.lessor)

    def _check_reads(self) -> None:
        m = self.model
        assert self.store.rev() == m.rev
        assert self.store.first_rev() == m.compact
        for at in range(max(m.compact, 1), m.rev + 1):
            r = self.store.read().range(b"", b"", RangeOptions(rev=at))
            assert r.kvs == list(m.at(at).values()), at
        for at in range(1, m.compact):
            with pytest.raises(CompactedError):
                self.store.read().range(b"", b"", RangeOptions(rev=at))

    def _check_all(self) -> None:
        self._check_reads()
        got: set[tuple[int, bytes, bool]] = set()
        for raw, value in self.backend.read_tx().iterate(Bucket.KEY):
            got.add((bytes_to_rev(raw).main, KeyValue.FromString(value).key, is_tombstone(raw)))
        if self.model.compact >= 0:
            assert got == self.model.expected_records()
        else:
            assert got == {(mm, k, r is None) for k, h in self.model.history.items() for mm, r in h}

    @invariant()
    def revision_and_current_state(self) -> None:
        m = self.model
        assert self.store.rev() == m.rev
        assert self.store.first_rev() == m.compact
        r = self.store.read().range(b"", b"", RangeOptions())
        assert r.kvs == list(m.at(m.rev).values())
        assert self.lessor.item_map == m.leases()


KVStoreMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_kvstore_model = KVStoreMachine.TestCase
