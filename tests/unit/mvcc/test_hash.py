"""HashKV (etcd's hash.go, hash_test.go, the HashKV parts of kvstore_test.go).

The rules, from etcd's kvHasher:
- the CRC-32C covers the bucket name, then every (revision key, record) with main <= rev;
- records with main <= the compaction revision that compaction drops (not in keep) are skipped,
  unless keep is empty;
- a tombstone exactly at the compaction revision is skipped (older etcd versions deleted it);
so the hash at rev is a function of the logical history and the compaction revision only:
physical compaction, defrag and restarts do not change it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.backend.schema import Bucket
from server.mvcc import kvstore
from server.mvcc.hash import KeyValueHash
from server.mvcc.kv import CompactedError, FutureRevError
from server.mvcc.revision import Revision, rev_to_bytes

from .store_helpers import StoreEnv

COMPACTION_CYCLE = 71  # etcd's testutil.CompactionCycle: a prime, to misalign with everything


def pick_key(i: int) -> bytes:
    """etcd's testutil.PickKey."""
    if i % (COMPACTION_CYCLE * 2) == 30:
        return b"zenek"
    if i % COMPACTION_CYCLE == 30:
        return b"xavery"
    return [b"alice", b"bob", b"celine", b"dominik", b"eve", b"frederica", b"gorge"][i % 7]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[StoreEnv]:
    e = StoreEnv(tmp_path / "a")
    yield e
    e.close()


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[StoreEnv]:
    e = StoreEnv(tmp_path / "b")
    yield e
    e.close()


def put_kvs(env: StoreEnv, rev: int, count: int) -> None:
    for i in range(rev, rev + count + 1):
        env.put(pick_key(i), str(i).encode())


def hash_then_compact(env: StoreEnv, rev: int) -> tuple[int, int, int]:
    if rev == 0:
        rev = env.store.rev()
    h, _ = env.store.hash_by_rev(rev)
    env.compact(rev)
    return h.hash, h.compact_revision, h.revision


# -- golden values from etcd v3.6 (TestHashByRevValue, TestHashByRevValueLastRevision) -------------

HASH_BY_REV_VALUE = [
    (4082599214, -1, 35),
    (2279933401, 35, 106),
    (3284231217, 106, 177),
    (126286495, 177, 248),
    (900108730, 248, 319),
    (2475485232, 319, 390),
    (1226296507, 390, 461),
    (2503661030, 461, 532),
    (4155130747, 532, 603),
    (106915399, 603, 674),
    (406914006, 674, 745),
    (1882211381, 745, 816),
    (806177088, 816, 887),
    (664311366, 887, 958),
    (1496914449, 958, 1029),
    (2434525091, 1029, 1100),
    (3988652253, 1100, 1171),
    (1122462288, 1171, 1242),
    (724436716, 1242, 1883),
]

HASH_BY_REV_VALUE_LAST_REVISION = [
    (1913897190, -1, 73),
    (224860069, 73, 145),
    (1565167519, 145, 217),
    (1566261620, 217, 289),
    (2037173024, 289, 361),
    (691659396, 361, 433),
    (2713730748, 433, 505),
    (3919322507, 505, 577),
    (769967540, 577, 649),
    (2909194793, 649, 721),
    (1576921157, 721, 793),
    (4067701532, 793, 865),
    (2226384237, 865, 937),
    (2923408134, 937, 1009),
    (2680329256, 1009, 1081),
    (1546717673, 1081, 1153),
    (2713657846, 1153, 1225),
    (1046575299, 1225, 1297),
    (2017735779, 1297, 2508),
]


