"""Our bbolt files as bbolt itself reads them, and bbolt's files as ours reads them (the real
`bbolt` command from `make peers`, go.etcd.io/bbolt v1.4.3 as in etcd 3.6).

Property: for random bucket trees (binary keys, empty to multi-page values, nested and inline
buckets, several page sizes) written by our writer,
- `bbolt check` finds nothing wrong;
- `bbolt keys` lists every bucket's keys and `bbolt get` returns the values we wrote;
- `bbolt compact` (bbolt reads every bucket, key and value of ours and writes its own file, with
  a freelist and its own node splits and inline buckets) gives a file our reader reads back as
  the same tree.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.backend.bbolt import BboltReader
from tests.harness.paths import peer
from tests.unit.backend.test_bbolt import Tree, _long, read_tree, write_db

pytestmark = pytest.mark.integration


def bbolt(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([peer("bbolt"), *args], capture_output=True, timeout=60)


def bbolt_ok(*args: str | bytes) -> bytes:
    r = bbolt(*args)
    assert r.returncode == 0, f"bbolt {args[0]!r} failed: {r.stderr.decode(errors='replace')}"
    return r.stdout


def hex_lines(out: bytes) -> list[bytes]:
    return [bytes.fromhex(line) for line in out.decode().splitlines()]


# bucket names travel through argv (`bbolt keys PATH BUCKET...`): no NUL bytes there
names = st.binary(min_size=1, max_size=10).filter(lambda b: b"\0" not in b)
keys = st.binary(min_size=1, max_size=20) | _long(200, 500)
values = st.binary(max_size=40) | _long(1500, 12_000)
trees: st.SearchStrategy[Tree] = st.recursive(
    st.dictionaries(keys, values, max_size=60),
    lambda children: st.dictionaries(names, children, max_size=3).flatmap(
        lambda subs: st.dictionaries(keys, values, max_size=30).map(lambda leaves: {**leaves, **subs})
    ),
    max_leaves=6,
)


def check_with_bbolt_keys_and_get(db: Path, tree: Tree, path: list[bytes]) -> int:
    """Compare bucket `path` with bbolt's listing; returns the number of values checked."""
    assert hex_lines(bbolt_ok("keys", "--format", "hex", str(db), *path)) == sorted(tree)
    checked = 0
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            checked += check_with_bbolt_keys_and_get(db, value, [*path, key])
        elif checked < 3 or len(value) > 1000:  # a few small values and every large one
            out = bbolt_ok("get", "--format", "hex", "--parse-format", "hex", str(db), *path, key.hex())
            assert bytes.fromhex(out.decode().strip()) == value
            checked += 1
    return checked


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    buckets=st.dictionaries(names, trees, min_size=1, max_size=4),
    page_size=st.sampled_from([1024, 4096, 8192]),
)
def test_bbolt_reads_what_we_write(
    tmp_path_factory: pytest.TempPathFactory, buckets: dict[bytes, Tree], page_size: int
) -> None:
    d = tmp_path_factory.mktemp("bbolt-peer")
    ours, theirs = d / "ours.db", d / "theirs.db"
    write_db(ours, buckets, page_size)
    assert bbolt_ok("check", str(ours)).strip() == b"OK"
    for name, tree in buckets.items():
        check_with_bbolt_keys_and_get(ours, tree, [name])
    bbolt_ok("compact", "-o", str(theirs), str(ours))
    with BboltReader.open(theirs) as db:
        assert read_tree(db) == buckets


def test_a_bbolt_file_with_a_freelist_and_history(tmp_path: Path) -> None:
    """bbolt's own database after many transactions (free pages listed in a freelist page,
    pages reused out of order) reads back completely: `bbolt bench` writes one."""
    db = tmp_path / "bench.db"
    bbolt_ok(
        "bench",
        "-count",
        "20000",
        "-batch-size",
        "500",
        "-value-size",
        "300",
        "-write-mode",
        "rnd",
        "-no-sync",
        "-work",
        "-path",
        str(db),
    )
    meta0 = db.read_bytes()[16:72]
    freelist = struct.unpack_from("<Q", meta0, 32)[0]
    assert freelist != 2**64 - 1, "bbolt bench wrote no freelist page"
    with BboltReader.open(db) as r:
        tree = read_tree(r)
        assert r.txid > 2
    inspect = bbolt_ok("keys", str(db), "bench")
    keys = len(tree[b"bench"])
    assert len(inspect.splitlines()) == keys
    assert 19_900 < keys <= 20_000  # "rnd" draws 32-bit keys: two of the 20,000 may be equal
