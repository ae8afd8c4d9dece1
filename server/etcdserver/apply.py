"""Applying replicated requests to the state machine (etcd's server/etcdserver/apply).

Every member applies the same entries in the same order and must reach the same state, so
nothing here may read the clock, the network or member-local configuration other than what
the entry carries.

OPS is the dispatch table: one Op per InternalRaftRequest field, declaring which refusals of
etcd's applier chain (uber_applier.go: corrupt -> capped -> auth -> quota -> backend) apply to
it. Applier.apply() runs them in that order around the op's handler:

    admin    the entry's user needs the root role                  authApplierV3.Apply
    corrupt  refused while a CORRUPT alarm is raised               applierV3Corrupt
    capped   refused while a NOSPACE alarm is raised, if it costs   applierV3Capped
    auth     the entry's user may do this, at its auth revision    authApplierV3.<Op>
    quota    applied, then answered NoSpaceError if it did not fit  quotaApplierV3

apply() is the one place every entry passes through: a per-op hook (fault injection, metrics)
or a batched apply belongs there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import Message

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth import apply_auth
from server.auth.apply_auth import AuthCheck, LeasedKeys
from server.auth.store import AuthInfo, AuthStore
from server.errors import EtcdError
from server.etcdserver import txn
from server.etcdserver.alarm import AlarmStore
from server.etcdserver.errors import CorruptError, NoSpaceError
from server.etcdserver.quota import cost
from server.mvcc.kv import KV, RangeOptions
from server.mvcc.kvstore import Compaction

__all__ = ["OPS", "Applier", "ApplierOptions", "ApplyResult", "Op"]


@dataclass(slots=True)
class ApplyResult:
    resp: Message | None = None
    err: Exception | None = None
    # a scheduled physical compaction the client may wait for
    compaction: Compaction | None = None


# -- what the applier needs (etcd's ApplierOptions) ----------------------------------------------


class CompactableKV(KV, Protocol):
    def compact(self, rev: int) -> Compaction: ...


class LeaseStore(Protocol):
    def grant(self, lease_id: int, ttl: int) -> Any: ...

    def revoke(self, lease_id: int) -> None: ...

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> None: ...

    def lookup(self, lease_id: int) -> LeasedKeys | None: ...


class Quota(Protocol):
    def fits(self, cost: int) -> bool: ...


class ClusterStore(Protocol):
    def update_attributes(self, member_id: int, name: str, client_urls: tuple[str, ...]) -> None: ...

    def set_version(self, version: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ApplierOptions:
    kv: CompactableKV
    lessor: LeaseStore
    alarms: AlarmStore
    auth: AuthStore
    quota: Quota
    cluster: ClusterStore
    # the index of the last entry applied before this one (a simple token's index)
    consistent_index: Callable[[], int]
    on_alarm_raised: Callable[[pb.AlarmMember], None] = lambda m: None


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    run: Callable[[Applier, Any, bool], ApplyResult]
    admin: bool = False
    corrupt: bool = False
    capped: bool = False
    auth: AuthCheck | None = None
    quota: bool = False


class Applier:
    """Applies one InternalRaftRequest; errors are results, not exceptions, because the entry
    is applied (or refused) identically on every member."""

    def __init__(self, opts: ApplierOptions) -> None:
        self._o = opts

    def apply(self, r: rpb.InternalRaftRequest, *, need_result: bool = True) -> ApplyResult:
        """need_result: someone on this member waits for the answer (else a txn's ranges are
        not executed)."""
        which = _which(r)
        op = OPS.get(which)
        if op is None:
            return ApplyResult(err=ValueError(f"unknown internal raft request {which!r}"))
        o = self._o
        req = getattr(r, which)
        try:
            auth = o.auth
            ai = AuthInfo(r.header.username, r.header.auth_revision) if auth.enabled else None
            if op.admin and ai is not None:
                auth.is_admin_permitted(ai)
            if op.corrupt and o.alarms.active(pb.CORRUPT):
                raise CorruptError()
            c = cost(req) if op.capped or op.quota else 0
            if op.capped and c > 0 and o.alarms.active(pb.NOSPACE):
                raise NoSpaceError()
            if op.auth is not None and ai is not None:
                op.auth(auth, ai, o.lessor, req)
            fits = not op.quota or o.quota.fits(c)
            result = op.run(self, req, need_result)
        except EtcdError as e:
            return ApplyResult(err=e)
        if not fits and result.err is None:
            result.err = NoSpaceError()
        return result

    # -- KV -----------------------------------------------------------------------------------

    def _put(self, p: pb.PutRequest, need_result: bool) -> ApplyResult:
        return ApplyResult(txn.put(self._o.kv, self._o.lessor, p))

    def _delete_range(self, dr: pb.DeleteRangeRequest, need_result: bool) -> ApplyResult:
        return ApplyResult(txn.delete_range(self._o.kv, dr))

    def _txn(self, t: pb.TxnRequest, need_result: bool) -> ApplyResult:
        return ApplyResult(txn.txn(self._o.kv, self._o.lessor, t, skip_ranges=not need_result))

    def _range(self, r: pb.RangeRequest, need_result: bool) -> ApplyResult:
        return ApplyResult(txn.range_(self._o.kv.read(), r))

    def _compaction(self, c: pb.CompactionRequest, need_result: bool) -> ApplyResult:
        kv = self._o.kv
        job = kv.compact(c.revision)
        resp = pb.CompactionResponse()
        resp.header.revision = kv.read().range(b"compaction", None, RangeOptions()).rev
        return ApplyResult(resp, compaction=job)

    # -- leases -------------------------------------------------------------------------------

    def _lease_grant(self, lg: pb.LeaseGrantRequest, need_result: bool) -> ApplyResult:
        lease = self._o.lessor.grant(lg.ID, lg.TTL)
        resp = pb.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)
        resp.header.revision = self._o.kv.rev()
        return ApplyResult(resp)

    def _lease_revoke(self, lr: pb.LeaseRevokeRequest, need_result: bool) -> ApplyResult:
        self._o.lessor.revoke(lr.ID)
        resp = pb.LeaseRevokeResponse()
        resp.header.revision = self._o.kv.rev()
        return ApplyResult(resp)

    def _lease_checkpoint(self, lc: pb.LeaseCheckpointRequest, need_result: bool) -> ApplyResult:
        for cp in lc.checkpoints:
            self._o.lessor.checkpoint(cp.ID, cp.remaining_TTL)
        resp = pb.LeaseCheckpointResponse()
        resp.header.revision = self._o.kv.rev()
        return ApplyResult(resp)

    # -- alarms and cluster -------------------------------------------------------------------

    def _alarm(self, ar: pb.AlarmRequest, need_result: bool) -> ApplyResult:
        store = self._o.alarms
        resp = pb.AlarmResponse()
        if ar.action == pb.AlarmRequest.GET:
            resp.alarms.extend(store.get(ar.alarm))
        elif ar.action == pb.AlarmRequest.ACTIVATE:
            if ar.alarm != pb.NONE:
                m = store.activate(ar.memberID, ar.alarm)
                if m is not None:
                    resp.alarms.append(m)
                    self._o.on_alarm_raised(m)
        elif ar.action == pb.AlarmRequest.DEACTIVATE:
            m = store.deactivate(ar.memberID, ar.alarm)
            if m is not None:
                resp.alarms.append(m)
        resp.header.revision = self._o.kv.rev()
        return ApplyResult(resp)

    def _cluster_member_attr_set(self, r: Any, need_result: bool) -> ApplyResult:
        attrs = r.member_attributes
        self._o.cluster.update_attributes(r.member_ID, attrs.name, tuple(attrs.client_urls))
        return ApplyResult(rpb.EmptyResponse())

    def _cluster_version_set(self, r: Any, need_result: bool) -> ApplyResult:
        self._o.cluster.set_version(r.ver)
        return ApplyResult(rpb.EmptyResponse())

    # -- auth (the store answers; the table's checks ran before) -------------------------------

    def _authenticate(self, r: rpb.InternalAuthenticateRequest, need_result: bool) -> ApplyResult:
        # the consistent index (the previous entry's) becomes the token's index, as in etcd
        return ApplyResult(self._o.auth.authenticate(r.name, r.simple_token, self._o.consistent_index()))

    def _auth_enable(self, r: pb.AuthEnableRequest, need_result: bool) -> ApplyResult:
        self._o.auth.auth_enable()
        return ApplyResult(pb.AuthEnableResponse())

    def _auth_disable(self, r: pb.AuthDisableRequest, need_result: bool) -> ApplyResult:
        self._o.auth.auth_disable()
        return ApplyResult(pb.AuthDisableResponse())

    def _auth_status(self, r: pb.AuthStatusRequest, need_result: bool) -> ApplyResult:
        s = self._o.auth
        return ApplyResult(pb.AuthStatusResponse(enabled=s.enabled, authRevision=s.revision))


def _store(method: Callable[[AuthStore, Any], Message]) -> Callable[[Applier, Any, bool], ApplyResult]:
    """An op answered by one AuthStore method."""

    def run(a: Applier, req: Any, need_result: bool) -> ApplyResult:
        return ApplyResult(method(a._o.auth, req))

    return run


A = Applier
S = AuthStore

# InternalRaftRequest field -> its handler and refusals; fields not here (downgrade_info_set)
# are answered with an error on every member
OPS: dict[str, Op] = {
    "range": Op(A._range, corrupt=True, auth=apply_auth.check_range),
    "put": Op(A._put, corrupt=True, capped=True, auth=apply_auth.check_put, quota=True),
    "delete_range": Op(A._delete_range, corrupt=True, auth=apply_auth.check_delete_range),
    "txn": Op(A._txn, corrupt=True, capped=True, auth=apply_auth.check_txn, quota=True),
    "compaction": Op(A._compaction, corrupt=True),
    "lease_grant": Op(A._lease_grant, corrupt=True, capped=True, quota=True),
    "lease_revoke": Op(A._lease_revoke, corrupt=True, auth=apply_auth.check_lease_revoke),
    "lease_checkpoint": Op(A._lease_checkpoint),
    "alarm": Op(A._alarm),
    "authenticate": Op(A._authenticate),
    "auth_enable": Op(A._auth_enable, admin=True),
    "auth_disable": Op(A._auth_disable, admin=True),
    "auth_status": Op(A._auth_status, admin=True),
    "auth_user_add": Op(_store(S.user_add), admin=True),
    "auth_user_delete": Op(_store(S.user_delete), admin=True),
    "auth_user_get": Op(_store(S.user_get), auth=apply_auth.check_user_get),
    "auth_user_change_password": Op(_store(S.user_change_password), admin=True),
    "auth_user_grant_role": Op(_store(S.user_grant_role), admin=True),
    "auth_user_revoke_role": Op(_store(S.user_revoke_role), admin=True),
    "auth_user_list": Op(_store(S.user_list), admin=True),
    "auth_role_add": Op(_store(S.role_add), admin=True),
    "auth_role_delete": Op(_store(S.role_delete), admin=True),
    "auth_role_get": Op(_store(S.role_get), auth=apply_auth.check_role_get),
    "auth_role_grant_permission": Op(_store(S.role_grant_permission), admin=True),
    "auth_role_revoke_permission": Op(_store(S.role_revoke_permission), admin=True),
    "auth_role_list": Op(_store(S.role_list), admin=True),
    "cluster_member_attr_set": Op(A._cluster_member_attr_set),
    "cluster_version_set": Op(A._cluster_version_set),
}


def _which(r: rpb.InternalRaftRequest) -> str:
    for field, _ in r.ListFields():
        if field.name not in ("header", "ID"):
            return str(field.name)
    return "empty"
