"""Revisions and their 17/18-byte encoding (etcd's revision_test.go and bucket key tests)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from server.mvcc.revision import (
    MARKED_REV_BYTES_LEN,
    REV_BYTES_LEN,
    Revision,
    bytes_to_rev,
    is_tombstone,
    rev_to_bytes,
)

U63 = st.integers(min_value=0, max_value=2**63 - 1)
REVS = st.builds(Revision, U63, U63)


@pytest.mark.parametrize(
    ("rev", "raw"),
    [
        pytest.param(Revision(0, 0), b"\x00" * 8 + b"_" + b"\x00" * 8, id="zero"),
        pytest.param(Revision(1, 0), b"\x00" * 7 + b"\x01_" + b"\x00" * 8, id="main-1"),
        pytest.param(Revision(1, 1), b"\x00" * 7 + b"\x01_" + b"\x00" * 7 + b"\x01", id="main-1-sub-1"),
        pytest.param(
            Revision(0x0102030405060708, 0x1112131415161718),
            bytes(range(1, 9)) + b"_" + bytes(range(0x11, 0x19)),
            id="big-endian",
        ),
        pytest.param(
            Revision(2**63 - 1, 2**63 - 1), b"\x7f" + b"\xff" * 7 + b"_\x7f" + b"\xff" * 7, id="max"
        ),
    ],
)
def test_rev_to_bytes_layout(rev: Revision, raw: bytes) -> None:
    assert rev_to_bytes(rev) == raw
    assert len(raw) == REV_BYTES_LEN
    assert bytes_to_rev(raw) == rev
    assert not is_tombstone(raw)


@pytest.mark.parametrize(
    ("raw", "tombstone"),
    [
        pytest.param(rev_to_bytes(Revision(5, 2)), False, id="plain"),
        pytest.param(rev_to_bytes(Revision(5, 2), tombstone=True), True, id="marked"),
        pytest.param(rev_to_bytes(Revision(5, 2)) + b"x", False, id="other-mark"),
        pytest.param(rev_to_bytes(Revision(5, 2)) + b"tt", False, id="too-long"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_is_tombstone(raw: bytes, tombstone: bool) -> None:
    assert is_tombstone(raw) is tombstone


def test_tombstone_mark_layout() -> None:
    raw = rev_to_bytes(Revision(7, 3), tombstone=True)
    assert len(raw) == MARKED_REV_BYTES_LEN
    assert raw == rev_to_bytes(Revision(7, 3)) + b"t"
    # the mark does not change the revision read back
    assert bytes_to_rev(raw) == Revision(7, 3)


def test_revision_defaults_and_order() -> None:
    assert Revision(3) == Revision(3, 0)
    assert Revision(3, 9) < Revision(4, 0) < Revision(4, 1)


@given(REVS, st.booleans())
def test_round_trip(rev: Revision, tombstone: bool) -> None:
    raw = rev_to_bytes(rev, tombstone=tombstone)
    assert bytes_to_rev(raw) == rev
    assert is_tombstone(raw) is tombstone


@given(REVS, REVS)
def test_byte_order_is_revision_order(a: Revision, b: Revision) -> None:
    ra, rb = rev_to_bytes(a), rev_to_bytes(b)
    assert (ra < rb) == (a < b)
    assert (ra == rb) == (a == b)


@given(REVS, REVS, st.booleans(), st.booleans())
def test_tombstone_mark_keeps_revision_order(a: Revision, b: Revision, ta: bool, tb: bool) -> None:
    """A marked key sorts right after its unmarked twin and before every larger revision, so a
    range scan over the key bucket still visits revisions in order."""
    ra, rb = rev_to_bytes(a, tombstone=ta), rev_to_bytes(b, tombstone=tb)
    if a != b:
        assert (ra < rb) == (a < b)
    else:
        assert (ra < rb) == (not ta and tb)


@given(REVS)
def test_main_prefix_bounds_all_subs(rev: Revision) -> None:
    """The compaction scan uses the 8-byte main prefix of rev+1 as its exclusive end: every key
    of main <= rev (marked or not) sorts below it."""
    if rev.main == 2**63 - 1:
        return
    end = rev_to_bytes(Revision(rev.main + 1, 0))[:8]
    assert rev_to_bytes(rev) < end
    assert rev_to_bytes(rev, tombstone=True) < end
    assert rev_to_bytes(Revision(rev.main + 1, 0)) >= end
