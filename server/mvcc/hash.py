"""HashKV: a CRC-32C over the key bucket up to a revision (etcd's hash.go), comparable between
members and with etcd for the same history.

Hashed: the bucket name, then each (revision key, record) in revision order with revision
<= rev, skipping revisions <= the compaction revision that compaction drops (those not in
keep) and a tombstone exactly at the compaction revision (older etcd versions delete it).
"""

from __future__ import annotations

from dataclasses import dataclass

import crc32c

from server.backend.backend import ReadTx
from server.backend.schema import Bucket
from server.mvcc.revision import Revision, bytes_to_rev, is_tombstone

__all__ = ["KVHasher", "KeyValueHash", "hash_by_rev"]


@dataclass(frozen=True, slots=True)
class KeyValueHash:
    hash: int
    compact_revision: int
    revision: int


class KVHasher:
    def __init__(self, compact_rev: int, rev: int, keep: set[Revision]) -> None:
        self._crc = crc32c.crc32c(Bucket.KEY.bucket_name)
        self._compact_rev = compact_rev
        self._rev = rev
        self._keep = keep

    def write_key_value(self, raw_rev: bytes, value: bytes) -> None:
        kr = bytes_to_rev(raw_rev)
        if kr.main > self._rev:
            return
        if kr.main <= self._compact_rev and self._keep and kr not in self._keep:
            return
        if kr.main == self._compact_rev and is_tombstone(raw_rev):
            return
        self._crc = crc32c.crc32c(value, crc32c.crc32c(raw_rev, self._crc))

    def hash(self) -> KeyValueHash:
        return KeyValueHash(self._crc, self._compact_rev, self._rev)


def hash_by_rev(tx: ReadTx, compact_rev: int, rev: int, keep: set[Revision]) -> KeyValueHash:
    h = KVHasher(compact_rev, rev, keep)
    for raw_rev, value in tx.iterate(Bucket.KEY):
        if bytes_to_rev(raw_rev).main > rev:
            break
        h.write_key_value(raw_rev, value)
    return h.hash()
