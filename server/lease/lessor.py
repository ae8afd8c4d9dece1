"""Leases (etcd's server/lease/lessor.go).

Grant and revoke are applied on every member in log order (they are proposals); only the
primary lessor (on the leader) tracks expiry times, answers keep-alives and reports expired
leases, which the server then revokes through a proposal. Other lessors keep leases "forever"
until they are promoted.

Invariants:
- A lease is in the lease bucket iff it is in lease_map; its key set is exactly the keys whose
  newest record carries its ID (rebuilt from the key bucket on restart).
- Revoking a lease deletes all its keys in ONE write transaction, in key order, and removes the
  lease record in the same backend batch.
- On promotion every lease gets a fresh TTL (plus `extend`), and expiries are spread so no more
  than 3/4 of LEASE_REVOKE_RATE leases expire per second: a restart or leader change never
  triggers a mass expiry.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from typing import Protocol

from server.api.leasepb.lease_pb2 import Lease as LeasePB
from server.backend.backend import Backend
from server.backend.schema import Bucket
from server.errors import EtcdError
from server.lease.lease_queue import ExpiryQueue

__all__ = [
    "MAX_LEASE_TTL",
    "Lease",
    "LeaseExistsError",
    "LeaseNotFoundError",
    "LeaseTTLTooLargeError",
    "Lessor",
    "NotPrimaryError",
]

NO_LEASE = 0
# etcd's MaxLeaseTTL: 9,000,000,000 seconds
MAX_LEASE_TTL = 9_000_000_000
# expired leases revoked per second at most
LEASE_REVOKE_RATE = 1000
# an expired lease not revoked after this long is reported again
EXPIRED_LEASE_RETRY_INTERVAL = 3.0
FOREVER = math.inf

_ID = struct.Struct(">Q")


class LeaseNotFoundError(EtcdError, LookupError):
    """lease not found"""


class LeaseExistsError(EtcdError):
    """lease already exists"""


class LeaseTTLTooLargeError(EtcdError):
    """too large lease TTL"""


class NotPrimaryError(EtcdError):
    """not a primary lessor"""


class RangeDeleter(Protocol):
    def delete_range(self, key: bytes, end: bytes | None) -> tuple[int, int]: ...

    def end(self) -> None: ...


class Lease:
    __slots__ = ("expiry", "id", "keys", "remaining_ttl", "ttl")

    def __init__(self, lease_id: int, ttl: int) -> None:
        self.id = lease_id
        self.ttl = ttl
        # checkpointed remaining TTL in seconds; 0: none, use ttl
        self.remaining_ttl = 0
        # monotonic time of expiry; FOREVER on a non-primary lessor
        self.expiry = FOREVER
        self.keys: set[bytes] = set()

    def refresh(self, now: float, extend: float) -> None:
        self.expiry = now + extend + (self.remaining_ttl if self.remaining_ttl > 0 else self.ttl)

    def remaining(self, now: float) -> float:
        if self.expiry == FOREVER:
            return float(self.ttl)
        return max(0.0, self.expiry - now)


def _lease_key(lease_id: int) -> bytes:
    return _ID.pack(lease_id & 0xFFFFFFFFFFFFFFFF)


class Lessor:
    """Use Lessor.open(); the constructor does no IO."""

    def __init__(
        self, backend: Backend, *, min_ttl: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._backend = backend
        self._clock = clock
        self.min_ttl = min_ttl
        self.lease_map: dict[int, Lease] = {}
        self._item_map: dict[bytes, int] = {}
        self._queue = ExpiryQueue()
        self._primary = False
        self._range_deleter: Callable[[], RangeDeleter] | None = None

    @classmethod
    def open(cls, backend: Backend, *, min_ttl: int, clock: Callable[[], float] = time.monotonic) -> Lessor:
        """Load the leases from the backend (keys are attached later, by the MVCC restore)."""
        lessor = cls(backend, min_ttl=min_ttl, clock=clock)
        lessor.recover()
        return lessor

    def recover(self) -> None:
        """(Re)load every lease from the backend; keys are attached by the MVCC restore."""
        self.lease_map.clear()
        self._item_map.clear()
        self._queue.clear()
        for _, raw in self._backend.read_tx().iterate(Bucket.LEASE):
            pb = LeasePB.FromString(raw)
            lease = Lease(pb.ID, pb.TTL)
            lease.remaining_ttl = pb.RemainingTTL
            self.lease_map[pb.ID] = lease
        if self._primary:
            self.promote(0.0)

    def set_range_deleter(self, factory: Callable[[], RangeDeleter]) -> None:
        """The write transaction factory revoke() deletes keys with (the watchable store's)."""
        self._range_deleter = factory

    # -- replicated operations (applied on every member) ------------------------------------------

    def grant(self, lease_id: int, ttl: int) -> Lease:
        if lease_id == NO_LEASE:
            raise LeaseNotFoundError()
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        if lease_id in self.lease_map:
            raise LeaseExistsError()
        lease = Lease(lease_id, max(ttl, self.min_ttl))
        if self._primary:
            lease.refresh(self._clock(), 0.0)
            self._queue.register_or_update(lease_id, lease.expiry)
        self.lease_map[lease_id] = lease
        self._persist(lease)
        return lease

    def revoke(self, lease_id: int) -> None:
        lease = self.lease_map.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        if self._range_deleter is None:
            raise AssertionError("lessor has no range deleter")
        txn = self._range_deleter()
        for key in sorted(lease.keys):
            txn.delete_range(key, None)
        self.lease_map.pop(lease_id, None)
        self._queue.unregister(lease_id)
        self._backend.batch_tx().delete(Bucket.LEASE, _lease_key(lease_id))
        txn.end()

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> None:
        lease = self.lease_map.get(lease_id)
        if lease is None:
            return
        lease.remaining_ttl = remaining_ttl
        self._persist(lease)
        if self._primary:
            lease.refresh(self._clock(), 0.0)
            self._queue.register_or_update(lease_id, lease.expiry)

    def _persist(self, lease: Lease) -> None:
        pb = LeasePB(ID=lease.id, TTL=lease.ttl, RemainingTTL=lease.remaining_ttl)
        self._backend.batch_tx().put(Bucket.LEASE, _lease_key(lease.id), pb.SerializeToString())

    # -- primary-only -----------------------------------------------------------------------------

    def renew(self, lease_id: int) -> int:
        """Keep-alive: reset the lease's expiry; returns its TTL."""
        if not self._primary:
            raise NotPrimaryError()
        lease = self.lease_map.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        now = self._clock()
        if lease.expiry <= now:
            # expired, its revocation is on its way
            raise LeaseNotFoundError()
        lease.remaining_ttl = 0
        lease.refresh(now, 0.0)
        self._queue.register_or_update(lease_id, lease.expiry)
        return lease.ttl

    def promote(self, extend: float) -> None:
        self._primary = True
        now = self._clock()
        for lease in self.lease_map.values():
            lease.refresh(now, extend)
            self._queue.register_or_update(lease.id, lease.expiry)
        if len(self.lease_map) < LEASE_REVOKE_RATE:
            return
        leases = sorted(self.lease_map.values(), key=lambda le: le.expiry)
        base_window = leases[0].remaining(now)
        next_window = base_window + 1.0
        expires = 0
        target_per_second = (3 * LEASE_REVOKE_RATE) // 4
        for lease in leases:
            remaining = lease.remaining(now)
            if remaining > next_window:
                base_window = remaining
                next_window = base_window + 1.0
                expires = 1
                continue
            expires += 1
            if expires <= target_per_second:
                continue
            delay = expires / target_per_second - (remaining - base_window)
            next_window = base_window + delay
            lease.refresh(now, delay + extend)
            self._queue.register_or_update(lease.id, lease.expiry)

    def demote(self) -> None:
        self._primary = False
        for lease in self.lease_map.values():
            lease.expiry = FOREVER
        self._queue.clear()

    @property
    def is_primary(self) -> bool:
        return self._primary

    def expired_leases(self, limit: int = LEASE_REVOKE_RATE // 2) -> list[int]:
        """Leases past their expiry, at most limit; each is reported again after
        EXPIRED_LEASE_RETRY_INTERVAL if it has not been revoked by then."""
        if not self._primary:
            return []
        now = self._clock()
        out: list[int] = []
        while len(out) < limit:
            top = self._queue.peek()
            if top is None:
                break
            expiry, lease_id = top
            lease = self.lease_map.get(lease_id)
            if lease is None:
                self._queue.unregister(lease_id)
                continue
            if expiry > now:
                break
            self._queue.register_or_update(lease_id, now + EXPIRED_LEASE_RETRY_INTERVAL)
            out.append(lease_id)
        return out

    # -- queries ----------------------------------------------------------------------------------

    def lookup(self, lease_id: int) -> Lease | None:
        return self.lease_map.get(lease_id)

    def leases(self) -> list[Lease]:
        return sorted(self.lease_map.values(), key=lambda le: le.id)

    def remaining(self, lease: Lease) -> float:
        return lease.remaining(self._clock())

    # -- MVCC's LeaseTracker ----------------------------------------------------------------------

    def get_lease(self, key: bytes) -> int:
        return self._item_map.get(key, NO_LEASE)

    def attach(self, lease_id: int, keys: list[bytes]) -> None:
        lease = self.lease_map.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        for key in keys:
            lease.keys.add(key)
            self._item_map[key] = lease_id

    def detach(self, lease_id: int, keys: list[bytes]) -> None:
        lease = self.lease_map.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        for key in keys:
            lease.keys.discard(key)
            self._item_map.pop(key, None)
