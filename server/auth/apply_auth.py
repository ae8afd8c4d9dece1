"""Permission checks of replicated requests (etcd's etcdserver/apply/apply_auth.go).

Every member re-checks an entry against the user name and auth revision the proposer put in
its header, so a permission revoked while the write was in flight is honoured on every member
alike. Each check has one shape, `(store, ai, leases, request) -> None` (raising an AuthError),
so the applier's table can name it per operation; read-only requests served without the log
use the same checks (check_txn is etcd's CheckTxnAuth).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol

from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.errors import AuthError
from server.auth.store import AuthInfo, AuthStore

__all__ = [
    "AuthCheck",
    "LeaseLookup",
    "check_delete_range",
    "check_lease_revoke",
    "check_put",
    "check_range",
    "check_role_get",
    "check_txn",
    "check_user_get",
]


class LeasedKeys(Protocol):
    @property
    def keys(self) -> Collection[bytes]: ...


class LeaseLookup(Protocol):
    """What auth needs from the lessor: the keys attached to a lease."""

    def lookup(self, lease_id: int) -> LeasedKeys | None: ...


AuthCheck = Callable[[AuthStore, AuthInfo, LeaseLookup, Any], None]


def _check_lease_puts(store: AuthStore, ai: AuthInfo | None, leases: LeaseLookup, lease_id: int) -> None:
    """A user may attach keys to, or revoke, a lease only if it may write every key on it."""
    lease = leases.lookup(lease_id)
    if lease is None:
        return
    try:
        store.is_admin_permitted(ai)
        return
    except AuthError:
        pass
    for key in sorted(lease.keys):
        store.is_put_permitted(ai, key)


def check_put(store: AuthStore, ai: AuthInfo | None, leases: LeaseLookup, r: pb.PutRequest) -> None:
    store.is_put_permitted(ai, r.key)
    _check_lease_puts(store, ai, leases, r.lease)
    if r.prev_kv:
        store.is_range_permitted(ai, r.key, b"")


def check_range(store: AuthStore, ai: AuthInfo | None, leases: LeaseLookup, r: pb.RangeRequest) -> None:
    store.is_range_permitted(ai, r.key, r.range_end)


def check_delete_range(
    store: AuthStore, ai: AuthInfo | None, leases: LeaseLookup, r: pb.DeleteRangeRequest
) -> None:
    store.is_delete_range_permitted(ai, r.key, r.range_end)
    if r.prev_kv:
        store.is_range_permitted(ai, r.key, r.range_end)


def check_txn(store: AuthStore, ai: AuthInfo | None, leases: LeaseLookup, t: pb.TxnRequest) -> None:
    for c in t.compare:
        store.is_range_permitted(ai, c.key, c.range_end)
    for ops in (t.success, t.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_range":
                store.is_range_permitted(ai, op.request_range.key, op.request_range.range_end)
            elif which == "request_put":
                check_put(store, ai, leases, op.request_put)
            elif which == "request_delete_range":
                d = op.request_delete_range
                if d.prev_kv:
                    store.is_range_permitted(ai, d.key, d.range_end)
                store.is_delete_range_permitted(ai, d.key, d.range_end)
            elif which == "request_txn":
                check_txn(store, ai, leases, op.request_txn)


def check_lease_revoke(
    store: AuthStore, ai: AuthInfo | None, leases: LeaseLookup, r: pb.LeaseRevokeRequest
) -> None:
    _check_lease_puts(store, ai, leases, r.ID)


def check_user_get(store: AuthStore, ai: AuthInfo, leases: LeaseLookup, r: pb.AuthUserGetRequest) -> None:
    """Admins, and users reading themselves."""
    try:
        store.is_admin_permitted(ai)
    except AuthError:
        if r.name != ai.username:
            raise


def check_role_get(store: AuthStore, ai: AuthInfo, leases: LeaseLookup, r: pb.AuthRoleGetRequest) -> None:
    """Admins, and users holding the role."""
    try:
        store.is_admin_permitted(ai)
    except AuthError:
        if not store.has_role(ai.username, r.role):
            raise
