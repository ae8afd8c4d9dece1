"""KVStore over a real LmdbBackend: etcd's kv_test.go, kvstore_test.go and
kvstore_compaction_test.go scenarios, table by table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.backend.schema import Bucket, MetaKey
from server.lease.lessor import Lessor
from server.mvcc import kvstore
from server.mvcc.kv import CompactedError, FutureRevError, KeyValue, RangeOptions, RangeResult
from server.mvcc.kvstore import KVStore
from server.mvcc.revision import Revision, rev_to_bytes

from .store_helpers import FakeLessor, StoreEnv, kv

R = Revision


@pytest.fixture
def env(tmp_path: Path) -> Iterator[StoreEnv]:
    e = StoreEnv(tmp_path / "store")
    yield e
    e.close()


@pytest.fixture
def twin_path(tmp_path: Path) -> Path:
    return tmp_path / "twin"


RangeFn = Callable[[KVStore, bytes, bytes | None, RangeOptions], RangeResult]


def normal_range(s: KVStore, key: bytes, end: bytes | None, ro: RangeOptions) -> RangeResult:
    txn = s.read()
    try:
        return txn.range(key, end, ro)
    finally:
        txn.end()


def txn_range(s: KVStore, key: bytes, end: bytes | None, ro: RangeOptions) -> RangeResult:
    """A range inside a write transaction that changes nothing."""
    txn = s.write()
    try:
        return txn.range(key, end, ro)
    finally:
        txn.end()


RANGE_FNS = [pytest.param(normal_range, id="read"), pytest.param(txn_range, id="write-txn")]


def put3(env: StoreEnv) -> list[KeyValue]:
    env.put(b"foo", b"bar", 1)
    env.put(b"foo1", b"bar1", 2)
    env.put(b"foo2", b"bar2", 3)
    return [
        kv(b"foo", b"bar", 2, 2, 1, 1),
        kv(b"foo1", b"bar1", 3, 3, 1, 2),
        kv(b"foo2", b"bar2", 4, 4, 1, 3),
    ]


# -- revisions -------------------------------------------------------------------------------------


def test_store_rev(env: StoreEnv) -> None:
    """TestStoreRev: an empty store is at revision 1; each put adds one."""
    assert env.store.rev() == 1
    assert env.store.first_rev() == -1
    for i in range(1, 4):
        assert env.put(b"foo", b"bar") == i + 1
        assert env.store.rev() == i + 1


def test_write_txn_without_changes_keeps_revision(env: StoreEnv) -> None:
    env.put(b"foo", b"bar")
    txn = env.store.write()
    assert txn.rev() == 2
    assert txn.delete_range(b"nothing", None) == (0, 2)
    assert txn.delete_range(b"a", b"") == (1, 3)
    txn.end()
    assert env.store.rev() == 3
    txn = env.store.write()
    assert txn.delete_range(b"a", b"") == (0, 3)
    txn.end()
    assert env.store.rev() == 3
    txn = env.store.write()
    txn.end()
    assert env.store.rev() == 3


def test_multi_op_txn_one_revision(env: StoreEnv) -> None:
    """All changes of one write transaction share a main revision, with sub revisions 0, 1, ...
    in order; reads inside the transaction see its own writes."""
    env.put(b"gone", b"x")
    txn = env.store.write()
    assert txn.put(b"a", b"1", 0) == 3
    assert txn.rev() == 3
    assert txn.put(b"b", b"2", 0) == 3
    assert txn.delete_range(b"gone", None) == (1, 3)
    r = txn.range(b"a", b"", RangeOptions())
    assert r.rev == 3
    assert [x.key for x in r.kvs] == [b"a", b"b"]
    assert [c.key for c in txn.changes()] == [b"a", b"b", b"gone"]
    # the read view from before the transaction does not see it (the store's rev is unchanged)
    assert env.store.rev() == 2
    txn.end()
    assert env.store.rev() == 3
    tx = env.backend.read_tx()
    assert tx.get(Bucket.KEY, rev_to_bytes(R(3, 0))) is not None
    assert tx.get(Bucket.KEY, rev_to_bytes(R(3, 1))) is not None
    assert (
        tx.get(Bucket.KEY, rev_to_bytes(R(3, 2), tombstone=True)) == KeyValue(key=b"gone").SerializeToString()
    )


def test_read_txn_is_a_snapshot_of_the_revision(env: StoreEnv) -> None:
    env.put(b"a", b"1")
    rtxn = env.store.read()
    env.put(b"a", b"2")
    r = rtxn.range(b"a", None, RangeOptions())
    assert r.rev == 2
    assert r.kvs == [kv(b"a", b"1", 2, 2, 1)]
    with pytest.raises(FutureRevError):
        rtxn.range(b"a", None, RangeOptions(rev=3))
    rtxn.end()


# -- range (TestKVRange, TestKVRangeRev, TestKVRangeBadRev, TestKVRangeLimit) ----------------------

RANGE_TABLE: list[tuple[str, bytes, bytes | None, slice | None]] = [
    ("no-keys", b"doo", b"foo", None),
    ("key-equals-end", b"foo", b"foo", None),
    ("single-missing", b"doo", None, None),
    ("all", b"foo", b"foo3", slice(0, 3)),
    ("partial", b"foo", b"foo1", slice(0, 1)),
    ("single", b"foo", None, slice(0, 1)),
    ("entire-keyspace", b"", b"", slice(0, 3)),
    ("from-key", b"foo1", b"", slice(1, 3)),
]


@pytest.mark.parametrize("fn", RANGE_FNS)
@pytest.mark.parametrize(("key", "end", "want"), [pytest.param(k, e, w, id=i) for i, k, e, w in RANGE_TABLE])
def test_range(env: StoreEnv, fn: RangeFn, key: bytes, end: bytes | None, want: slice | None) -> None:
    kvs = put3(env)
    r = fn(env.store, key, end, RangeOptions())
    assert r.rev == 4
    assert r.kvs == (kvs[want] if want else [])
    assert r.count == len(r.kvs)


@pytest.mark.parametrize("fn", RANGE_FNS)
@pytest.mark.parametrize(
    ("rev", "want"),
    [
        (-1, slice(0, 3)),
        (0, slice(0, 3)),
        (1, slice(0, 0)),
        (2, slice(0, 1)),
        (3, slice(0, 2)),
        (4, slice(0, 3)),
    ],
    ids=lambda v: str(v),
)
def test_range_rev(env: StoreEnv, fn: RangeFn, rev: int, want: slice) -> None:
    kvs = put3(env)
    r = fn(env.store, b"foo", b"foo3", RangeOptions(rev=rev))
    assert r.rev == 4, "the header revision is the store's, not the requested one"
    assert r.kvs == kvs[want]


@pytest.mark.parametrize("fn", RANGE_FNS)
@pytest.mark.parametrize(
    ("rev", "err"),
    [
        (-1, None),
        (0, None),
        (1, CompactedError),
        (2, CompactedError),
        (3, CompactedError),
        (4, None),
        (5, FutureRevError),
        (100, FutureRevError),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_range_bad_rev(env: StoreEnv, fn: RangeFn, rev: int, err: type[Exception] | None) -> None:
    put3(env)
    env.compact(4)
    if err is None:
        fn(env.store, b"foo", b"foo3", RangeOptions(rev=rev))
    else:
        with pytest.raises(err):
            fn(env.store, b"foo", b"foo3", RangeOptions(rev=rev))


@pytest.mark.parametrize("fn", RANGE_FNS)
@pytest.mark.parametrize(
    ("limit", "want"),
    [(-1, 3), (0, 3), (1, 1), (2, 2), (3, 3), (100, 3)],
    ids=lambda v: str(v),
)
def test_range_limit(env: StoreEnv, fn: RangeFn, limit: int, want: int) -> None:
    kvs = put3(env)
    r = fn(env.store, b"foo", b"foo3", RangeOptions(limit=limit))
    assert r.kvs == kvs[:want]
    assert r.rev == 4
    assert r.count == 3, "count ignores the limit"


@pytest.mark.parametrize("fn", RANGE_FNS)
@pytest.mark.parametrize(
    ("key", "end", "rev", "want"),
    [
        (b"foo", b"foo3", 0, 3),
        (b"foo", b"foo3", 2, 1),
        (b"foo", None, 0, 1),
        (b"nope", None, 0, 0),
        (b"", b"", 3, 2),
    ],
    ids=lambda v: repr(v),
)
def test_range_count_only(
    env: StoreEnv, fn: RangeFn, key: bytes, end: bytes | None, rev: int, want: int
) -> None:
    put3(env)
    r = fn(env.store, key, end, RangeOptions(rev=rev, count=True, limit=1))
    assert r.kvs == []
    assert r.count == want
    assert r.rev == 4


# -- put and delete (TestKVPutMultipleTimes, TestKVDeleteRange, ...) -------------------------------


def _put_normal(env: StoreEnv, key: bytes, value: bytes, lease: int) -> int:
    return env.put(key, value, lease)


def _put_txn_read_first(env: StoreEnv, key: bytes, value: bytes, lease: int) -> int:
    txn = env.store.write()
    txn.range(key, None, RangeOptions())
    rev = txn.put(key, value, lease)
    txn.end()
    return rev


PUT_FNS = [pytest.param(_put_normal, id="put"), pytest.param(_put_txn_read_first, id="txn-put")]


@pytest.mark.parametrize("put", PUT_FNS)
def test_put_multiple_times(env: StoreEnv, put: Callable[[StoreEnv, bytes, bytes, int], int]) -> None:
    for i in range(10):
        base = i + 1
        assert put(env, b"foo", b"bar", base) == base + 1
        r = env.range(b"foo")
        assert r.kvs == [kv(b"foo", b"bar", 2, base + 1, base, base)]


@pytest.mark.parametrize(
    ("key", "end", "want_rev", "want_n"),
    [
        pytest.param(b"foo", None, 5, 1, id="single"),
        pytest.param(b"foo", b"foo1", 5, 1, id="range-1"),
        pytest.param(b"foo", b"foo2", 5, 2, id="range-2"),
        pytest.param(b"foo", b"foo3", 5, 3, id="range-3"),
        pytest.param(b"foo3", b"foo8", 4, 0, id="range-none"),
        pytest.param(b"foo3", None, 4, 0, id="single-missing"),
        pytest.param(b"foo1", b"", 5, 2, id="from-key"),
        pytest.param(b"", b"", 5, 3, id="everything"),
    ],
)
@pytest.mark.parametrize("in_txn", [False, True], ids=["delete", "txn-delete"])
def test_delete_range(
    tmp_path: Path, key: bytes, end: bytes | None, want_rev: int, want_n: int, in_txn: bool
) -> None:
    env = StoreEnv(tmp_path)
    try:
        env.put(b"foo", b"bar")
        env.put(b"foo1", b"bar1")
        env.put(b"foo2", b"bar2")
        if in_txn:
            txn = env.store.write()
            txn.range(b"", b"", RangeOptions())
            n, rev = txn.delete_range(key, end)
            txn.end()
        else:
            n, rev = env.delete(key, end)
        assert (n, rev) == (want_n, want_rev)
        assert env.store.rev() == want_rev
        assert env.range(b"", b"").count == 3 - want_n
    finally:
        env.close()


def test_delete_multiple_times(env: StoreEnv) -> None:
    env.put(b"foo", b"bar")
    assert env.delete(b"foo") == (1, 3)
    for _ in range(10):
        assert env.delete(b"foo") == (0, 3)


def test_put_with_same_lease(env: StoreEnv) -> None:
    assert env.put(b"foo", b"bar", 1) == 2
    assert env.put(b"foo", b"bar", 1) == 3
    assert env.range(b"foo").kvs == [kv(b"foo", b"bar", 2, 3, 2, 1)]
    # attached once, never detached
    assert env.lessor.calls == [("attach", 1, (b"foo",))]


def test_lease_attach_detach(env: StoreEnv) -> None:
    env.put(b"foo", b"v", 7)
    env.put(b"foo", b"v", 8)
    env.put(b"foo", b"v", 0)
    env.put(b"bar", b"v", 9)
    env.delete(b"bar")
    env.put(b"baz", b"v", 0)
    env.delete(b"baz")
    assert env.lessor.calls == [
        ("attach", 7, (b"foo",)),
        ("detach", 7, (b"foo",)),
        ("attach", 8, (b"foo",)),
        ("detach", 8, (b"foo",)),
        ("attach", 9, (b"bar",)),
        ("detach", 9, (b"bar",)),
    ]
    assert env.lessor.item_map == {}


def test_lease_of_a_recreated_key_is_not_inherited(env: StoreEnv) -> None:
    """A put of a deleted key does not detach the old lease again (the delete did)."""
    env.put(b"foo", b"v", 7)
    env.delete(b"foo")
    env.lessor.calls.clear()
    env.put(b"foo", b"v", 0)
    assert env.lessor.calls == []


@pytest.mark.parametrize("in_txn", [False, True], ids=["separate-txns", "one-txn"])
def test_operation_in_sequence(env: StoreEnv, in_txn: bool) -> None:
    """TestKVOperationInSequence / TestKVTxnOperationInSequence: put, range, delete, range on one
    key, repeatedly; each put creates the key anew (version 1, create = its revision)."""
    for i in range(10):
        if in_txn:
            base = i + 1
            txn = env.store.write()
            assert txn.put(b"foo", b"bar", 0) == base + 1
            r = txn.range(b"foo", None, RangeOptions(rev=base + 1))
            assert r.kvs == [kv(b"foo", b"bar", base + 1, base + 1, 1)]
            assert r.rev == base + 1
            assert txn.delete_range(b"foo", None) == (1, base + 1)
            r = txn.range(b"foo", None, RangeOptions(rev=base + 1))
            assert r.kvs == []
            assert r.rev == base + 1
            txn.end()
        else:
            base = i * 2 + 1
            assert env.put(b"foo", b"bar") == base + 1
            r = env.range(b"foo", rev=base + 1)
            assert r.kvs == [kv(b"foo", b"bar", base + 1, base + 1, 1)]
            assert r.rev == base + 1
            assert env.delete(b"foo") == (1, base + 2)
            r = env.range(b"foo", rev=base + 2)
            assert r.kvs == []
            assert r.rev == base + 2


def test_version_and_create_revision(env: StoreEnv) -> None:
    env.put(b"k", b"1")  # 2
    env.put(b"k", b"2")  # 3
    env.put(b"other", b"x")  # 4
    env.put(b"k", b"3")  # 5
    env.delete(b"k")  # 6
    env.put(b"k", b"4")  # 7
    env.put(b"k", b"5")  # 8
    history = {
        2: [kv(b"k", b"1", 2, 2, 1)],
        3: [kv(b"k", b"2", 2, 3, 2)],
        4: [kv(b"k", b"2", 2, 3, 2)],
        5: [kv(b"k", b"3", 2, 5, 3)],
        6: [],
        7: [kv(b"k", b"4", 7, 7, 1)],
        8: [kv(b"k", b"5", 7, 8, 2)],
    }
    for rev, want in history.items():
        assert env.range(b"k", rev=rev).kvs == want, rev


# -- compaction (TestKVCompactReserveLastValue, TestKVCompactBad, TestScheduleCompaction) ----------


def test_compact_reserve_last_value(env: StoreEnv) -> None:
    env.put(b"foo", b"bar0", 1)  # 2
    env.put(b"foo", b"bar1", 2)  # 3
    env.delete(b"foo")  # 4
    env.put(b"foo", b"bar2", 3)  # 5
    table = [
        (1, [kv(b"foo", b"bar0", 2, 2, 1, 1)]),
        (2, [kv(b"foo", b"bar1", 2, 3, 2, 2)]),
        (3, []),
        (4, [kv(b"foo", b"bar2", 5, 5, 1, 3)]),
    ]
    for rev, want in table:
        env.compact(rev)
        assert env.range(b"foo", rev=rev + 1).kvs == want, rev


def test_compact_bad(env: StoreEnv) -> None:
    env.put(b"foo", b"bar0")
    env.put(b"foo", b"bar1")
    env.put(b"foo", b"bar2")
    table: list[tuple[int, type[Exception] | None]] = [
        (0, None),
        (1, None),
        (1, CompactedError),
        (0, CompactedError),
        (4, None),
        (4, CompactedError),
        (5, FutureRevError),
        (100, FutureRevError),
    ]
    for rev, err in table:
        if err is None:
            env.compact(rev)
            assert env.store.first_rev() == rev
        else:
            with pytest.raises(err):
                env.store.compact(rev)


class StubIndex:
    """An index whose compaction returns a fixed keep set (etcd's fakeIndex)."""

    def __init__(self, keep: set[Revision]) -> None:
        self.keep_set = keep
        self.compacted: list[int] = []

    def compact(self, rev: int) -> set[Revision]:
        self.compacted.append(rev)
        return set(self.keep_set)

    def keys(self) -> list[bytes]:
        return [b"k"]

    def compact_keys(self, keys: list[bytes], rev: int, available: set[Revision]) -> None:
        available |= self.compact(rev)


@pytest.mark.parametrize(
    ("rev", "keep", "want"),
    [
        pytest.param(1, set(), [2, 3], id="at-1-discard-all"),
        pytest.param(3, set(), [], id="at-3-discard-all"),
        pytest.param(1, {R(1)}, [1, 2, 3], id="at-1-keep-1"),
        pytest.param(3, {R(2), R(3)}, [2, 3], id="at-3-keep-2-3"),
    ],
)
@pytest.mark.parametrize("batch", [1, 2, 3, 1000], ids=lambda b: f"batch-{b}")
def test_schedule_compaction(
    env: StoreEnv,
    monkeypatch: pytest.MonkeyPatch,
    rev: int,
    keep: set[Revision],
    want: list[int],
    batch: int,
) -> None:
    """TestScheduleCompaction: the physical compaction deletes every revision <= rev not in the
    index's keep set, in batches, and records the finished revision."""
    monkeypatch.setattr(kvstore, "COMPACTION_BATCH_LIMIT", batch)
    tx = env.backend.batch_tx()
    for m in (1, 2, 3):
        tx.put(Bucket.KEY, rev_to_bytes(R(m)), b"bar")
    env.store.current_rev = 3
    stub = StubIndex(keep)
    env.store.index = stub  # type: ignore[assignment]
    job = env.store.compact(rev)
    steps = 0
    for _ in job.steps():
        steps += 1
        env.backend.force_commit()
    env.backend.force_commit()
    assert stub.compacted == [rev]
    left = [m for m in (1, 2, 3) if env.backend.read_tx().get(Bucket.KEY, rev_to_bytes(R(m))) is not None]
    assert left == want
    meta = env.backend.read_tx()
    assert meta.get(Bucket.META, MetaKey.FINISHED_COMPACT_REV) == rev_to_bytes(R(rev))
    assert meta.get(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV) == rev_to_bytes(R(rev))
    assert steps == rev // batch, "one pause per full batch"


@pytest.mark.parametrize(
    ("batch_limit", "pauses"),
    [(0, 0), (1, 6), (2, 3), (4, 1), (-1, 0)],  # 0: the default (1000); < 0: no limit, as etcd
)
def test_compaction_batch_limit_flag(env: StoreEnv, batch_limit: int, pauses: int) -> None:
    """--compaction-batch-limit reaches the scheduled compaction: one pause per full batch of
    the 6 revisions read (etcd's scheduleCompaction)."""
    for i in range(6):
        env.put(b"k", str(i).encode())
    job = env.store.compact(7)  # the puts are revisions 2..7
    assert sum(1 for _ in job.steps(batch_limit)) == pauses
    env.backend.force_commit()
    assert env.range(b"k").kvs[0].mod_revision == 7


def test_compact_persists_scheduled_revision_before_any_step(env: StoreEnv) -> None:
    env.put(b"a", b"1")
    env.put(b"a", b"2")
    env.store.compact(2)
    # committed, not just buffered: a crash now resumes the compaction
    assert env.backend.pending() == 0
    assert env.store.first_rev() == 2
    with pytest.raises(CompactedError):
        env.range(b"a", rev=1)
    assert env.range(b"a", rev=2).kvs == [kv(b"a", b"1", 2, 2, 1)]


def test_compaction_yields_between_batches(env: StoreEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads and writes between compaction steps see a consistent store."""
    monkeypatch.setattr(kvstore, "COMPACTION_BATCH_LIMIT", 2)
    for i in range(10):
        env.put(b"k%d" % (i % 3), b"v%d" % i)
    want = {r: env.range(b"", b"", rev=r).kvs for r in range(8, 12)}
    job = env.store.compact(8)
    for _ in job.steps():
        env.backend.force_commit()
        for r, kvs in want.items():
            assert env.range(b"", b"", rev=r).kvs == kvs
        env.put(b"new", b"x")
    env.backend.force_commit()
    for r, kvs in want.items():
        assert env.range(b"", b"", rev=r).kvs == kvs
    # every remaining record is needed by a read at >= 8
    remaining = [k for k, _ in env.backend.read_tx().iterate(Bucket.KEY)]
    # k0, k1, k2 at their newest <= 8 (8, 6, 7), then 9, 10, 11 and the puts made meanwhile
    assert len(remaining) == 3 + 3 + (env.store.rev() - 11)


# -- restore (TestKVRestore, TestRestoreDelete, TestStoreRestore, ...) -----------------------------


def _restore_puts(env: StoreEnv) -> None:
    env.put(b"foo", b"bar0", 1)
    env.put(b"foo", b"bar1", 2)
    env.put(b"foo", b"bar2", 3)
    env.put(b"foo2", b"bar0", 1)


def _restore_put_delete_put(env: StoreEnv) -> None:
    env.put(b"foo", b"bar0", 1)
    env.delete(b"foo")
    env.put(b"foo", b"bar1", 2)


def _restore_compacted(env: StoreEnv) -> None:
    env.put(b"foo", b"bar0", 1)
    env.put(b"foo", b"bar1", 2)
    env.compact(1)


def _restore_only_tombstone_left(env: StoreEnv) -> None:
    for i in range(1, 6):
        env.put(b"foo%d" % i, b"bar%d" % i)
    _, rev = env.delete(b"foo1")
    assert rev == 7
    # after compaction and restore, foo1 only has its tombstone revision
    env.compact(rev)


def _restore_scheduled_not_run(env: StoreEnv) -> None:
    env.put(b"foo", b"bar0", 1)
    env.put(b"foo", b"bar1", 2)
    env.delete(b"foo")
    env.put(b"foo", b"bar2", 0)
    env.store.compact(3)  # scheduled and committed, never run


RESTORE_SCENARIOS = [
    pytest.param(_restore_puts, id="puts"),
    pytest.param(_restore_put_delete_put, id="put-delete-put"),
    pytest.param(_restore_compacted, id="compacted"),
    pytest.param(_restore_only_tombstone_left, id="only-tombstone-left"),
    pytest.param(_restore_scheduled_not_run, id="scheduled-not-run"),
]


def _history(env: StoreEnv) -> list[tuple[str, list[KeyValue] | None]]:
    out: list[tuple[str, list[KeyValue] | None]] = []
    for rev in range(0, 10):
        try:
            r = env.range(b"a", b"z", rev=rev)
            out.append(("ok", r.kvs))
        except CompactedError:
            out.append(("compacted", None))
        except FutureRevError:
            out.append(("future", None))
    return out


@pytest.mark.parametrize("scenario", RESTORE_SCENARIOS)
def test_restore(
    env: StoreEnv, monkeypatch: pytest.MonkeyPatch, scenario: Callable[[StoreEnv], None]
) -> None:
    """TestKVRestore: a store rebuilt from the backend answers every historical read like the
    original, and keeps its current and compaction revisions and lease attachments."""
    monkeypatch.setattr(kvstore, "COMPACTION_BATCH_LIMIT", 5)
    scenario(env)
    before = _history(env)
    rev, first = env.store.rev(), env.store.first_rev()
    leases = dict(env.lessor.item_map)
    resumed = env.reopen()
    if resumed is not None:
        resumed.run()
        env.backend.force_commit()
    assert (env.store.rev(), env.store.first_rev()) == (rev, first)
    assert _history(env) == before
    assert env.lessor.item_map == leases


def test_restore_delete(env: StoreEnv) -> None:
    """TestRestoreDelete with a fixed interleaving instead of math/rand."""
    keys: set[bytes] = set()
    # (i, action): 0 put an older key again, 1 delete the oldest live key, 2 nothing
    actions = [2, 0, 1, 1, 0, 2, 1, 0, 0, 1, 2, 2, 1, 0, 1, 1, 0, 2, 1, 0]
    for i, action in enumerate(actions):
        k = b"foo-%d" % i
        env.put(k, b"bar")
        keys.add(k)
        if action == 0:
            old = b"foo-%d" % (i // 2)
            env.put(old, b"baz")
            keys.add(old)
        elif action == 1:
            victim = sorted(keys)[0]
            env.delete(victim)
            keys.discard(victim)
    env.reopen()
    for i in range(len(actions)):
        k = b"foo-%d" % i
        assert bool(env.range(k).kvs) == (k in keys), k


def test_restore_continue_unfinished_compaction(env: StoreEnv) -> None:
    """TestRestoreContinueUnfinishedCompaction: a scheduled compaction found on restart is
    resumed: reads below it fail and its records are deleted once it runs."""
    env.put(b"foo", b"bar")
    env.put(b"foo", b"bar1")
    env.put(b"foo", b"bar2")
    # write the scheduled compaction, but do not compact
    env.backend.batch_tx().put(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV, rev_to_bytes(R(3)))
    resumed = env.reopen()
    assert resumed is not None
    assert (resumed.rev, resumed.prev_rev) == (3, -1)
    assert env.store.first_rev() == 3
    with pytest.raises(CompactedError):
        env.range(b"foo", rev=2)
    assert env.backend.read_tx().get(Bucket.KEY, rev_to_bytes(R(2))) is not None
    resumed.run()
    env.backend.force_commit()
    assert env.backend.read_tx().get(Bucket.KEY, rev_to_bytes(R(2))) is None
    assert env.range(b"foo", rev=3).kvs == [kv(b"foo", b"bar1", 2, 3, 2)]
    # finished now: the next restart resumes nothing
    assert env.reopen() is None
    assert env.store.first_rev() == 3


def test_compact_all_and_restore(env: StoreEnv) -> None:
    """TestCompactAllAndRestore: compacting at a delete that removed the only key leaves only
    the tombstone; the revision survives a restart."""
    env.put(b"foo", b"bar")
    env.put(b"foo", b"bar1")
    env.put(b"foo", b"bar2")
    env.delete(b"foo")
    rev = env.store.rev()
    env.compact(rev)
    env.reopen()
    assert env.store.rev() == rev
    assert env.range(b"foo").kvs == []
    assert env.put(b"foo", b"again") == rev + 1


def _raw_put(env: StoreEnv, rev: Revision, record: KeyValue, tombstone: bool = False) -> None:
    env.backend.batch_tx().put(Bucket.KEY, rev_to_bytes(rev, tombstone=tombstone), record.SerializeToString())


@pytest.mark.parametrize(
    ("finished", "scheduled", "want_rev", "want_first", "want_resume"),
    [
        pytest.param(3, 3, 5, 3, None, id="finished"),
        pytest.param(None, None, 5, -1, None, id="never-compacted"),
        pytest.param(None, 3, 5, 3, (3, -1), id="scheduled-only"),
        pytest.param(2, 4, 5, 4, (4, 2), id="scheduled-after-finished"),
        pytest.param(None, 7, 7, 7, (7, -1), id="scheduled-beyond-last-record"),
        pytest.param(9, 9, 9, 9, None, id="finished-beyond-last-record"),
    ],
)
def test_restore_from_raw_records(
    env: StoreEnv,
    finished: int | None,
    scheduled: int | None,
    want_rev: int,
    want_first: int,
    want_resume: tuple[int, int] | None,
) -> None:
    """TestStoreRestore: revision bookkeeping from the meta bucket and the key bucket. The
    current revision never goes below a scheduled or finished compaction (etcd issue 17780)."""
    _raw_put(env, R(3), kv(b"foo", b"bar", 4, 4, 1))
    _raw_put(env, R(5), KeyValue(key=b"foo"), tombstone=True)
    if finished is not None:
        env.backend.batch_tx().put(Bucket.META, MetaKey.FINISHED_COMPACT_REV, rev_to_bytes(R(finished)))
    if scheduled is not None:
        env.backend.batch_tx().put(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV, rev_to_bytes(R(scheduled)))
    resumed = env.reopen()
    assert env.store.rev() == want_rev
    assert env.store.first_rev() == want_first
    assert (None if resumed is None else (resumed.rev, resumed.prev_rev)) == want_resume
    ki = env.store.index.key_index(b"foo")
    assert ki is not None
    assert ki.modified == R(5)
    assert [(g.created, g.ver, g.revs) for g in ki.generations] == [(R(4), 2, [R(3), R(5)]), (R(0), 0, [])]


def test_restore_attaches_newest_lease(env: StoreEnv) -> None:
    env.put(b"a", b"1", 5)
    env.put(b"a", b"2", 6)
    env.put(b"b", b"1", 5)
    env.put(b"b", b"2", 0)
    env.put(b"c", b"1", 7)
    env.delete(b"c")
    env.put(b"d", b"1", 8)
    env.reopen()
    assert env.lessor.item_map == {b"a": 6, b"d": 8}


def test_restore_with_real_lessor(tmp_path: Path) -> None:
    """The lessor loads its leases from the same backend; the store re-attaches the keys."""
    env = StoreEnv(tmp_path)
    try:
        lessor = Lessor.open(env.backend, min_ttl=1)
        env.store.lessor = lessor
        lessor.grant(10, 100)
        lessor.grant(11, 100)
        env.put(b"a", b"1", 10)
        env.put(b"b", b"1", 11)
        env.put(b"b", b"2", 10)
        env.backend.close()
        from server.backend.lmdb_backend import LmdbBackend

        env.backend = LmdbBackend(env.path, map_size=1 << 26, fsync=False)
        lessor2 = Lessor.open(env.backend, min_ttl=1)
        store, resumed = KVStore.open(env.backend, lessor2)
        assert resumed is None
        assert lessor2.get_lease(b"a") == 10
        assert lessor2.get_lease(b"b") == 10
        lease10, lease11 = lessor2.lookup(10), lessor2.lookup(11)
        assert lease10 is not None and lease11 is not None
        assert lease10.keys == {b"a", b"b"}
        assert lease11.keys == set()
        assert isinstance(store.lessor, Lessor)
    finally:
        env.close()


def test_fake_lessor_is_a_lease_tracker() -> None:
    from server.mvcc.kv import LeaseTracker

    tracker: LeaseTracker = FakeLessor()
    tracker.attach(1, [b"k"])
    assert tracker.get_lease(b"k") == 1


def test_resumed_compaction_keeps_tombstone_at_compaction_revision(
    env: StoreEnv, twin_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction keeps a tombstone at exactly its revision (a watcher starting there must
    see the delete). When it is interrupted after deleting the key's older records, the restart
    finds only that tombstone for the key; etcd's restore puts such a key into the index
    (keyIndex.restoreTombstone, TestRestoreTombstone) so the resumed compaction still keeps it.

        put a (2), delete a (3), compact(3): batch 1 deletes 2.0 ... crash ... resume

    The backend must end like the uninterrupted compaction's: only the tombstone 3.0(t)."""
    monkeypatch.setattr(kvstore, "COMPACTION_BATCH_LIMIT", 1)
    env.put(b"a", b"1")
    env.delete(b"a")
    job = env.store.compact(3)
    steps = job.steps()
    next(steps)  # the first batch: 2.0 is not in keep and is deleted
    env.backend.force_commit()
    resumed = env.reopen()
    assert resumed is not None
    resumed.run()
    env.backend.force_commit()

    peer = StoreEnv(twin_path)
    try:
        peer.put(b"a", b"1")
        peer.delete(b"a")
        peer.compact(3)
        want = [k for k, _ in peer.backend.read_tx().iterate(Bucket.KEY)]
    finally:
        peer.close()
    assert want == [rev_to_bytes(R(3), tombstone=True)]
    got = [k for k, _ in env.backend.read_tx().iterate(Bucket.KEY)]
    assert got == want
