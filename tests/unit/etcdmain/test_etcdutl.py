"""`petcd snapshot restore|status` in process: restores of etcd-format and older petcd files,
the refusals of bad files (one line, exit 1, nothing left behind, also when a restore fails half
way), --bump-revision. The same commands against etcdutl and real etcd are in
tests/integration/test_snapshot_interop.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.api.leasepb.lease_pb2 import Lease
from server.api.mvccpb.kv_pb2 import KeyValue
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey
from server.etcdutl import main, status
from server.mvcc.revision import Revision, rev_to_bytes
from tests.unit.backend.test_bbolt import Tree, write_db

REVISIONS = 40


def etcd_tree(revisions: int = REVISIONS) -> dict[bytes, Tree]:
    """What etcd stores after `revisions` puts of keys k0..k9 and a delete of k3 (no lease)."""
    key: Tree = {}
    for rev in range(2, revisions + 1):
        k = b"k%d" % (rev % 10)
        key[rev_to_bytes(Revision(rev, 0))] = KeyValue(
            key=k, create_revision=rev, mod_revision=rev, version=1, value=b"v%d" % rev
        ).SerializeToString()
    key[rev_to_bytes(Revision(revisions + 1, 0), tombstone=True)] = KeyValue(key=b"k3").SerializeToString()
    return {
        b"key": key,
        b"lease": {(5).to_bytes(8, "big"): Lease(ID=5, TTL=60).SerializeToString()},
        b"members": {
            b"8e9e05c52164694d": b'{"id":10276657743932975437,"peerURLs":["http://localhost:2380"]}'
        },
        b"meta": {
            b"consistent_index": (99).to_bytes(8, "big"),
            b"storageVersion": b"3.6.0",
            b"term": (3).to_bytes(8, "big"),
        },
    }


def snapshot_file(path: Path, tree: dict[bytes, Tree] | None = None) -> Path:
    write_db(path.with_suffix(".raw"), etcd_tree() if tree is None else tree)
    db = path.with_suffix(".raw").read_bytes()
    path.write_bytes(db + hashlib.sha256(db).digest())
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_restore_an_etcd_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = snapshot_file(tmp_path / "s.db")
    rc, out, err = run(capsys, "restore", str(snap), "--data-dir", str(tmp_path / "r"), "--name", "m1",
                       "--initial-cluster", "m1=http://127.0.0.1:2380", "--initial-advertise-peer-urls",
                       "http://127.0.0.1:2380")  # fmt: skip
    assert (rc, err) == (0, ""), err
    assert out.startswith(f"restored snapshot {snap} into {tmp_path / 'r'} (member m1, cluster ")
    be = LmdbBackend(str(tmp_path / "r" / "member" / "snap" / "db"))
    try:
        tx = be.read_tx()
        assert dict(tx.iterate(Bucket.KEY)) == etcd_tree()[b"key"]
        assert tx.get(Bucket.LEASE, (5).to_bytes(8, "big")) is not None
        # the old raft position and membership are gone, the new member is recorded
        assert (
            tx.get(Bucket.META, MetaKey.CONSISTENT_INDEX) is None
            and tx.get(Bucket.META, MetaKey.TERM) is None
        )
        members = [json.loads(v) for _, v in tx.iterate(Bucket.MEMBERS)]
        assert [m["peerURLs"] for m in members] == [["http://127.0.0.1:2380"]]
    finally:
        be.close()
    assert sorted(os.listdir(tmp_path)) == ["r", "s.db", "s.raw"]


def test_restore_into_an_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    assert (
        run(capsys, "restore", str(snapshot_file(tmp_path / "s.db")), "--data-dir", str(tmp_path / "r"))[0]
        == 0
    )
    assert (tmp_path / "r" / "member" / "snap" / "db").exists()


def test_restore_a_petcd_lmdb_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Snapshot files petcd wrote before it wrote etcd's format (LMDB) still restore."""
    be = LmdbBackend(str(tmp_path / "old" / "db"), fsync=False)
    for k, v in etcd_tree()[b"key"].items():
        assert isinstance(v, bytes)
        be.batch_tx().put(Bucket.KEY, k, v)
    be.force_commit()
    buf = io.BytesIO()
    be.snapshot_to(buf)
    be.close()
    (tmp_path / "old.db").write_bytes(buf.getvalue() + hashlib.sha256(buf.getvalue()).digest())
    assert run(capsys, "status", str(tmp_path / "old.db"))[1].split(", ")[1:3] == [str(REVISIONS + 1), "9"]
    assert run(capsys, "restore", str(tmp_path / "old.db"), "--data-dir", str(tmp_path / "r"))[0] == 0
    be = LmdbBackend(str(tmp_path / "r" / "member" / "snap" / "db"))
    assert dict(be.read_tx().iterate(Bucket.KEY)) == etcd_tree()[b"key"]
    be.close()


def test_status(tmp_path: Path) -> None:
    st = status(str(snapshot_file(tmp_path / "s.db")))
    assert (st.revision, st.total_key, st.version) == (REVISIONS + 1, 9, "3.6.0")  # k0..k9 but k3
    assert st.total_size == os.path.getsize(tmp_path / "s.db") - 32


