"""The gRPC services over fakes of the narrow protocols they hold (server/etcdserver/api.py):
no member, no network.

We test these aspects:
- KV validates as etcd's key.go does before the server sees the request (empty keys, too many
  ops, duplicate keys in a txn, ignore_value with a value), with etcd's codes and messages;
- every response header carries the cluster and member ID and the term of RaftStatus, and the
  store revision unless the request set the revision it was served at;
- Lease keep-alive answers TTL 0 for an unknown lease and keeps the stream open; other domain
  errors end it with etcd's status;
- Cluster responses carry no revision; Compact needs the admin check first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.errors import AuthError, PermissionDeniedError
from server.auth.store import AuthInfo
from server.etcdserver.membership import Member
from server.lease.lessor import LeaseNotFoundError
from server.v3rpc.cluster import ClusterService
from server.v3rpc.header import Header
from server.v3rpc.kv import KVService
from server.v3rpc.lease import LeaseService
from tests.unit.v3rpc.fakes import Status


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class _Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def Context() -> Any:
    """Stands in for grpc.aio.ServicerContext: abort() raises."""
    return _Context()


@dataclass
class Fake:
    """RaftKV, Lessor, Membership and Admission at once, recording what reached it."""

    calls: list[str] = field(default_factory=list)
    admin: bool = True
    renew: dict[int, int | Exception] = field(default_factory=dict)
    enabled: bool = False

    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        self.calls.append("range")
        resp = pb.RangeResponse()
        resp.header.revision = 3  # served at a revision of its own
        return resp

    async def put(self, r: pb.PutRequest) -> pb.PutResponse:
        self.calls.append("put")
        return pb.PutResponse()

    async def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        self.calls.append("delete_range")
        return pb.DeleteRangeResponse()

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        self.calls.append("txn")
        return pb.TxnResponse()

    async def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        self.calls.append("compact")
        return pb.CompactionResponse()

    async def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        return pb.LeaseGrantResponse(ID=r.ID, TTL=r.TTL)

    async def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        return pb.LeaseRevokeResponse()

    async def lease_renew(self, lease_id: int) -> int:
        got = self.renew[lease_id]
        if isinstance(got, Exception):
            raise got
        return got

    async def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        return pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=-1)

    async def lease_leases(self) -> pb.LeaseLeasesResponse:
        return pb.LeaseLeasesResponse()

    def members(self) -> list[Member]:
        return [Member(0x3E, "m0", ("http://p:2380",), ("http://c:2379",))]

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> Member:
        raise AssertionError("not called")

    async def member_remove(self, member_id: int) -> None:
        raise AssertionError("not called")

    async def member_update(self, member_id: int, peer_urls: list[str]) -> None:
        raise AssertionError("not called")

    async def member_promote(self, member_id: int) -> None:
        raise AssertionError("not called")

    async def auth_info(self) -> AuthInfo | None:
        return None

    async def require_auth_info(self) -> None:
        pass

    async def check_admin(self) -> None:
        if not self.admin:
            raise PermissionDeniedError()

    async def watch_denied(self, creq: pb.WatchCreateRequest) -> AuthError | None:
        return None


STORE_REV = 42


def services(fake: Fake) -> tuple[KVService, LeaseService, ClusterService]:
    hdr = Header(Status(), lambda: STORE_REV)
    return (
        KVService(fake, fake, hdr, max_txn_ops=3),
        LeaseService(fake, fake, hdr),
        ClusterService(fake, fake, hdr),
    )


def _put(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key))


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("Range", pb.RangeRequest(), "etcdserver: key is not provided"),
        ("Put", pb.PutRequest(), "etcdserver: key is not provided"),
        ("Put", pb.PutRequest(key=b"k", value=b"v", ignore_value=True), "etcdserver: value is provided"),
        ("Put", pb.PutRequest(key=b"k", lease=5, ignore_lease=True), "etcdserver: lease is provided"),
        ("DeleteRange", pb.DeleteRangeRequest(), "etcdserver: key is not provided"),
        ("Txn", pb.TxnRequest(success=[_put(b"a")] * 4), "etcdserver: too many operations in txn request"),
        (
            "Txn",
            pb.TxnRequest(success=[_put(b"a"), _put(b"a")]),
            "etcdserver: duplicate key given in txn request",
        ),
        ("Txn", pb.TxnRequest(success=[pb.RequestOp()]), "etcdserver: key not found"),
        ("Range", pb.RangeRequest(key=b"k", sort_order=9), "etcdserver: invalid sort option"),  # type: ignore[arg-type]
    ],
)
async def test_kv_validates_before_the_server(method: str, request_: Any, message: str) -> None:
    fake = Fake()
    kv, _, _ = services(fake)
    with pytest.raises(Aborted) as e:
        await getattr(kv, method)(request_, Context())
    assert (e.value.code, e.value.details) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert fake.calls == []


async def test_headers_come_from_raft_status_and_the_store() -> None:
    kv, lease, cluster = services(Fake())
    put = await kv.Put(pb.PutRequest(key=b"k"), Context())
    assert (put.header.cluster_id, put.header.member_id, put.header.raft_term) == (0xC1, 0x3E, 7)
    assert put.header.revision == STORE_REV
    got = await kv.Range(pb.RangeRequest(key=b"k"), Context())
    assert got.header.revision == 3, "served at its own revision: kept"
    members = await cluster.MemberList(pb.MemberListRequest(), Context())
    assert (members.header.member_id, members.header.revision) == (0x3E, 0)
    assert [m.name for m in members.members] == ["m0"]
    ttl = await lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=1), Context())
    assert (ttl.TTL, ttl.header.revision) == (-1, STORE_REV)


async def test_compact_checks_the_admin_first() -> None:
    fake = Fake(admin=False)
    kv, _, _ = services(fake)
    with pytest.raises(Aborted) as e:
        await kv.Compact(pb.CompactionRequest(revision=1), Context())
    assert (e.value.code, e.value.details) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "etcdserver: permission denied",
    )
    assert fake.calls == []


async def test_keepalive_answers_unknown_leases_with_ttl_0() -> None:
    fake = Fake(renew={1: 30, 2: LeaseNotFoundError(), 3: PermissionDeniedError()})
    _, lease, _ = services(fake)

    async def requests(*ids: int) -> AsyncIterator[pb.LeaseKeepAliveRequest]:
        for i in ids:
            yield pb.LeaseKeepAliveRequest(ID=i)

    got = [(r.ID, r.TTL) async for r in lease.LeaseKeepAlive(requests(1, 2, 1), Context())]
    assert got == [(1, 30), (2, 0), (1, 30)]
    with pytest.raises(Aborted) as e:
        async for _ in lease.LeaseKeepAlive(requests(1, 3), Context()):
            pass
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
