"""bbolt reader and writer: round trips of random trees (nested and inline buckets, overflow
pages, page sizes), refusals of damaged files (each damage made by hand, and random byte flips),
writer misuse, and bounded memory. bbolt's own binary reads our files in
tests/integration/test_bbolt_peer.py."""

from __future__ import annotations

import contextlib
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.backend.bbolt import (
    BboltError,
    BboltReader,
    BboltWriter,
    BucketHandle,
    BucketWriter,
    fnv1a64,
)

Tree = dict[bytes, Union[bytes, "Tree"]]


def write_tree(bucket: BucketWriter, tree: Tree) -> None:
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            with bucket.bucket(key) as sub:
                write_tree(sub, value)
        else:
            bucket.put(key, value)


def write_db(path: Path, buckets: dict[bytes, Tree], page_size: int = 4096, txid: int = 7) -> int:
    with open(path, "wb") as f:
        w = BboltWriter(f, page_size=page_size, txid=txid)
        for name in sorted(buckets):
            with w.bucket(name) as b:
                write_tree(b, buckets[name])
        return w.close()


def read_tree(db: BboltReader, bucket: BucketHandle | None = None) -> Tree:
    return {k: v if isinstance(v, bytes) else read_tree(db, v) for k, v in db.items(bucket)}


def read_db(path: Path) -> Tree:
    with BboltReader.open(path) as db:
        return read_tree(db)


# -- round trips ----------------------------------------------------------------------------------


