"""Applying replicated requests to the state machine (etcd's server/etcdserver/apply).

Every member applies the same entries in the same order and must reach the same state, so
nothing here may read the clock, the network or member-local configuration other than what
the entry carries. The applier is a decorator chain like etcd's uber applier:

    capped (NOSPACE alarm active: refuse puts)  or  corrupt (CORRUPT alarm: refuse KV)
      -> auth (server/auth/apply_auth.py: the entry's user may do this, at its auth revision)
        -> quota (a put/txn that does not fit is applied, then answered with NoSpaceError)
          -> backend applier (the real work)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.apply_auth import AUTH_OPS, AuthApplier
from server.errors import EtcdError
from server.etcdserver import txn
from server.etcdserver.errors import CorruptError, NoSpaceError
from server.etcdserver.quota import cost
from server.mvcc.kv import RangeOptions
from server.mvcc.kvstore import Compaction

if TYPE_CHECKING:
    from server.etcdserver.server import EtcdServer

__all__ = ["Applier", "ApplyResult"]


@dataclass(slots=True)
class ApplyResult:
    resp: Message | None = None
    err: Exception | None = None
    # a scheduled physical compaction the client may wait for
    compaction: Compaction | None = None


class Applier:
    """Applies one InternalRaftRequest; errors are results, not exceptions, because the entry
    is applied (or refused) identically on every member."""

    def __init__(self, server: EtcdServer) -> None:
        self._s = server
        self._auth = AuthApplier(server.auth_store, lambda: server.lessor)

    def apply(self, r: rpb.InternalRaftRequest) -> ApplyResult:
        which = _which(r)
        handler = getattr(self, "_" + which, None)
        if handler is None and which in AUTH_OPS:
            handler = functools.partial(self._auth_op, which)
        if handler is None:
            return ApplyResult(err=ValueError(f"unknown internal raft request {which!r}"))
        auth = self._auth
        try:
            if auth.store.enabled:
                auth.begin(r, which)  # the entry's user; admin entries need the root role
            return handler(getattr(r, which))  # type: ignore[no-any-return]
        except EtcdError as e:
            return ApplyResult(err=e)
        finally:
            auth.end()

    def _auth_op(self, which: str, req: Message) -> ApplyResult:
        # applied_index is still the previous entry's: etcd's consistent index (a token's index)
        return ApplyResult(self._auth.apply(which, req, self._s.applied_index))

    # -- KV -----------------------------------------------------------------------------------

    def _gate(self, req: Message, *, kv: bool = True) -> None:
        """Refusals of the capped and corrupt appliers."""
        alarms = self._s.alarms
        if kv and alarms.active(pb.CORRUPT):
            raise CorruptError()
        if alarms.active(pb.NOSPACE) and cost(req) > 0:
            raise NoSpaceError()

    def _put(self, p: pb.PutRequest) -> ApplyResult:
        self._gate(p)
        self._auth.put(p)
        fits = self._s.quota.available(p)
        s = self._s
        txn.check_put(s.kv.read(), s.lessor, p)
        tw = s.kv.write()
        try:
            resp = txn.put(tw, p)
        finally:
            tw.end()
        return ApplyResult(resp, None if fits else NoSpaceError())

    def _delete_range(self, dr: pb.DeleteRangeRequest) -> ApplyResult:
        self._gate(dr)
        self._auth.delete_range(dr)
        tw = self._s.kv.write()
        try:
            return ApplyResult(txn.delete_range(tw, dr))
        finally:
            tw.end()

    def _txn(self, t: pb.TxnRequest) -> ApplyResult:
        self._gate(t)
        self._auth.txn(t)
        fits = self._s.quota.available(t)
        resp = txn.txn(self._s.kv, self._s.lessor, t)
        return ApplyResult(resp, None if fits else NoSpaceError())

    def _range(self, r: pb.RangeRequest) -> ApplyResult:
        self._gate(r)
        self._auth.range(r)
        return ApplyResult(txn.range_(self._s.kv.read(), r))

    def _compaction(self, c: pb.CompactionRequest) -> ApplyResult:
        self._gate(c)
        job = self._s.kv.compact(c.revision)
        resp = pb.CompactionResponse()
        resp.header.revision = self._s.kv.read().range(b"compaction", None, RangeOptions()).rev
        return ApplyResult(resp, compaction=job)

    # -- leases -------------------------------------------------------------------------------

    def _lease_grant(self, lg: pb.LeaseGrantRequest) -> ApplyResult:
        self._gate(lg, kv=False)
        lease = self._s.lessor.grant(lg.ID, lg.TTL)
        resp = pb.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)
        resp.header.revision = self._s.kv.rev()
        return ApplyResult(resp)

    def _lease_revoke(self, lr: pb.LeaseRevokeRequest) -> ApplyResult:
        self._auth.lease_revoke(lr)
        self._s.lessor.revoke(lr.ID)
        resp = pb.LeaseRevokeResponse()
        resp.header.revision = self._s.kv.rev()
        return ApplyResult(resp)

    def _lease_checkpoint(self, lc: pb.LeaseCheckpointRequest) -> ApplyResult:
        for cp in lc.checkpoints:
            self._s.lessor.checkpoint(cp.ID, cp.remaining_TTL)
        resp = pb.LeaseCheckpointResponse()
        resp.header.revision = self._s.kv.rev()
        return ApplyResult(resp)

    # -- alarms and cluster -------------------------------------------------------------------

    def _alarm(self, ar: pb.AlarmRequest) -> ApplyResult:
        store = self._s.alarms
        resp = pb.AlarmResponse()
        if ar.action == pb.AlarmRequest.GET:
            resp.alarms.extend(store.get(ar.alarm))
        elif ar.action == pb.AlarmRequest.ACTIVATE:
            if ar.alarm != pb.NONE:
                m = store.activate(ar.memberID, ar.alarm)
                if m is not None:
                    resp.alarms.append(m)
                    self._s.on_alarm_raised(m)
        elif ar.action == pb.AlarmRequest.DEACTIVATE:
            m = store.deactivate(ar.memberID, ar.alarm)
            if m is not None:
                resp.alarms.append(m)
        resp.header.revision = self._s.kv.rev()
        return ApplyResult(resp)

    def _cluster_member_attr_set(self, r: Any) -> ApplyResult:
        attrs = r.member_attributes
        self._s.cluster.update_attributes(r.member_ID, attrs.name, tuple(attrs.client_urls))
        return ApplyResult(rpb.EmptyResponse())

    def _cluster_version_set(self, r: Any) -> ApplyResult:
        self._s.cluster.set_version(r.ver)
        return ApplyResult(rpb.EmptyResponse())


def _which(r: rpb.InternalRaftRequest) -> str:
    for field, _ in r.ListFields():
        if field.name != "header":
            return str(field.name)
    return "empty"