def _flip(*offsets: int) -> Callable[[bytes], bytes]:
    def flip(raw: bytes) -> bytes:
        out = bytearray(raw)
        for i in offsets:
            out[i if i >= 0 else len(raw) + i] ^= 0x5A
        return bytes(out)

    return flip


# id, damage, restore flags, restore's error, status's error ("": status reads the file fine,
# as etcdutl's, which checks neither the digest nor its presence)
BAD: list[tuple[str, Callable[[bytes], bytes], tuple[str, ...], str, str]] = [
    ("empty", lambda raw: b"", (), "is empty", "is empty"),
    (
        "not-a-snapshot",
        lambda raw: b"#!/bin/sh\necho hi\n" * 100,
        (),
        "is not a snapshot",
        "is not a snapshot",
    ),
    ("truncated", lambda raw: raw[: len(raw) // 2], (), "no SHA-256 at its end", "truncated"),
    (
        "truncated-skip-hash",
        lambda raw: raw[: len(raw) // 2 + 512 * 3],
        ("--skip-hash-check",),
        "truncated",
        "truncated",
    ),
    ("flipped-byte", _flip(-100), (), "is corrupt", ""),
    ("wrong-hash", lambda raw: raw[:-32] + hashlib.sha256(b"other").digest(), (), "is corrupt", ""),
    ("missing-hash", lambda raw: raw[:-32], (), "snapshot missing hash but --skip-hash-check=false", ""),
    (
        "damaged-metas-skip-hash",
        _flip(16 + 40, 4096 + 16 + 40),
        ("--skip-hash-check",),
        "checksum",
        "checksum",
    ),
]


@pytest.mark.parametrize(
    ("make", "flags", "restore_error", "status_error"), [pytest.param(*rest, id=i) for i, *rest in BAD]
)
def test_bad_files_one_line_exit_1_nothing_left(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[bytes], bytes],
    flags: tuple[str, ...],
    restore_error: str,
    status_error: str,
) -> None:
    good = snapshot_file(tmp_path / "good.db").read_bytes()
    bad = tmp_path / "bad.db"
    bad.write_bytes(make(good))
    before = sorted(os.listdir(tmp_path))
    rc, out, err = run(capsys, "restore", str(bad), "--data-dir", str(tmp_path / "r"), *flags)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and restore_error in err, err
    assert sorted(os.listdir(tmp_path)) == before  # no data dir, no temporary directory
    rc, out, err = run(capsys, "status", str(bad))
    if status_error:
        assert rc == 1 and out == "" and err.count("\n") == 1 and status_error in err, err
    else:
        assert rc == 0 and err == ""


def test_a_restore_failing_half_way_removes_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key bucket is copied before a damaged lease record (the next bucket) stops it."""
    tree = etcd_tree()
    tree[b"lease"] = {**tree[b"lease"], (6).to_bytes(8, "big"): b"\xff\xff\xff"}  # not a Lease record
    snap = snapshot_file(tmp_path / "s.db", tree)
    rc, _, err = run(capsys, "restore", str(snap), "--data-dir", str(tmp_path / "r"))
    assert rc == 1 and "bucket lease" in err and "damaged record" in err, err
    assert sorted(os.listdir(tmp_path)) == ["s.db", "s.raw"]


def test_a_non_empty_data_dir_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "mine").write_text("keep")
    rc, _, err = run(
        capsys, "restore", str(snapshot_file(tmp_path / "s.db")), "--data-dir", str(tmp_path / "r")
    )
    assert rc == 1 and "not empty" in err
    assert os.listdir(tmp_path / "r") == ["mine"]


def test_bump_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = str(snapshot_file(tmp_path / "s.db"))
    rc, _, err = run(capsys, "restore", snap, "--data-dir", str(tmp_path / "r"), "--bump-revision", "1000")
    assert rc == 1 and err == "Error: --mark-compacted required if --revision-bump > 0\n"
    rc, _, err = run(capsys, "restore", snap, "--data-dir", str(tmp_path / "r"), "--bump-revision", "1000",
                     "--mark-compacted")  # fmt: skip
    assert rc == 0, err
    be = LmdbBackend(str(tmp_path / "r" / "member" / "snap" / "db"))
    marker = rev_to_bytes(Revision(REVISIONS + 1 + 1000, 0))
    assert list(be.read_tx().iterate(Bucket.KEY))[-1] == (marker, b"")
    assert be.read_tx().get(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV) == marker
    be.close()


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "frobnicate")[0] == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=3))
def test_random_damage_with_skip_hash_check(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], flips: list[tuple[int, int]]
) -> None:
    """Flipped bytes the digest would have caught, restored anyway: a restore or a status either
    works or ends in one line and exit 1, leaving nothing behind; never a traceback."""
    d = tmp_path_factory.mktemp("flip")
    raw = bytearray(snapshot_file(d / "s.db").read_bytes()[:-32])
    for at, xor in flips:
        raw[at % len(raw)] ^= xor
    (d / "s.db").write_bytes(bytes(raw))
    for argv in (
        ["status", str(d / "s.db")],
        ["restore", str(d / "s.db"), "--data-dir", str(d / "r"), "--skip-hash-check"],
    ):
        rc, out, err = run(capsys, *argv)
        assert rc in (0, 1)
        if rc == 1:
            assert err.count("\n") == 1 and err.startswith("Error: ") and out == "", err
    assert set(os.listdir(d)) <= {"s.db", "s.raw", "r"}
