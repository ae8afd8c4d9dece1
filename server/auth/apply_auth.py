"""Permission checks at apply time and the auth entries' apply (etcd's
etcdserver/apply/apply_auth.go and the auth part of applierV3backend).

Every member re-checks a write against the user name and auth revision the proposer put in the
entry's header, so a permission revoked while the write was in flight is honoured on every
member alike. Read-only requests served without the log use the same checks
(check_txn is etcd's CheckTxnAuth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.errors import AuthError
from server.auth.store import AuthInfo, AuthStore
from server.lease.lessor import Lessor

__all__ = ["ADMIN_OPS", "AUTH_OPS", "AuthApplier", "check_lease_puts", "check_put", "check_txn"]

# InternalRaftRequest fields that need the root role (etcd's needAdminPermission)
ADMIN_OPS = frozenset(
    {
        "auth_enable",
        "auth_disable",
        "auth_status",
        "auth_user_add",
        "auth_user_delete",
        "auth_user_change_password",
        "auth_user_grant_role",
        "auth_user_revoke_role",
        "auth_role_add",
        "auth_role_grant_permission",
        "auth_role_revoke_permission",
        "auth_role_delete",
        "auth_user_list",
        "auth_role_list",
    }
)
AUTH_OPS = ADMIN_OPS | {"authenticate", "auth_user_get", "auth_role_get"}


def check_lease_puts(store: AuthStore, ai: AuthInfo | None, lessor: Lessor, lease_id: int) -> None:
    """A user may attach keys to, or revoke, a lease only if it may write every key on it."""
    lease = lessor.lookup(lease_id)
    if lease is None:
        return
    try:
        store.is_admin_permitted(ai)
        return
    except AuthError:
        pass
    for key in sorted(lease.keys):
        store.is_put_permitted(ai, key)


def check_put(store: AuthStore, ai: AuthInfo | None, lessor: Lessor, r: pb.PutRequest) -> None:
    store.is_put_permitted(ai, r.key)
    check_lease_puts(store, ai, lessor, r.lease)
    if r.prev_kv:
        store.is_range_permitted(ai, r.key, b"")


def check_delete_range(store: AuthStore, ai: AuthInfo | None, r: pb.DeleteRangeRequest) -> None:
    store.is_delete_range_permitted(ai, r.key, r.range_end)
    if r.prev_kv:
        store.is_range_permitted(ai, r.key, r.range_end)


def check_txn(store: AuthStore, ai: AuthInfo | None, lessor: Lessor, t: pb.TxnRequest) -> None:
    for c in t.compare:
        store.is_range_permitted(ai, c.key, c.range_end)
    for ops in (t.success, t.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_range":
                store.is_range_permitted(ai, op.request_range.key, op.request_range.range_end)
            elif which == "request_put":
                check_put(store, ai, lessor, op.request_put)
            elif which == "request_delete_range":
                d = op.request_delete_range
                if d.prev_kv:
                    store.is_range_permitted(ai, d.key, d.range_end)
                store.is_delete_range_permitted(ai, d.key, d.range_end)
            elif which == "request_txn":
                check_txn(store, ai, lessor, op.request_txn)


class AuthApplier:
    """Holds the auth info of the entry being applied (etcd's authApplierV3)."""

    def __init__(self, store: AuthStore, lessor: Callable[[], Lessor]) -> None:
        self.store = store
        self._lessor = lessor
        self.ai: AuthInfo | None = None

    def begin(self, r: rpb.InternalRaftRequest, which: str) -> None:
        """Take the entry's auth info; refuse an admin entry of a user without the root role."""
        self.ai = AuthInfo(r.header.username, r.header.auth_revision)
        if which in ADMIN_OPS:
            try:
                self.store.is_admin_permitted(self.ai)
            except AuthError:
                self.ai = None
                raise

    def end(self) -> None:
        self.ai = None

    # -- KV and leases --------------------------------------------------------------------------

    def put(self, r: pb.PutRequest) -> None:
        if not self.store.enabled:
            return
        check_put(self.store, self.ai, self._lessor(), r)

    def range(self, r: pb.RangeRequest) -> None:
        if not self.store.enabled:
            return
        self.store.is_range_permitted(self.ai, r.key, r.range_end)

    def delete_range(self, r: pb.DeleteRangeRequest) -> None:
        if not self.store.enabled:
            return
        check_delete_range(self.store, self.ai, r)

    def txn(self, r: pb.TxnRequest) -> None:
        if not self.store.enabled:
            return
        check_txn(self.store, self.ai, self._lessor(), r)

    def lease_revoke(self, r: pb.LeaseRevokeRequest) -> None:
        if not self.store.enabled:
            return
        check_lease_puts(self.store, self.ai, self._lessor(), r.ID)

    # -- the auth entries -----------------------------------------------------------------------

    def apply(self, which: str, req: Any, index: int) -> Message:
        """Apply an auth entry; index is the raft index of the last entry applied before it
        (etcd's consistent index, which becomes the simple token's index)."""
        s = self.store
        if which == "authenticate":
            return s.authenticate(req.name, req.simple_token, index)
        if which == "auth_enable":
            s.auth_enable()
            return pb.AuthEnableResponse()
        if which == "auth_disable":
            s.auth_disable()
            return pb.AuthDisableResponse()
        if which == "auth_status":
            return pb.AuthStatusResponse(enabled=s.enabled, authRevision=s.revision)
        if which == "auth_user_get":
            try:
                s.is_admin_permitted(self.ai)
            except AuthError:
                if self.ai is None or req.name != self.ai.username:
                    raise
            return s.user_get(req)
        if which == "auth_role_get":
            try:
                s.is_admin_permitted(self.ai)
            except AuthError:
                if self.ai is None or not s.has_role(self.ai.username, req.role):
                    raise
            return s.role_get(req)
        handlers: dict[str, Callable[[Any], Message]] = {
            "auth_user_add": s.user_add,
            "auth_user_delete": s.user_delete,
            "auth_user_change_password": s.user_change_password,
            "auth_user_grant_role": s.user_grant_role,
            "auth_user_revoke_role": s.user_revoke_role,
            "auth_user_list": s.user_list,
            "auth_role_add": s.role_add,
            "auth_role_delete": s.role_delete,
            "auth_role_grant_permission": s.role_grant_permission,
            "auth_role_revoke_permission": s.role_revoke_permission,
            "auth_role_list": s.role_list,
        }
        return handlers[which](req)
