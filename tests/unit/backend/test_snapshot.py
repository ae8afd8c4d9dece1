"""etcd snapshot files: the backend written as etcd's bbolt database (committed data only, etcd's
keys), snapshot files checked (kind, digest), and etcd buckets imported into a backend."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.backend.bbolt import BboltReader, BboltWriter
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey
from server.backend.snapshot import SnapshotError, SnapshotFile, import_buckets, write_etcd_db
from tests.unit.backend.test_bbolt import Tree, read_tree, write_db


@pytest.fixture
def be(tmp_path: Path) -> Iterator[LmdbBackend]:
    b = LmdbBackend(str(tmp_path / "be" / "db"), map_size=1 << 27, fsync=False)
    yield b
    b.close()


def fill(be: LmdbBackend) -> None:
    tx = be.batch_tx()
    for bucket in Bucket:
        tx.put(bucket, b"k-" + bucket.bucket_name, b"v")
    tx.put(Bucket.CLUSTER, b"clusterID", b"\x00" * 8)
    tx.put(Bucket.CLUSTER, b"clusterVersion", b"3.6.0")
    tx.put(Bucket.META, MetaKey.CONSISTENT_INDEX, (7).to_bytes(8, "big"))
    be.force_commit()


def etcd_db(be: LmdbBackend) -> bytes:
    out = io.BytesIO()
    with be.read_committed() as view:
        size = write_etcd_db(view, out, "3.6.0")
    assert size == len(out.getvalue())
    return out.getvalue()


def test_written_as_etcd_buckets(be: LmdbBackend, tmp_path: Path) -> None:
    fill(be)
    (tmp_path / "db").write_bytes(etcd_db(be))
    with BboltReader.open(tmp_path / "db") as db:
        tree = read_tree(db)
    assert list(tree) == sorted(b.bucket_name for b in Bucket)
    assert tree[b"cluster"] == {b"clusterVersion": b"3.6.0", b"k-cluster": b"v"}  # no clusterID
    assert tree[b"meta"] == {
        b"consistent_index": (7).to_bytes(8, "big"),
        b"k-meta": b"v",
        b"storageVersion": b"3.6.0",
    }
    assert tree[b"key"] == {b"k-key": b"v"}


def test_a_stored_storage_version_is_kept(be: LmdbBackend, tmp_path: Path) -> None:
    be.batch_tx().put(Bucket.META, MetaKey.STORAGE_VERSION, b"3.5.0")
    be.force_commit()
    (tmp_path / "db").write_bytes(etcd_db(be))
    with BboltReader.open(tmp_path / "db") as db:
        assert read_tree(db)[b"meta"] == {b"storageVersion": b"3.5.0"}


def test_read_committed_sees_committed_data_only_and_stays_put(be: LmdbBackend, tmp_path: Path) -> None:
    be.batch_tx().put(Bucket.KEY, b"committed", b"1")
    be.force_commit()
    be.batch_tx().put(Bucket.KEY, b"buffered", b"2")
    with be.read_committed() as view:
        be.force_commit()  # commits made while the view is open do not show in it
        be.batch_tx().put(Bucket.KEY, b"later", b"3")
        be.force_commit()
        assert list(view.iterate(Bucket.KEY)) == [(b"committed", b"1")]


# -- snapshot files -------------------------------------------------------------------------------


def snapshot(path: Path, db: bytes, digest: bytes | None = None) -> Path:
    path.write_bytes(db + (hashlib.sha256(db).digest() if digest is None else digest))
    return path


@pytest.fixture
def db_bytes(tmp_path: Path) -> bytes:
    write_db(tmp_path / "plain.db", {b"key": {b"a": b"1"}, b"meta": {}})
    return (tmp_path / "plain.db").read_bytes()


def test_good_file(tmp_path: Path, db_bytes: bytes) -> None:
    snap = SnapshotFile.open(str(snapshot(tmp_path / "s", db_bytes)))
    assert (snap.format, snap.db_size, snap.has_digest) == ("bbolt", len(db_bytes), True)


@pytest.mark.parametrize(
    ("make", "skip", "message"),
    [
        (lambda db: b"", False, "is empty"),
        (lambda db: b"hello\n" * 1000, True, "not a snapshot"),
        (lambda db: db, False, "no SHA-256 at its end"),
        (lambda db: db + b"\0" * 32, False, "is corrupt"),
        (lambda db: db[:100] + b"\xff" + db[101:] + hashlib.sha256(db).digest(), False, "is corrupt"),
    ],
    ids=["empty", "text", "no-digest", "wrong-digest", "flipped-byte"],
)
def test_bad_files(tmp_path: Path, db_bytes: bytes, make: object, skip: bool, message: str) -> None:
    path = tmp_path / "s"
    path.write_bytes(make(db_bytes))  # type: ignore[operator]
    with pytest.raises(SnapshotError, match=message):
        SnapshotFile.open(str(path), skip_hash_check=skip)


def test_skip_hash_check_takes_a_database_without_digest(tmp_path: Path, db_bytes: bytes) -> None:
    path = tmp_path / "db"
    path.write_bytes(db_bytes)
    snap = SnapshotFile.open(str(path), skip_hash_check=True)
    assert (snap.db_size, snap.has_digest) == (len(db_bytes), False)


def test_petcd_lmdb_snapshots_are_recognised(be: LmdbBackend, tmp_path: Path) -> None:
    fill(be)
    out = io.BytesIO()
    be.snapshot_to(out)
    snap = SnapshotFile.open(str(snapshot(tmp_path / "old", out.getvalue())))
    assert snap.format == "lmdb"


# -- import ---------------------------------------------------------------------------------------


def import_tree(tmp_path: Path, be: LmdbBackend, buckets: dict[bytes, Tree]) -> list[bytes]:
    write_db(tmp_path / "in.db", buckets)
    return import_buckets(SnapshotFile.open(str(tmp_path / "in.db"), skip_hash_check=True), be)


def test_import_copies_known_buckets(tmp_path: Path, be: LmdbBackend) -> None:
    pairs = {i.to_bytes(8, "big"): b"v" * i for i in range(300)}
    skipped = import_tree(
        tmp_path, be, {b"key": dict(pairs), b"lease": {b"l": b"x"}, b"future": {b"f": b"1"}}
    )
    assert skipped == [b"future"]
    assert dict(be.read_tx().iterate(Bucket.KEY)) == pairs
    assert list(be.read_tx().iterate(Bucket.LEASE)) == [(b"l", b"x")]


def test_import_commits_in_batches(tmp_path: Path, be: LmdbBackend) -> None:
    write_db(tmp_path / "in.db", {b"key": {i.to_bytes(8, "big"): b"v" * 1000 for i in range(100)}})
    snap = SnapshotFile.open(str(tmp_path / "in.db"), skip_hash_check=True)
    commits = []
    real = be.force_commit

    def counting() -> None:
        commits.append(be.pending())
        real()

    be.force_commit = counting  # type: ignore[method-assign]
    import_buckets(snap, be, batch_bytes=10_000)
    assert len(commits) >= 10 and max(commits) <= 11  # never more than one batch buffered


@pytest.mark.parametrize(
    ("buckets", "message"),
    [
        ({b"key": {b"sub": {b"k": b"v"}}}, "holds a bucket"),
        ({b"authUsers": {b"u" * 600: b"x"}}, "keys of at most 511"),
    ],
    ids=["nested-bucket", "long-key"],
)
def test_import_refuses_what_is_not_etcd_layout(
    tmp_path: Path, be: LmdbBackend, buckets: dict[bytes, Tree], message: str
) -> None:
    with pytest.raises(SnapshotError, match=message):
        import_tree(tmp_path, be, buckets)


def test_import_refuses_a_top_level_value(tmp_path: Path, be: LmdbBackend) -> None:
    with open(tmp_path / "in.db", "wb") as f:
        w = BboltWriter(f)
        w._root.put(b"plain", b"value")  # bbolt's API never does this; a damaged file might
        w.close()
    with pytest.raises(SnapshotError, match="not a bucket"):
        import_buckets(SnapshotFile.open(str(tmp_path / "in.db"), skip_hash_check=True), be)
