"""A synchronous etcd v3 client for tests, and outcomes to compare servers by.

The stubs are grpcio's own (kv, lease, watch, maintenance, cluster, auth); the methods are the
calls tests make most, taking bytes or str keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc

__all__ = ["Client", "Outcome", "outcome", "without_identity"]

Key = str | bytes
TIMEOUT = 10.0

# ("ok", response text) or ("error", code name, details)
Outcome = tuple[str, ...]


def _b(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else key


class _Token(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Every call carries the token, as clientv3 sends it."""

    def __init__(self, token: str) -> None:
        self._md = ("token", token)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._md])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class Client:
    """token: sent with every call, the raw stubs' included."""

    def __init__(
        self, endpoint: str, *, token: str | None = None, options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self.endpoint = endpoint
        self._raw = grpc.insecure_channel(endpoint, options=list(options))
        self.channel = grpc.intercept_channel(self._raw, _Token(token)) if token else self._raw
        ch = self.channel
        self.kv = pb_grpc.KVStub(ch)
        self.lease = pb_grpc.LeaseStub(ch)
        self.watch = pb_grpc.WatchStub(ch)
        self.maintenance = pb_grpc.MaintenanceStub(ch)
        self.cluster = pb_grpc.ClusterStub(ch)
        self.auth = pb_grpc.AuthStub(ch)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self) -> dict[str, Any]:
        return {"timeout": TIMEOUT}

    # -- KV ---------------------------------------------------------------------------------------

    def put(self, key: Key, value: Key = b"", **kw: Any) -> pb.PutResponse:
        return self.kv.Put(pb.PutRequest(key=_b(key), value=_b(value), **kw), **self._kw())

    def get(self, key: Key, **kw: Any) -> pb.RangeResponse:
        return self.kv.Range(pb.RangeRequest(key=_b(key), **kw), **self._kw())

    def delete(self, key: Key, **kw: Any) -> pb.DeleteRangeResponse:
        return self.kv.DeleteRange(pb.DeleteRangeRequest(key=_b(key), **kw), **self._kw())

    def txn(
        self,
        compare: Sequence[pb.Compare] = (),
        success: Sequence[pb.RequestOp] = (),
        failure: Sequence[pb.RequestOp] = (),
    ) -> pb.TxnResponse:
        req = pb.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        return self.kv.Txn(req, **self._kw())

    def compact(self, revision: int, physical: bool = False) -> pb.CompactionResponse:
        return self.kv.Compact(pb.CompactionRequest(revision=revision, physical=physical), **self._kw())

    # -- leases -----------------------------------------------------------------------------------

    def grant(self, ttl: int, lease_id: int = 0) -> pb.LeaseGrantResponse:
        return self.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl, ID=lease_id), **self._kw())

    def revoke(self, lease_id: int) -> pb.LeaseRevokeResponse:
        return self.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), **self._kw())

    def time_to_live(self, lease_id: int, keys: bool = False) -> pb.LeaseTimeToLiveResponse:
        return self.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), **self._kw())

    def keep_alive_once(self, lease_id: int) -> pb.LeaseKeepAliveResponse:
        call = self.lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease_id)]), **self._kw())
        return next(iter(call))

    def leases(self) -> pb.LeaseLeasesResponse:
        return self.lease.LeaseLeases(pb.LeaseLeasesRequest(), **self._kw())

    # -- maintenance ------------------------------------------------------------------------------

    def status(self) -> pb.StatusResponse:
        return self.maintenance.Status(pb.StatusRequest(), **self._kw())

    def member_id(self) -> int:
        return int(self.status().header.member_id)

    def alarm(self, action: int, alarm: int = pb.NONE, member_id: int = 0) -> pb.AlarmResponse:
        req = pb.AlarmRequest(action=action, alarm=alarm, memberID=member_id)  # type: ignore[arg-type]
        return self.maintenance.Alarm(req, **self._kw())

    def hash_kv(self, revision: int = 0) -> pb.HashKVResponse:
        return self.maintenance.HashKV(pb.HashKVRequest(revision=revision), **self._kw())


def without_identity(msg: Message) -> str:
    """A response as text with only the revision of its header: cluster and member IDs and the
    raft term legitimately differ between servers."""
    m = type(msg)()
    m.CopyFrom(msg)
    if "header" in m.DESCRIPTOR.fields_by_name and m.HasField("header"):
        rev = m.header.revision  # type: ignore[attr-defined]
        m.header.Clear()  # type: ignore[attr-defined]
        m.header.revision = rev  # type: ignore[attr-defined]
    return str(m)


def outcome(fn: Callable[[], Any], norm: Callable[[Any], str] = without_identity) -> Outcome:
    """What a call answered: ("ok", norm(response)) or ("error", code, message)."""
    try:
        resp = fn()
    except grpc.RpcError as e:
        return ("error", e.code().name, e.details() or "")
    return ("ok", norm(resp))
