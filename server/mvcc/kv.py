"""MVCC's interfaces and values (etcd's server/storage/mvcc/kv.go).

Reading is split from writing and views from transactions, as in etcd:

    ReadView  (first_rev, rev, range)          WriteView (put, delete_range)
    TxnRead   = ReadView + end()
    TxnWrite  = TxnRead + WriteView + changes()
    KV        = read() -> TxnRead, write() -> TxnWrite, rev()   (the store: kvstore.KVStore)

Key ranges: end None is the single key; end b"" is every key >= key; otherwise [key, end).
Stored records are mvccpb.KeyValue, as etcd stores them; nothing here knows about gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.api.mvccpb.kv_pb2 import KeyValue
from server.errors import EtcdError

__all__ = [
    "KV",
    "CompactedError",
    "FutureRevError",
    "KeyValue",
    "LeaseTracker",
    "RangeOptions",
    "RangeResult",
    "ReadView",
    "TxnRead",
    "TxnWrite",
    "WriteView",
]

NO_LEASE = 0


class CompactedError(EtcdError):
    """mvcc: required revision has been compacted"""


class FutureRevError(EtcdError):
    """mvcc: required revision is a future revision"""


@dataclass(frozen=True, slots=True)
class RangeOptions:
    # 0: no limit
    limit: int = 0
    # <= 0: the current revision
    rev: int = 0
    # only count the keys
    count: bool = False


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    # the store's current revision (not the requested one)
    rev: int
    # keys in the range at the requested revision, ignoring the limit
    count: int


class LeaseTracker(Protocol):
    """What MVCC needs from the lessor: which lease a key is attached to, and moving keys."""

    def get_lease(self, key: bytes) -> int: ...

    def attach(self, lease_id: int, keys: list[bytes]) -> None: ...

    def detach(self, lease_id: int, keys: list[bytes]) -> None: ...


class ReadView(Protocol):
    def first_rev(self) -> int:
        """The first revision still readable: the compaction revision (0 before any)."""

    def rev(self) -> int:
        """The revision of the view."""

    def range(self, key: bytes, end: bytes | None, ro: RangeOptions) -> RangeResult:
        """The keys of the range as of ro.rev. Raises FutureRevError when ro.rev > rev() and
        CompactedError when ro.rev < the compaction revision."""


class WriteView(Protocol):
    def put(self, key: bytes, value: bytes, lease: int) -> int:
        """Write a new version of key; returns the revision of the change."""

    def delete_range(self, key: bytes, end: bytes | None) -> tuple[int, int]:
        """Delete the live keys of the range; returns (number deleted, revision)."""


class TxnRead(ReadView, Protocol):
    def end(self) -> None: ...


class TxnWrite(TxnRead, WriteView, Protocol):
    def changes(self) -> list[KeyValue]:
        """The records written so far (a delete is KeyValue(key=...))."""


class KV(Protocol):
    """The store as its users see it: a read view or a write transaction at a time."""

    def read(self) -> TxnRead: ...

    def write(self) -> TxnWrite: ...

    def rev(self) -> int: ...
