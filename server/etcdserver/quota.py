"""The backend quota (etcd's server/storage/quota.go).

Cost of a request: a Put costs KV_OVERHEAD + len(key) + len(value); a Txn the larger of its two
branches (nested puts counted); a LeaseGrant LEASE_OVERHEAD; anything else 0. A request fits
when the database file size (physical, so compaction alone does not help: defrag does) plus its
cost stays below the quota.
"""

from __future__ import annotations

from server.api.etcdserverpb import rpc_pb2 as pb
from server.backend.backend import Backend

__all__ = ["DEFAULT_QUOTA_BYTES", "MAX_QUOTA_BYTES", "BackendQuota"]

DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024
MAX_QUOTA_BYTES = 8 * 1024 * 1024 * 1024
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64


def cost_put(r: pb.PutRequest) -> int:
    return KV_OVERHEAD + len(r.key) + len(r.value)


def cost_txn(r: pb.TxnRequest) -> int:
    def branch(ops: list[pb.RequestOp]) -> int:
        total = 0
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_put":
                total += cost_put(op.request_put)
            elif which == "request_txn":
                total += cost_txn(op.request_txn)
        return total

    return max(branch(list(r.success)), branch(list(r.failure)))


def cost(req: object) -> int:
    if isinstance(req, pb.PutRequest):
        return cost_put(req)
    if isinstance(req, pb.TxnRequest):
        return cost_txn(req)
    if isinstance(req, pb.LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0


class BackendQuota:
    def __init__(self, backend: Backend, quota_bytes: int) -> None:
        self._backend = backend
        if quota_bytes == 0:
            quota_bytes = DEFAULT_QUOTA_BYTES
        # negative: no quota
        self.quota_bytes = quota_bytes

    def fits(self, cost: int) -> bool:
        """A request of this cost (see cost()) keeps the database below the quota."""
        if cost == 0 or self.quota_bytes < 0:
            return True
        return self._backend.size() + cost < self.quota_bytes
