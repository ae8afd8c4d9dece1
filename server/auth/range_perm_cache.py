"""Merged key permissions per user (etcd's server/auth/range_perm_cache.go).

A user's roles' permissions are merged into two interval sets, read and write. Keys compare as
bytes, except that the empty byte string is the largest element: an open-ended range
[key, "\\0") becomes [key, b"") (etcd's BytesAffineComparable), and a single key k is the
interval [k, k + b"\\0").

A request over [key, range_end) is permitted when the intervals intersecting it, taken in order
of their starts, are contiguous and cover it (etcd's IntervalTree.Contains); a single-key
request when any interval contains the key (Intersects).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from server.api.authpb import auth_pb2 as authpb

__all__ = [
    "IntervalSet",
    "UnifiedRangePermissions",
    "check_key_interval",
    "check_key_point",
    "is_open_ended",
    "is_valid_permission_range",
    "merged_perms",
]

READ = authpb.Permission.READ
WRITE = authpb.Permission.WRITE
READWRITE = authpb.Permission.READWRITE


def affine_cmp(a: bytes, b: bytes) -> int:
    """bytes order with b"" as the largest element."""
    if not a:
        return 0 if not b else 1
    if not b:
        return -1
    return (a > b) - (a < b)


def ivl_cmp(a: tuple[bytes, bytes], b: tuple[bytes, bytes]) -> int:
    """etcd's Interval.Compare: -1 if a is left of b, 1 if right of it, 0 if they overlap."""
    if affine_cmp(a[0], b[0]) < 0 and affine_cmp(a[1], b[0]) <= 0:
        return -1
    if affine_cmp(a[0], b[1]) >= 0:
        return 1
    return 0


def point(key: bytes) -> tuple[bytes, bytes]:
    return key, key + b"\x00"


@dataclass
class IntervalSet:
    """The intervals of an etcd interval tree, visited in order of their starts."""

    intervals: list[tuple[bytes, bytes]] = field(default_factory=list)

    def insert(self, ivl: tuple[bytes, bytes]) -> None:
        # equal starts keep insertion order, as the tree's in-order walk does
        idx = len(self.intervals)
        for i, cur in enumerate(self.intervals):
            if affine_cmp(ivl[0], cur[0]) < 0:
                idx = i
                break
        self.intervals.insert(idx, ivl)

    def _visit(self, ivl: tuple[bytes, bytes]) -> Iterable[tuple[bytes, bytes]]:
        return (cur for cur in self.intervals if ivl_cmp(ivl, cur) == 0)

    def intersects(self, ivl: tuple[bytes, bytes]) -> bool:
        return any(True for _ in self._visit(ivl))

    def contains(self, ivl: tuple[bytes, bytes]) -> bool:
        min_begin: bytes | None = None
        max_end = b""
        for cur in self._visit(ivl):
            if min_begin is None:
                min_begin, max_end = cur
                continue
            if affine_cmp(max_end, cur[0]) < 0:
                return False
            if affine_cmp(cur[1], max_end) > 0:
                max_end = cur[1]
        return (
            min_begin is not None and affine_cmp(max_end, ivl[1]) >= 0 and affine_cmp(min_begin, ivl[0]) <= 0
        )


@dataclass
class UnifiedRangePermissions:
    read: IntervalSet = field(default_factory=IntervalSet)
    write: IntervalSet = field(default_factory=IntervalSet)


def merged_perms(user: authpb.User, get_role: Callable[[str], authpb.Role | None]) -> UnifiedRangePermissions:
    perms = UnifiedRangePermissions()
    for role_name in user.roles:
        role = get_role(role_name)
        if role is None:
            continue
        for perm in role.keyPermission:
            range_end = b"" if is_open_ended(perm.range_end) else perm.range_end
            ivl = (perm.key, range_end) if perm.range_end else point(perm.key)
            if perm.permType in (READWRITE, READ):
                perms.read.insert(ivl)
            if perm.permType in (READWRITE, WRITE):
                perms.write.insert(ivl)
    return perms


def check_key_interval(perms: UnifiedRangePermissions, key: bytes, range_end: bytes, perm_type: int) -> bool:
    if is_open_ended(range_end):
        range_end = b""
    ivls = perms.read if perm_type == READ else perms.write
    return ivls.contains((key, range_end))


def check_key_point(perms: UnifiedRangePermissions, key: bytes, perm_type: int) -> bool:
    ivls = perms.read if perm_type == READ else perms.write
    return ivls.intersects(point(key))


def is_open_ended(range_end: bytes) -> bool:
    return range_end == b"\x00"


def is_valid_permission_range(key: bytes, range_end: bytes) -> bool:
    if not key:
        return False
    if not range_end:
        return True
    if affine_cmp(key, range_end) < 0:
        return True
    return is_open_ended(range_end)