@pytest.mark.parametrize(
    ("last_revision", "want"),
    [
        pytest.param(False, HASH_BY_REV_VALUE, id="mid-cycle"),
        pytest.param(True, HASH_BY_REV_VALUE_LAST_REVISION, id="last-revision"),
    ],
)
def test_hash_by_rev_matches_etcd(
    env: StoreEnv, last_revision: bool, want: list[tuple[int, int, int]]
) -> None:
    """Byte-for-byte the hashes etcd v3.6 computes for the same history: same revision keys,
    same protobuf records, same CRC, same skipping rules."""
    total = 1210
    got: list[tuple[int, int, int]] = []
    rev = 0
    while rev < total:
        put_kvs(env, rev, COMPACTION_CYCLE)
        got.append(hash_then_compact(env, 0 if last_revision else rev + COMPACTION_CYCLE // 2))
        rev += COMPACTION_CYCLE
    put_kvs(env, rev, total)
    got.append(hash_then_compact(env, 0 if last_revision else rev + total // 2))
    assert got == want


# -- TestCompactionHash (testutil.TestCompactionHash) ----------------------------------------------


def test_compaction_hash(env: StoreEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across cycles of puts and deletes: the hash at `stop` before compacting there equals the
    one HashKV answers after the compaction and a defrag (the compaction's recorded hash)."""
    monkeypatch.setattr(kvstore, "COMPACTION_BATCH_LIMIT", 100)
    total = 1210

    def cycle(start: int, stop: int) -> None:
        for i in range(start, stop + 1):
            if i % 67 == 0:
                env.delete(pick_key(i + 83))
            else:
                env.put(pick_key(i), str(i).encode())
        hash1, _ = env.store.hash_by_rev(stop)
        env.compact(stop)
        env.backend.defrag()
        hash2, _ = env.store.hash_by_rev(stop)
        assert hash1 == hash2, stop

    rev = 0
    while rev < total:
        cycle(rev, rev + COMPACTION_CYCLE)
        rev += COMPACTION_CYCLE
    cycle(rev, rev + total)


# -- errors and revision 0 (TestHashKVWithCompactedAndFutureRevisions, TestHashKVZeroRevision) -----


@pytest.fixture
def foo_history(env: StoreEnv) -> StoreEnv:
    for i in range(2, 301):
        env.put(b"foo", b"bar%d" % i)
    env.compact(150)
    return env


@pytest.mark.parametrize(
    ("rev", "err"),
    [
        pytest.param(301, FutureRevError, id="future"),
        pytest.param(149, CompactedError, id="compacted"),
        pytest.param(1, CompactedError, id="compacted-1"),
        pytest.param(150, None, id="at-compaction"),
        pytest.param(300, None, id="current"),
        pytest.param(0, None, id="zero"),
    ],
)
def test_hash_kv_bad_revisions(foo_history: StoreEnv, rev: int, err: type[Exception] | None) -> None:
    if err is None:
        h, current = foo_history.store.hash_by_rev(rev)
        assert current == 300
        assert h.revision == (rev or 300)
    else:
        with pytest.raises(err):
            foo_history.store.hash_by_rev(rev)


def test_hash_kv_zero_revision_is_current(foo_history: StoreEnv) -> None:
    assert foo_history.store.hash_by_rev(300) == foo_history.store.hash_by_rev(0)
    h, _ = foo_history.store.hash_by_rev(0)
    assert (h.compact_revision, h.revision) == (150, 300)


# -- TestHashKVWhenCompacting, without goroutines --------------------------------------------------


def test_hash_kv_when_compacting(env: StoreEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """HashKV(rev) asked between every batch of compactions at rev-30 .. rev: for one compaction
    revision it never changes, however far the physical compaction got."""
    monkeypatch.setattr(kvstore, "COMPACTION_BATCH_LIMIT", 7)
    rev = 300
    for i in range(2, rev + 1):
        env.put(b"foo", b"bar%d" % i)
    seen: dict[int, int] = {}

    def check() -> None:
        h, _ = env.store.hash_by_rev(rev)
        assert h.revision == rev
        assert seen.setdefault(h.compact_revision, h.hash) == h.hash, h.compact_revision

    for c in range(rev - 30, rev + 1):
        check()
        job = env.store.compact(c)
        check()
        for _ in job.steps():
            env.backend.force_commit()
            check()
        env.backend.force_commit()
        check()
    assert len(seen) == 32


# -- same history, same hash; different history, different hash ----------------------------------


def _history(env: StoreEnv, last_value: bytes = b"v") -> None:
    env.put(b"foo0", b"bar0")
    env.put(b"foo1", b"bar0")
    env.put(b"foo0", b"bar1", 3)
    env.delete(b"foo1")
    txn = env.store.write()
    txn.put(b"a", b"1", 0)
    txn.put(b"b", b"2", 0)
    txn.delete_range(b"foo0", None)
    txn.end()
    env.put(b"foo1", last_value)


def test_same_history_same_hash(env: StoreEnv, twin: StoreEnv) -> None:
    """TestKVHash: two stores with the same history agree on HashKV at every revision and on
    the whole-backend hash."""
    _history(env)
    _history(twin)
    for rev in range(1, env.store.rev() + 1):
        assert env.store.hash_by_rev(rev) == twin.store.hash_by_rev(rev), rev
    assert env.backend.hash(lambda b, k: False) == twin.backend.hash(lambda b, k: False)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("value", id="other-value"),
        pytest.param("extra-put", id="extra-put"),
    ],
)
def test_different_history_different_hash(env: StoreEnv, twin: StoreEnv, change: str) -> None:
    _history(env)
    if change == "value":
        _history(twin, last_value=b"w")
    else:
        _history(twin)
        twin.put(b"foo1", b"v")
    assert env.store.hash_by_rev(0)[0].hash != twin.store.hash_by_rev(0)[0].hash
    # revisions before the difference still agree
    last_common = env.store.rev() - (1 if change == "value" else 0)
    assert env.store.hash_by_rev(last_common)[0] == twin.store.hash_by_rev(last_common)[0]


def test_hash_at_rev_ignores_later_writes(env: StoreEnv) -> None:
    _history(env)
    before = [env.store.hash_by_rev(r)[0] for r in range(1, env.store.rev() + 1)]
    env.put(b"later", b"x")
    env.delete(b"a")
    after = [env.store.hash_by_rev(r)[0] for r in range(1, len(before) + 1)]
    assert after == before
    assert env.store.hash_by_rev(0)[0].hash != before[-1].hash


@pytest.mark.parametrize("compact_at", range(1, 8), ids=lambda c: f"compact-{c}")
def test_physical_compaction_does_not_change_hash(env: StoreEnv, twin: StoreEnv, compact_at: int) -> None:
    """For every rev >= the compaction revision, HashKV is the same whether the compaction ran
    to completion (and the store restarted) or is only scheduled."""
    _history(env)
    _history(twin)
    env.compact(compact_at)
    twin.store.compact(compact_at)  # scheduled only: nothing deleted, index not compacted
    # (at compact_at itself env answers the hash its compaction recorded, with the previous
    # compaction revision; see test_compaction_records_hash_of_its_revision)
    for rev in range(compact_at + 1, env.store.rev() + 1):
        assert env.store.hash_by_rev(rev) == twin.store.hash_by_rev(rev), rev
    env.reopen()
    for rev in range(compact_at, env.store.rev() + 1):
        assert env.store.hash_by_rev(rev) == twin.store.hash_by_rev(rev), rev


def test_compaction_records_hash_of_its_revision(env: StoreEnv) -> None:
    """The hash a compaction computes while deleting equals HashKV at its revision computed just
    before, and HashKV at that revision answers it afterwards."""
    _history(env)
    before, _ = env.store.hash_by_rev(5)
    job = env.compact(5)
    assert job.hash == before
    assert env.store.hash_by_rev(5)[0] == before
    assert env.store.compaction_hashes == [before]


def test_tombstone_at_compaction_revision_is_not_hashed(env: StoreEnv, twin: StoreEnv) -> None:
    """etcd <= 3.5.15 deleted a tombstone at the compaction revision; newer versions keep it.
    Both must hash the same."""
    for e in (env, twin):
        e.put(b"a", b"1")
        e.put(b"b", b"1")
        e.delete(b"a")  # 4
        e.put(b"b", b"2")
        e.compact(4)
    tomb = rev_to_bytes(Revision(4, 0), tombstone=True)
    assert twin.backend.read_tx().get(Bucket.KEY, tomb) is not None
    twin.backend.batch_tx().delete(Bucket.KEY, tomb)
    twin.backend.force_commit()
    for rev in (4, 5):
        assert env.store.hash_by_rev(rev)[0].hash == twin.store.hash_by_rev(rev)[0].hash


# -- the stored compaction hashes (TestHasherStore, TestHasherStoreFull) ---------------------------


def test_hash_storage_returns_stored(env: StoreEnv) -> None:
    env.put(b"a", b"1")
    hashes = [KeyValueHash(hash=i, revision=i + 10, compact_revision=i + 100) for i in range(10)]
    for h in hashes:
        env.store.record_compaction_hash(h)
    for want in hashes:
        got, current = env.store.hash_by_rev(want.revision)
        assert got == want
        assert current == 2


def test_hash_storage_full(env: StoreEnv) -> None:
    env.put(b"a", b"1")
    for i in range(10):
        env.store.record_compaction_hash(KeyValueHash(0, 0, 100 + i))
    # older than everything stored: dropped at once
    env.store.record_compaction_hash(KeyValueHash(0, 0, 99))
    assert all(h.revision != 99 for h in env.store.compaction_hashes)
    # newer: stored, the oldest goes
    env.store.record_compaction_hash(KeyValueHash(0, 0, 111))
    assert [h.revision for h in env.store.compaction_hashes] == [*range(101, 110), 111]
    assert len(env.store.compaction_hashes) == 10


# -- interrupted compactions ----------------------------------------------------------------------


def test_resumed_compaction_hash_matches_uninterrupted_peer(
    env: StoreEnv, twin: StoreEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two members with the same history compact at the same revision; one crashes after some
    batches were deleted and committed, and resumes the compaction on restart. The corruption
    check compares HashKV answers with equal (compact_revision, revision): those must be equal.

    etcd (kvstore.go, compact()) only stores a compaction's hash when the previous compaction
    had completed (#15919): a resumed compaction hashes a key bucket it already partly deleted."""
    monkeypatch.setattr(kvstore, "COMPACTION_BATCH_LIMIT", 4)
    for e in (env, twin):
        for i in range(30):
            e.put(b"k%d" % (i % 3), b"v%d" % i)
    compact = 25
    twin.compact(compact)

    job = env.store.compact(compact)
    steps = job.steps()
    next(steps)
    env.backend.force_commit()
    next(steps)
    env.backend.force_commit()
    resumed = env.reopen()  # crash: the deletions of two batches are durable
    assert resumed is not None
    resumed.run()
    env.backend.force_commit()

    mine, _ = env.store.hash_by_rev(compact)
    peer, _ = twin.store.hash_by_rev(compact)
    if (mine.compact_revision, mine.revision) == (peer.compact_revision, peer.revision):
        assert mine.hash == peer.hash, (mine, peer)
    # and from the compaction revision on, both agree anyway
    assert env.store.hash_by_rev(0) == twin.store.hash_by_rev(0)