def _long(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """Long byte strings from little entropy: a short random stem repeated."""
    return st.builds(
        lambda stem, n: (stem * (n // len(stem) + 1))[:n],
        st.binary(min_size=1, max_size=8),
        st.integers(min_size, max_size),
    )


keys = st.binary(min_size=1, max_size=24) | _long(100, 600)
values = st.binary(max_size=64) | _long(1000, 9000)
trees: st.SearchStrategy[Tree] = st.recursive(
    st.dictionaries(keys, values, max_size=40),
    lambda children: st.dictionaries(keys, values | children, max_size=12),
    max_leaves=120,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    buckets=st.dictionaries(st.binary(min_size=1, max_size=12), trees, max_size=6),
    page_size=st.sampled_from([1024, 4096, 16384]),
)
def test_written_trees_read_back(
    tmp_path_factory: pytest.TempPathFactory, buckets: dict[bytes, Tree], page_size: int
) -> None:
    path = tmp_path_factory.mktemp("bbolt") / "db"
    size = write_db(path, buckets, page_size)
    assert os.path.getsize(path) == size and size % page_size == 0
    with BboltReader.open(path) as db:
        assert db.page_size == page_size and db.txid == 7 and db.size == size
        assert read_tree(db) == buckets


@pytest.mark.parametrize("n", [0, 1, 2, 3, 500, 20_000])
def test_bucket_sizes(tmp_path: Path, n: int) -> None:
    """Empty, one-key, one-leaf and multi-level buckets."""
    tree: Tree = {i.to_bytes(8, "big") + b"_": os.urandom(i % 300) for i in range(n)}
    write_db(tmp_path / "db", {b"b": tree})
    assert read_db(tmp_path / "db") == {b"b": tree}


def test_large_values_span_overflow_pages(tmp_path: Path) -> None:
    tree: Tree = {b"a": b"x" * 5, b"big": os.urandom(1_600_000), b"c": os.urandom(70_000), b"d": b""}
    write_db(tmp_path / "db", {b"b": tree})
    assert read_db(tmp_path / "db") == {b"b": tree}


def test_small_buckets_are_inline_as_bbolt_writes_them(tmp_path: Path) -> None:
    """A bucket whose leaf fits in a quarter page and holds no bucket is stored in its parent."""
    write_db(
        tmp_path / "db",
        {
            b"empty": {},
            b"small": {b"k": b"v"},
            b"large": {b"k": b"v" * 2000},
            b"nested": {b"s": {b"k": b"v"}},
        },
    )
    with BboltReader.open(tmp_path / "db") as db:
        handles = {k: v for k, v in db.items() if isinstance(v, BucketHandle)}
        nested = dict(db.items(handles[b"nested"]))[b"s"]
        assert isinstance(nested, BucketHandle)
    assert handles[b"empty"].root == 0 and handles[b"empty"].inline is not None
    assert handles[b"small"].root == 0
    assert handles[b"large"].root != 0 and handles[b"large"].inline is None
    assert handles[b"nested"].root != 0  # holds a bucket
    assert nested.root == 0


def test_layout_is_bbolt_write_to(tmp_path: Path) -> None:
    """Meta 0 carries txid, meta 1 txid - 1, no freelist; the file is high-water mark x page size."""
    size = write_db(tmp_path / "db", {b"b": {b"k": b"v"}}, txid=9)
    raw = (tmp_path / "db").read_bytes()
    for pgid, txid in ((0, 9), (1, 8)):
        off = pgid * 4096
        page_id, flags = struct.unpack_from("<QH", raw, off)
        meta = raw[off + 16 : off + 16 + 56]
        magic, version, page_size, _, _, _, freelist, hwm, mtxid = struct.unpack("<IIIIQQQQQ", meta)
        assert (page_id, flags, magic, version, page_size) == (pgid, 0x04, 0xED0CDAED, 2, 4096)
        assert (freelist, hwm * 4096, mtxid) == (2**64 - 1, size, txid)
        assert struct.unpack_from("<Q", raw, off + 72)[0] == fnv1a64(meta)


def test_fnv1a64_matches_go() -> None:
    # Go: fnv.New64a() of "" and of "a"
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C


# -- writer misuse --------------------------------------------------------------------------------


def test_writer_refuses_misuse(tmp_path: Path) -> None:
    with open(tmp_path / "db", "wb") as f:
        w = BboltWriter(f)
        b = w.bucket(b"b")
        b.put(b"k2", b"v")
        for bad in (b"k2", b"k1", b""):
            with pytest.raises(BboltError):
                b.put(bad, b"v")
        with pytest.raises(BboltError, match="exceeds"):
            b.put(b"k" * 40_000, b"v")
        sub = b.bucket(b"s")
        with pytest.raises(BboltError, match="still open"):
            b.put(b"t", b"v")
        sub.close()
        b.put(b"t", b"v")
        b.close()
        with pytest.raises(BboltError, match="closed"):
            b.put(b"u", b"v")
        with pytest.raises(BboltError, match="not after"):
            w.bucket(b"a")
        w.close()
        with pytest.raises(BboltError, match="closed"):
            w.close()
    with open(tmp_path / "x", "wb") as f, pytest.raises(ValueError):
        BboltWriter(f, page_size=3000)


# -- damaged files ----------------------------------------------------------------------------------


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _branch_root(path: Path) -> int:
    """The root page of bucket b"b" (a branch page in the fixture below)."""
    with BboltReader.open(path) as db:
        handle = dict(db.items())[b"b"]
        assert isinstance(handle, BucketHandle)
        return handle.root


@pytest.fixture
def deep_db(tmp_path: Path) -> Path:
    """Bucket b"b": 3,000 keys over many leaves under a branch root; bucket b"n": a nested bucket."""
    path = tmp_path / "db"
    tree: Tree = {b"k%05d" % i: b"v" * 50 for i in range(3000)}
    write_db(path, {b"b": tree, b"n": {b"s": {b"k%03d" % i: b"x" * 100 for i in range(100)}}})
    return path


def _set_branch_child(path: Path, pgid: int, index: int, child: int) -> None:
    _patch(path, pgid * 4096 + 16 + 16 * index + 8, struct.pack("<Q", child))


def _first_child(path: Path, pgid: int) -> int:
    raw = path.read_bytes()
    return int(struct.unpack_from("<Q", raw, pgid * 4096 + 16 + 8)[0])


def _damage_loop(path: Path) -> None:
    root = _branch_root(path)
    _set_branch_child(path, root, 1, root)


def _damage_outside(path: Path) -> None:
    _set_branch_child(path, _branch_root(path), 0, 10**6)


def _damage_page_id(path: Path) -> None:
    leaf = _first_child(path, _branch_root(path))
    _patch(path, leaf * 4096, struct.pack("<Q", leaf + 1))


def _damage_page_type(path: Path) -> None:
    leaf = _first_child(path, _branch_root(path))
    _patch(path, leaf * 4096 + 8, struct.pack("<H", 0x10))


def _damage_element(path: Path) -> None:
    leaf = _first_child(path, _branch_root(path))
    _patch(path, leaf * 4096 + 16 + 8, struct.pack("<I", 100_000))  # element 0's ksize


def _damage_order(path: Path) -> None:
    leaf = _first_child(path, _branch_root(path))
    raw = path.read_bytes()
    _, pos, _, _ = struct.unpack_from("<IIII", raw, leaf * 4096 + 16 + 16)  # element 1
    _patch(path, leaf * 4096 + 16 + 16 + pos, b"a")  # its key now sorts before element 0's


def _damage_count(path: Path) -> None:
    leaf = _first_child(path, _branch_root(path))
    _patch(path, leaf * 4096 + 10, struct.pack("<H", 4000))


def _damage_both_metas(path: Path) -> None:
    _patch(path, 16 + 40, b"\xff")
    _patch(path, 4096 + 16 + 40, b"\xff")


def _big_endian(path: Path) -> None:
    for off in (16, 4096 + 16):
        _patch(path, off, struct.pack(">I", 0xED0CDAED))


def _truncate(path: Path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def _version(path: Path) -> None:
    for off in (16, 4096 + 16):
        _patch(path, off + 4, struct.pack("<I", 1))


def _nested_loop(path: Path) -> None:
    """The sub-bucket's header points at its parent's page."""
    with BboltReader.open(path) as db:
        parent = dict(db.items())[b"n"]
        assert isinstance(parent, BucketHandle)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"s", parent.root * 4096 + 32)  # the sub-bucket's key, then its header
    raw[at + 1 : at + 9] = struct.pack("<Q", parent.root)
    path.write_bytes(bytes(raw))


DAMAGES: list[tuple[str, Callable[[Path], None], str]] = [
    ("loop", _damage_loop, "loop"),
    ("nested-loop", _nested_loop, "loop"),
    ("child-outside-file", _damage_outside, "outside the file"),
    ("page-id", _damage_page_id, "header says page"),
    ("page-type", _damage_page_type, "not a branch or leaf"),
    ("element-outside", _damage_element, "points outside the page"),
    ("key-order", _damage_order, "out of order|sorts before"),
    ("count", _damage_count, "do not fit"),
    ("both-metas", _damage_both_metas, "checksum"),
    ("big-endian", _big_endian, "big-endian"),
    ("truncated", _truncate, "truncated"),
    ("version", _version, "version 1"),
]


@pytest.mark.parametrize(("damage", "message"), [pytest.param(d, m, id=i) for i, d, m in DAMAGES])
def test_damaged_files_are_refused(deep_db: Path, damage: Callable[[Path], None], message: str) -> None:
    damage(deep_db)
    with pytest.raises(BboltError, match=message):
        read_db(deep_db)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"\0" * 100, "not a bbolt database"), (os.urandom(8192), "not a bbolt database")],
    ids=["empty", "short", "random"],
)
def test_not_bbolt_files(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(BboltError, match=message):
        BboltReader.open(tmp_path / "f")


def test_one_damaged_meta_falls_back_to_the_other(deep_db: Path) -> None:
    want = read_db(deep_db)
    _patch(deep_db, 16 + 48, b"\x01")  # meta 0's txid: its checksum no longer matches
    with BboltReader.open(deep_db) as db:
        assert db.txid == 6  # meta 1
        assert read_tree(db) == want


@settings(max_examples=150, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4))
def test_random_damage_is_read_or_refused(
    tmp_path_factory: pytest.TempPathFactory, flips: list[tuple[int, int]]
) -> None:
    """Flipped bytes anywhere: the reader returns some tree or raises BboltError, nothing else."""
    path = tmp_path_factory.mktemp("flip") / "db"
    tree: Tree = {b"k%04d" % i: b"v" * (i % 90) for i in range(400)}
    size = write_db(path, {b"a": {b"x": b"y"}, b"b": tree, b"n": {b"s": {b"k": b"v" * 30}, b"t": tree}})
    raw = bytearray(path.read_bytes())
    for at, xor in flips:
        raw[at % size] ^= xor
    path.write_bytes(bytes(raw))
    with contextlib.suppress(BboltError):
        read_db(path)


# -- bounded memory ---------------------------------------------------------------------------------


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """Writing and reading 15 MB holds a few pages, not the data (tracemalloc counts Python's
    allocations, which is where a whole-database buffer would show)."""
    n, value = 50_000, b"v" * 300
    path = tmp_path / "db"
    tracemalloc.start()
    try:
        with open(path, "wb") as f:
            w = BboltWriter(f)
            with w.bucket(b"key") as b:
                for i in range(n):
                    b.put(i.to_bytes(8, "big"), value)
            w.close()
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        count = 0
        with BboltReader.open(path) as db:
            for _, handle in db.items():
                assert isinstance(handle, BucketHandle)
                for _ in db.items(handle):
                    count += 1
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n and os.path.getsize(path) > n * len(value)
    assert write_peak < 2 << 20, f"writer peaked at {write_peak} bytes"
    assert read_peak < 2 << 20, f"reader peaked at {read_peak} bytes"
