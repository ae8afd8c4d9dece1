"""Revisions and their on-disk encoding (etcd's server/storage/mvcc/revision.go).

A revision is {main, sub}: main is the store revision of one write transaction, sub the index
of the change inside it. Keys of the `key` bucket are revisions encoded as 17 bytes,

    +----------------------+-----+----------------------+-----+
    | main: 8 bytes, BE    | '_' | sub: 8 bytes, BE     | 't' |   <- 18th byte only for a delete
    +----------------------+-----+----------------------+-----+

so the B+tree's byte order is revision order and "every change in (a, b]" is one range scan.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "MARKED_REV_BYTES_LEN",
    "REV_BYTES_LEN",
    "Revision",
    "bytes_to_rev",
    "is_tombstone",
    "rev_to_bytes",
]

REV_BYTES_LEN = 8 + 1 + 8
MARKED_REV_BYTES_LEN = REV_BYTES_LEN + 1
TOMBSTONE_MARK = b"t"

_REV = struct.Struct(">Qc Q".replace(" ", ""))


class Revision(NamedTuple):
    """Ordered by main, then sub. A tuple (not a dataclass) because the index compares and
    stores millions of them: tuple comparison runs in C."""

    main: int
    sub: int = 0


def rev_to_bytes(rev: Revision, tombstone: bool = False) -> bytes:
    raw = _REV.pack(rev.main, b"_", rev.sub)
    return raw + TOMBSTONE_MARK if tombstone else raw


def bytes_to_rev(raw: bytes) -> Revision:
    main, _, sub = _REV.unpack_from(raw)
    return Revision(main, sub)


def is_tombstone(raw: bytes) -> bool:
    return len(raw) == MARKED_REV_BYTES_LEN and raw[REV_BYTES_LEN:] == TOMBSTONE_MARK
