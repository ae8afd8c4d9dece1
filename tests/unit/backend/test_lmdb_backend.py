"""LmdbBackend: buffered writes, commits on the writer thread, persistence, defrag, snapshots,
sizes and hashes (etcd's backend_test.go / batch_tx_test.go scenarios, where they apply)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.backend.backend import Backend, BackendError
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket

MAP_SIZE = 1 << 27


def open_backend(path: Path) -> LmdbBackend:
    return LmdbBackend(str(path), map_size=MAP_SIZE, fsync=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "member" / "snap" / "db"


@pytest.fixture
def be(db_path: Path) -> Iterator[LmdbBackend]:
    b = open_backend(db_path)
    yield b
    b.close()


@contextlib.contextmanager
def reopened(path: Path) -> Iterator[LmdbBackend]:
    b = open_backend(path)
    try:
        yield b
    finally:
        b.close()


def dump(b: LmdbBackend, bucket: Bucket) -> list[tuple[bytes, bytes]]:
    return list(b.read_tx().iterate(bucket))


def test_is_a_backend(be: LmdbBackend) -> None:
    backend: Backend = be
    assert backend.pending() == 0


def test_creates_parent_directories(db_path: Path, be: LmdbBackend) -> None:
    assert db_path.is_file()


def test_buckets_start_empty(be: LmdbBackend) -> None:
    for bucket in Bucket:
        assert dump(be, bucket) == []
        assert be.read_tx().get(bucket, b"x") is None


# -- buffered writes -------------------------------------------------------------------------------


def test_buffered_writes_visible_before_commit(be: LmdbBackend) -> None:
    tx = be.batch_tx()
    tx.put(Bucket.KEY, b"k1", b"v1")
    tx.put(Bucket.META, b"m", b"x")
    assert be.pending() == 2
    for view in (be.read_tx(), be.batch_tx()):
        assert view.get(Bucket.KEY, b"k1") == b"v1"
        assert view.get(Bucket.META, b"m") == b"x"
        assert view.get(Bucket.LEASE, b"m") is None, "buckets are separate"
        assert view.range(Bucket.KEY, b"k1") == [(b"k1", b"v1")]
        assert list(view.iterate(Bucket.KEY)) == [(b"k1", b"v1")]


def test_buffered_delete_hides_committed_value(be: LmdbBackend) -> None:
    tx = be.batch_tx()
    for k in (b"a", b"b", b"c"):
        tx.put(Bucket.KEY, k, k.upper())
    be.force_commit()
    tx.delete(Bucket.KEY, b"b")
    tx.put(Bucket.KEY, b"c", b"C2")
    tx.put(Bucket.KEY, b"d", b"D")
    want = [(b"a", b"A"), (b"c", b"C2"), (b"d", b"D")]
    assert dump(be, Bucket.KEY) == want
    assert be.read_tx().get(Bucket.KEY, b"b") is None
    assert be.read_tx().range(Bucket.KEY, b"b") == []
    assert be.read_tx().range(Bucket.KEY, b"a", b"z") == want
    be.force_commit()
    assert dump(be, Bucket.KEY) == want


def test_delete_then_put_again_in_buffer(be: LmdbBackend) -> None:
    tx = be.batch_tx()
    tx.put(Bucket.KEY, b"a", b"1")
    be.force_commit()
    tx.delete(Bucket.KEY, b"a")
    tx.put(Bucket.KEY, b"a", b"2")
    assert be.read_tx().get(Bucket.KEY, b"a") == b"2"
    be.force_commit()
    assert be.read_tx().get(Bucket.KEY, b"a") == b"2"


def test_delete_missing_key_is_harmless(be: LmdbBackend) -> None:
    be.batch_tx().delete(Bucket.KEY, b"nope")
    be.force_commit()
    assert dump(be, Bucket.KEY) == []


@pytest.mark.parametrize(
    ("start", "end", "limit", "want"),
    [
        pytest.param(b"b", None, 0, [b"b"], id="single"),
        pytest.param(b"bb", None, 0, [], id="single-missing"),
        pytest.param(b"b", b"d", 0, [b"b", b"c"], id="half-open"),
        pytest.param(b"a", b"z", 2, [b"a", b"b"], id="limit"),
        pytest.param(b"a", b"z", 0, [b"a", b"b", b"c", b"d", b"e"], id="all"),
        pytest.param(b"", b"\xff", 0, [b"a", b"b", b"c", b"d", b"e"], id="empty-start"),
        pytest.param(b"bb", b"dd", 0, [b"c", b"d"], id="between-keys"),
        pytest.param(b"c", b"c", 0, [], id="empty-range"),
        pytest.param(b"d", b"b", 0, [], id="inverted"),
        pytest.param(b"e", b"f", 1, [b"e"], id="last"),
    ],
)
@pytest.mark.parametrize("committed", ["committed", "buffered", "mixed"])
def test_range(
    be: LmdbBackend, start: bytes, end: bytes | None, limit: int, want: list[bytes], committed: str
) -> None:
    tx = be.batch_tx()
    for i, k in enumerate([b"a", b"b", b"c", b"d", b"e"]):
        tx.put(Bucket.KEY, k, k * 2)
        if committed == "committed" or (committed == "mixed" and i % 2 == 0):
            be.force_commit()
    got = be.read_tx().range(Bucket.KEY, start, end, limit)
    assert got == [(k, k * 2) for k in want]
    assert be.batch_tx().range(Bucket.KEY, start, end, limit) == got


@pytest.mark.parametrize("start", [b"", b"a", b"b", b"bb", b"e", b"f"])
def test_iterate_from(be: LmdbBackend, start: bytes) -> None:
    tx = be.batch_tx()
    for k in (b"a", b"c", b"e"):
        tx.put(Bucket.KEY, k, k)
    be.force_commit()
    for k in (b"b", b"d"):
        tx.put(Bucket.KEY, k, k)
    assert [k for k, _ in be.read_tx().iterate(Bucket.KEY, start)] == [
        k for k in (b"a", b"b", b"c", b"d", b"e") if k >= start
    ]


def test_binary_keys_order(be: LmdbBackend) -> None:
    keys = [b"\x00", b"\x00\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b"\xff\x00"]
    tx = be.batch_tx()
    for k in reversed(keys[::2]):
        tx.put(Bucket.KEY, k, b"v")
    be.force_commit()
    for k in keys[1::2]:
        tx.put(Bucket.KEY, k, b"v")
    assert [k for k, _ in be.read_tx().iterate(Bucket.KEY)] == keys


# -- commits ---------------------------------------------------------------------------------------


def test_commit_future(be: LmdbBackend) -> None:
    be.batch_tx().put(Bucket.KEY, b"a", b"1")
    fut = be.commit()
    assert isinstance(fut, concurrent.futures.Future)
    assert be.pending() == 0
    # readable while and after the commit runs
    assert be.read_tx().get(Bucket.KEY, b"a") == b"1"
    assert fut.result(timeout=30) is None
    assert be.read_tx().get(Bucket.KEY, b"a") == b"1"


def test_commit_with_nothing_pending(be: LmdbBackend) -> None:
    fut = be.commit()
    assert fut.done()
    assert fut.result() is None
    be.batch_tx().put(Bucket.KEY, b"a", b"1")
    f1 = be.commit()
    f2 = be.commit()  # nothing new: waits for the last commit
    f2.result(timeout=30)
    assert f1.done()


def test_many_commits_in_flight(be: LmdbBackend) -> None:
    """Commits queue on the writer thread while the writer goes on; every read sees every
    write so far, whichever buffer or transaction it is in."""
    model: dict[bytes, bytes] = {}
    futures = []
    for i in range(60):
        k = b"k%03d" % i
        be.batch_tx().put(Bucket.KEY, k, b"%d" % i)
        model[k] = b"%d" % i
        if i % 3 == 0:
            victim = b"k%03d" % (i // 2)
            be.batch_tx().delete(Bucket.KEY, victim)
            model.pop(victim, None)
        futures.append(be.commit())
        assert dump(be, Bucket.KEY) == sorted(model.items())
    for f in futures:
        assert f.result(timeout=30) is None
    assert dump(be, Bucket.KEY) == sorted(model.items())


def test_force_commit_makes_writes_durable(db_path: Path) -> None:
    b = open_backend(db_path)
    b.batch_tx().put(Bucket.KEY, b"a", b"1")
    b.force_commit()
    assert b.pending() == 0
    b.close()
    with reopened(db_path) as b:
        assert b.read_tx().get(Bucket.KEY, b"a") == b"1"


def test_reopen_persists_every_bucket(db_path: Path) -> None:
    b = open_backend(db_path)
    for i, bucket in enumerate(Bucket):
        b.batch_tx().put(bucket, b"key", b"value-%d" % i)
    b.force_commit()
    b.batch_tx().put(Bucket.KEY, b"late", b"buffered")  # close commits the buffer
    b.batch_tx().delete(Bucket.META, b"key")
    b.close()
    with reopened(db_path) as b:
        for i, bucket in enumerate(Bucket):
            want = None if bucket is Bucket.META else b"value-%d" % i
            assert b.read_tx().get(bucket, b"key") == want, bucket
        assert b.read_tx().get(Bucket.KEY, b"late") == b"buffered"


# -- sizes, defrag, snapshot, hash -----------------------------------------------------------------


def _fill(b: LmdbBackend, n: int, size: int) -> None:
    tx = b.batch_tx()
    for i in range(n):
        tx.put(Bucket.KEY, b"k%06d" % i, bytes([i % 251]) * size)
        if i % 500 == 499:
            b.force_commit()
    b.force_commit()


def test_size_and_size_in_use(be: LmdbBackend) -> None:
    empty_size, empty_use = be.size(), be.size_in_use()
    assert 0 < empty_use <= empty_size
    _fill(be, 2000, 300)
    assert be.size() > empty_size
    assert empty_use < be.size_in_use() <= be.size()
    tx = be.batch_tx()
    for i in range(0, 2000, 2):
        tx.delete(Bucket.KEY, b"k%06d" % i)
    be.force_commit()
    assert be.size_in_use() <= be.size()


def test_defrag_shrinks_and_keeps_data(be: LmdbBackend, db_path: Path) -> None:
    _fill(be, 3000, 500)
    tx = be.batch_tx()
    for i in range(3000):
        if i % 10:
            tx.delete(Bucket.KEY, b"k%06d" % i)
    be.batch_tx().put(Bucket.LEASE, b"lease", b"l")
    be.force_commit()
    be.batch_tx().put(Bucket.META, b"buffered", b"b")  # defrag commits it first
    before = be.size()
    data = {bucket: dump(be, bucket) for bucket in Bucket}
    be.defrag()
    assert be.size() < before
    assert be.size_in_use() <= be.size()
    assert {bucket: dump(be, bucket) for bucket in Bucket} == data
    assert be.read_tx().get(Bucket.META, b"buffered") == b"b"
    assert not Path(f"{db_path}.defrag.tmp").exists()
    # still writable and durable afterwards
    be.batch_tx().put(Bucket.KEY, b"after", b"defrag")
    be.force_commit()
    assert be.read_tx().get(Bucket.KEY, b"after") == b"defrag"


def test_defrag_then_reopen(db_path: Path) -> None:
    b = open_backend(db_path)
    _fill(b, 500, 100)
    b.defrag()
    b.batch_tx().put(Bucket.KEY, b"z", b"1")
    b.close()
    with reopened(db_path) as b:
        assert len(dump(b, Bucket.KEY)) == 501


def test_snapshot_to_is_an_openable_copy(be: LmdbBackend, tmp_path: Path) -> None:
    _fill(be, 300, 50)
    be.batch_tx().put(Bucket.MEMBERS, b"m1", b"member")
    be.batch_tx().delete(Bucket.KEY, b"k000007")
    be.force_commit()
    buf = io.BytesIO()
    be.snapshot_to(buf)
    copy_path = tmp_path / "restored" / "db"
    copy_path.parent.mkdir()
    copy_path.write_bytes(buf.getvalue())
    # the source keeps changing; the copy does not
    be.batch_tx().put(Bucket.KEY, b"later", b"x")
    be.force_commit()
    c = open_backend(copy_path)
    try:
        for bucket in Bucket:
            src = [kv for kv in dump(be, bucket) if kv[0] != b"later"]
            assert dump(c, bucket) == src, bucket
        assert c.read_tx().get(Bucket.KEY, b"later") is None
        ignore_none = lambda b, k: False  # noqa: E731
        assert c.hash(ignore_none) != be.hash(ignore_none)
    finally:
        c.close()


def test_snapshot_to_file(be: LmdbBackend, tmp_path: Path) -> None:
    be.batch_tx().put(Bucket.KEY, b"a", b"1")
    be.force_commit()
    out = tmp_path / "snap.db"
    with out.open("wb") as f:
        be.snapshot_to(f)
    c = open_backend(out)
    try:
        assert c.read_tx().get(Bucket.KEY, b"a") == b"1"
        assert c.hash(lambda b, k: False) == be.hash(lambda b, k: False)
    finally:
        c.close()


def test_hash(db_path: Path) -> None:
    def no_ignore(bucket: Bucket, key: bytes) -> bool:
        return False

    b = open_backend(db_path)
    empty = b.hash(no_ignore)
    b.batch_tx().put(Bucket.KEY, b"a", b"1")
    b.batch_tx().put(Bucket.META, b"consistent_index", b"\x00" * 8)
    buffered = b.hash(no_ignore)
    assert buffered != empty
    b.force_commit()
    assert b.hash(no_ignore) == buffered, "the hash sees buffered writes like any read"
    b.close()
    with reopened(db_path) as b:
        assert b.hash(no_ignore) == buffered, "stable across reopen"
        ignoring_meta = b.hash(lambda bucket, key: bucket is Bucket.META)
        assert ignoring_meta != buffered
        b.batch_tx().put(Bucket.META, b"consistent_index", b"\x00" * 7 + b"\x01")
        assert b.hash(lambda bucket, key: bucket is Bucket.META) == ignoring_meta
        assert b.hash(no_ignore) != buffered
        b.batch_tx().put(Bucket.KEY, b"a", b"2")
        assert b.hash(lambda bucket, key: bucket is Bucket.META) != ignoring_meta


def test_hash_independent_of_write_order(tmp_path: Path) -> None:
    a = open_backend(tmp_path / "a" / "db")
    b = open_backend(tmp_path / "b" / "db")
    try:
        for k in (b"x", b"y", b"z"):
            a.batch_tx().put(Bucket.AUTH, k, k)
        a.force_commit()
        for k in (b"z", b"x"):
            b.batch_tx().put(Bucket.AUTH, k, k)
        b.force_commit()
        b.batch_tx().put(Bucket.AUTH, b"y", b"y")
        assert a.hash(lambda bk, k: False) == b.hash(lambda bk, k: False)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("committed", [False, True], ids=["buffered", "committed"])
def test_get_empty_key_is_absent(be: LmdbBackend, committed: bool) -> None:
    """ReadTx.get: "the value of key, or None when absent". No key is empty (bbolt's Get
    returns nil for it), so the empty key is absent, also for a single-key range."""
    be.batch_tx().put(Bucket.KEY, b"a", b"1")
    if committed:
        be.force_commit()
    assert be.read_tx().get(Bucket.KEY, b"") is None
    assert be.batch_tx().get(Bucket.KEY, b"") is None
    assert be.read_tx().range(Bucket.KEY, b"", None) == []


class _NoLmdb:
    """Stands for the LMDB environment: any read transaction fails the test."""

    def begin(self, **kw: object) -> None:
        raise AssertionError("read from LMDB")


def test_committed_records_read_again_without_lmdb(be: LmdbBackend) -> None:
    be.batch_tx().put(Bucket.KEY, b"r1", b"v1")
    be.force_commit()
    assert be.read_tx().get(Bucket.KEY, b"r1") == b"v1"  # read back from LMDB once
    env, be._env = be._env, _NoLmdb()
    try:
        assert be.read_tx().get(Bucket.KEY, b"r1") == b"v1"
    finally:
        be._env = env


def test_read_cache_follows_writes_and_deletes(be: LmdbBackend) -> None:
    be.batch_tx().put(Bucket.KEY, b"r1", b"v1")
    be.force_commit()
    stale = be.read_tx()
    assert stale.get(Bucket.KEY, b"r0") is None  # its LMDB transaction begins: r1 is v1
    be.batch_tx().put(Bucket.META, b"m", b"")
    be.commit()  # the buffer it holds is sealed: the delete goes to the next one
    be.batch_tx().delete(Bucket.KEY, b"r1")
    be.force_commit()
    assert stale.get(Bucket.KEY, b"r1") == b"v1", "its LMDB transaction began before the delete"
    assert be.read_tx().get(Bucket.KEY, b"r1") is None, "the stale view did not fill the cache"
    be.batch_tx().put(Bucket.KEY, b"r1", b"v2")
    be.force_commit()
    assert be.read_tx().get(Bucket.KEY, b"r1") == b"v2"
    be.batch_tx().put(Bucket.KEY, b"r1", b"v3")
    be.force_commit()
    assert be.read_tx().get(Bucket.KEY, b"r1") == b"v3"


def test_views_of_other_threads_do_not_use_the_read_cache(be: LmdbBackend) -> None:
    be.batch_tx().put(Bucket.KEY, b"r1", b"v1")
    be.force_commit()
    assert be.read_tx().get(Bucket.KEY, b"r1") == b"v1"
    env, be._env = be._env, _NoLmdb()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, pytest.raises(AssertionError, match="LMDB"):
            pool.submit(lambda: be.read_tx().get(Bucket.KEY, b"r1")).result()
    finally:
        be._env = env


def test_a_cut_short_file_is_an_error_naming_it(db_path: Path) -> None:
    """LMDB would map past the end of a truncated file (SIGBUS); the open checks the length
    against the newest meta page first."""
    b = open_backend(db_path)
    for i in range(5000):
        b.batch_tx().put(Bucket.KEY, b"%08d" % i, b"v" * 200)
    b.force_commit()
    b.close()
    full = db_path.stat().st_size
    with open(db_path, "r+b") as f:
        f.truncate(full // 2)
    with pytest.raises(BackendError, match=rf"{db_path}.*truncated"):
        open_backend(db_path)
    with open(db_path, "r+b") as f:
        f.truncate(full)  # the length back (the pages zeroed): past the check
    with pytest.raises(BackendError, match=str(db_path)):
        b = open_backend(db_path)
        try:
            dump(b, Bucket.KEY)
        finally:
            b.close()


def test_a_cancelled_commit_future_cancels_nothing_else(db_path: Path) -> None:
    """asyncio.wrap_future cancels the future it wraps when its waiter is cancelled (a stopping
    member): the write still happens, other waiters still get its outcome, and a later
    force_commit (close) still waits for it."""
    b = open_backend(db_path)
    gate = concurrent.futures.Future[None]()
    b._writer.submit(gate.result)  # holds the writer thread so the commit stays queued
    b.batch_tx().put(Bucket.KEY, b"a", b"1")
    cancelled, other = b.commit(), b.commit()
    assert cancelled.cancel()
    gate.set_result(None)
    assert other.result(timeout=30) is None
    b.force_commit()
    b.close()
    with reopened(db_path) as b:
        assert b.read_tx().get(Bucket.KEY, b"a") == b"1"
