"""Merged range permissions (etcd's auth/range_perm_cache_test.go tables, and more)."""

from __future__ import annotations

import pytest

from server.api.authpb import auth_pb2 as authpb
from server.auth.range_perm_cache import (
    IntervalSet,
    check_key_interval,
    check_key_point,
    is_valid_permission_range,
    merged_perms,
)

READ, WRITE, READWRITE = authpb.Permission.READ, authpb.Permission.WRITE, authpb.Permission.READWRITE


def perms_of(*ps: tuple[authpb.Permission.Type.ValueType, bytes, bytes]) -> object:
    role = authpb.Role(
        name=b"r", keyPermission=[authpb.Permission(permType=t, key=k, range_end=e) for t, k, e in ps]
    )
    user = authpb.User(name=b"u", roles=["r"])
    return merged_perms(user, {"r": role}.get)


# (permissions, requested [key, range_end), permitted?) from etcd's TestRangePermission
RANGE_TABLE: list[tuple[list[tuple[bytes, bytes]], bytes, bytes, bool]] = [
    ([(b"a", b"c"), (b"x", b"z")], b"a", b"z", False),
    ([(b"a", b"f"), (b"c", b"d"), (b"f", b"h")], b"a", b"h", True),
    ([(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"a", b"f", True),
    ([(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"a", b"d", True),
    ([(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"b", b"e", True),
    ([(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"a", b"g", False),
    ([(b"a", b"d"), (b"e", b"f")], b"a", b"f", False),
    # open ended: "\0" as range_end
    ([(b"a", b"\x00")], b"a", b"\x00", True),
    ([(b"a", b"\x00")], b"b", b"\x00", True),
    ([(b"a", b"\x00")], b"a", b"z", True),
    ([(b"b", b"\x00")], b"a", b"\x00", False),
    ([(b"a", b"c"), (b"c", b"\x00")], b"a", b"\x00", True),
    ([(b"\x00", b"\x00")], b"\x00", b"\x00", True),
    ([(b"\x00", b"\x00")], b"a", b"b", True),
    # a single-key permission never covers a range
    ([(b"a", b"")], b"a", b"b", False),
    ([(b"a", b""), (b"a\x00", b"b")], b"a", b"b", True),
]


@pytest.mark.parametrize(("granted", "key", "end", "want"), RANGE_TABLE)
def test_range_permission(granted: list[tuple[bytes, bytes]], key: bytes, end: bytes, want: bool) -> None:
    perms = perms_of(*((READ, k, e) for k, e in granted))
    assert check_key_interval(perms, key, end, READ) is want  # type: ignore[arg-type]
    assert check_key_interval(perms, key, end, WRITE) is False  # type: ignore[arg-type]


# etcd's TestKeyPermission
KEY_TABLE: list[tuple[list[tuple[bytes, bytes]], bytes, bool]] = [
    ([(b"a", b"c"), (b"x", b"z")], b"f", False),
    ([(b"a", b"f"), (b"c", b"d"), (b"f", b"h")], b"b", True),
    ([(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"d", True),
    ([(b"a", b"d"), (b"a", b"b"), (b"c", b"f")], b"f", False),
    ([(b"a", b"\x00")], b"zz", True),
    ([(b"k", b"")], b"k", True),
    ([(b"k", b"")], b"k\x00", False),
    ([(b"k", b"")], b"j", False),
]


@pytest.mark.parametrize(("granted", "key", "want"), KEY_TABLE)
def test_key_permission(granted: list[tuple[bytes, bytes]], key: bytes, want: bool) -> None:
    perms = perms_of(*((WRITE, k, e) for k, e in granted))
    assert check_key_point(perms, key, WRITE) is want  # type: ignore[arg-type]
    assert check_key_point(perms, key, READ) is False  # type: ignore[arg-type]


def test_readwrite_grants_both_and_missing_roles_are_skipped() -> None:
    role = authpb.Role(
        name=b"r", keyPermission=[authpb.Permission(permType=READWRITE, key=b"a", range_end=b"b")]
    )
    user = authpb.User(name=b"u", roles=["gone", "r"])
    perms = merged_perms(user, {"r": role}.get)
    assert check_key_point(perms, b"a1", READ) and check_key_point(perms, b"a1", WRITE)


@pytest.mark.parametrize(
    ("key", "end", "valid"),
    [
        (b"a", b"", True),
        (b"a", b"b", True),
        (b"a", b"\x00", True),
        (b"b", b"a", False),
        (b"a", b"a", False),
        (b"", b"a", False),
        (b"\x00", b"\x00", True),
    ],
)
def test_valid_permission_range(key: bytes, end: bytes, valid: bool) -> None:
    assert is_valid_permission_range(key, end) is valid


def test_interval_set_keeps_start_order() -> None:
    s = IntervalSet()
    for ivl in [(b"c", b"d"), (b"a", b""), (b"b", b"c")]:
        s.insert(ivl)
    assert s.intervals == [(b"a", b""), (b"b", b"c"), (b"c", b"d")]
    assert s.contains((b"x", b"")) and s.intersects((b"zz", b"zz\x00"))
