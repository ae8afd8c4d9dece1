"""The fault surface of an in-process member (server/faults): each kind through the real gRPC
server, the JSON control API, and nothing of it without --listen-faults-urls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.api.mvccpb.kv_pb2 import Event
from server.embed.etcd import Etcd
from server.faults.rules import ERRORS
from server.v3rpc.errors import to_grpc_status
from tests.framework.wait import await_until
from tests.unit.httpapi.conftest import member_config


class Member:
    def __init__(self, e: Etcd, http: aiohttp.ClientSession, ch: grpc.aio.Channel) -> None:
        self.e = e
        self.http = http
        self.kv = pb_grpc.KVStub(ch)
        self.watch = pb_grpc.WatchStub(ch)
        self.lease = pb_grpc.LeaseStub(ch)
        assert e.faults is not None
        self.url = f"http://127.0.0.1:{e.faults.ports[0]}"

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=body) as r:
            return r.status, await r.json()

    async def set(self, **doc: object) -> dict[str, Any]:
        code, out = await self.call("POST", "/faults", doc)
        assert code == 201, out
        return out

    async def fault(self, fault_id: int) -> dict[str, Any]:
        code, out = await self.call("GET", f"/faults/{fault_id}")
        assert code == 200, out
        return out

    async def put(self, key: bytes, value: bytes = b"v", lease: int = 0) -> int:
        resp = await self.kv.Put(pb.PutRequest(key=key, value=value, lease=lease), timeout=10)
        return int(resp.header.revision)

    async def get(self, key: bytes) -> Any:
        resp = await self.kv.Range(pb.RangeRequest(key=key), timeout=10)
        return resp.kvs[0] if resp.kvs else None


@pytest.fixture
async def member(tmp_path: Path) -> AsyncIterator[Member]:
    e = Etcd(member_config(tmp_path, listen_faults_urls=("http://127.0.0.1:0",)))
    async with (
        e,
        aiohttp.ClientSession() as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{e.client_ports[0]}") as ch,
    ):
        yield Member(e, http, ch)


async def read(stream: Any) -> pb.WatchResponse:
    resp: pb.WatchResponse = await stream.read()
    return resp


def update(key: bytes, mod_revision: int, value: bytes) -> pb.TxnRequest:
    """kube-apiserver's GuaranteedUpdate: if MOD(key) == rev then put else get."""
    return pb.TxnRequest(
        compare=[
            pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=mod_revision)
        ],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )


# -- errors and latency ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ERRORS))
async def test_error_by_prefix_and_count(member: Member, name: str) -> None:
    f = await member.set(kind="error", error=name, prefix="/a/", methods=["Put"], count=2)
    code, message = to_grpc_status(ERRORS[name]())
    assert f["message"] == message
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await member.put(b"/a/k")
        assert (e.value.code(), e.value.details()) == (code, message)
    await member.put(b"/b/k")  # another prefix
    assert await member.get(b"/a/k") is None  # the failed requests were not served
    await member.put(b"/a/k")  # the count is spent
    done = await member.fault(f["id"])
    assert (done["injected"], done["active"], done["ended"]) == (2, False, "count reached")
    assert member.e.server.stats.faults_injected["error"] == 2


async def test_latency_delays_only_matching_requests(member: Member) -> None:
    released = asyncio.Event()
    delays: list[float] = []

    async def held(delay: float) -> None:
        delays.append(delay)
        await released.wait()

    assert member.e.faults is not None
    member.e.faults.injector.sleep = held
    await member.put(b"/slow/k")
    f = await member.set(kind="latency", delay_ms=1500, prefix="/slow/", methods=["Range"])
    slow = asyncio.create_task(member.get(b"/slow/k"))
    await await_until(lambda: delays)
    assert delays == [1.5]
    assert (await member.get(b"/fast")) is None  # another key is served meanwhile
    await member.put(b"/slow/k2")  # and another method
    assert not slow.done()
    released.set()
    assert (await slow).key == b"/slow/k"
    assert (await member.fault(f["id"]))["injected"] == 1


# -- conflicts -------------------------------------------------------------------------------------


async def test_conflict_rewrites_the_object_unchanged(member: Member) -> None:
    lease = await member.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=10)
    rev = await member.put(b"/registry/cm/ns/a", b"original", lease=lease.ID)
    before = await member.get(b"/registry/cm/ns/a")
    watch = member.watch.Watch()
    await watch.write(
        pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=b"/registry/cm/", range_end=b"/registry/cm0")
        )
    )
    assert (await read(watch)).created
    f = await member.set(kind="conflict", prefix="/registry/cm/ns/", count=1)

    resp = await member.kv.Txn(update(b"/registry/cm/ns/a", rev, b"mine"), timeout=10)
    assert not resp.succeeded
    now = resp.responses[0].response_range.kvs[0]
    assert now.mod_revision == rev + 1 and now.version == before.version + 1
    assert (now.value, now.lease, now.create_revision) == (b"original", lease.ID, before.create_revision)
    ev = (await read(watch)).events[0]
    assert (ev.type, ev.kv.value, ev.kv.mod_revision) == (Event.PUT, b"original", rev + 1)

    # the retry, from the version it now reads, goes through
    resp = await member.kv.Txn(update(b"/registry/cm/ns/a", rev + 1, b"mine"), timeout=10)
    assert resp.succeeded
    assert (await member.get(b"/registry/cm/ns/a")).value == b"mine"
    assert (await member.fault(f["id"]))["injected"] == 1
    watch.cancel()


async def test_conflicts_count_only_what_they_cause(member: Member) -> None:
    rev = await member.put(b"/p/a")
    f = await member.set(kind="conflict", prefix="/p/", count=1)
    # already stale: it fails without help, the fault is not spent
    assert not (await member.kv.Txn(update(b"/p/a", rev - 1, b"x"), timeout=10)).succeeded
    # a create (MOD == 0), another prefix, another compare target: untouched
    assert (await member.kv.Txn(update(b"/p/new", 0, b"x"), timeout=10)).succeeded
    other = await member.put(b"/q/a")
    assert (await member.kv.Txn(update(b"/q/a", other, b"x"), timeout=10)).succeeded
    assert (await member.fault(f["id"]))["injected"] == 0
    rev = (await member.get(b"/p/a")).mod_revision
    assert not (await member.kv.Txn(update(b"/p/a", rev, b"x"), timeout=10)).succeeded
    assert (await member.fault(f["id"]))["injected"] == 1


async def test_conflict_on_one_key(member: Member) -> None:
    await member.put(b"/k/a")
    ab = await member.put(b"/k/ab")
    f = await member.set(kind="conflict", key="/k/a")
    assert (await member.kv.Txn(update(b"/k/ab", ab, b"x"), timeout=10)).succeeded
    a = (await member.get(b"/k/a")).mod_revision
    assert not (await member.kv.Txn(update(b"/k/a", a, b"x"), timeout=10)).succeeded
    assert (await member.fault(f["id"]))["injected"] == 1


# -- watch cut -------------------------------------------------------------------------------------


async def test_watch_cut_compacts_and_cancels_watches_on_the_prefix(member: Member) -> None:
    await member.put(b"/w/a")
    rev = await member.put(b"/w/b")
    cut = member.watch.Watch()
    kept = member.watch.Watch()
    await cut.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/w/a")))
    await kept.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/x/", range_end=b"/x0")))
    assert (await read(cut)).created and (await read(kept)).created

    f = await member.set(kind="watch_cut", prefix="/w/")
    assert (f["injected"], f["compact_revision"], f["active"]) == (1, rev, False)
    resp = await read(cut)
    assert (resp.canceled, resp.compact_revision, list(resp.events)) == (True, rev, [])
    # the history before is gone: a client resuming from it must relist
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await member.kv.Range(pb.RangeRequest(key=b"/w/a", revision=rev - 1), timeout=10)
    assert e.value.details() == "etcdserver: mvcc: required revision has been compacted"
    await member.put(b"/x/1")
    assert (await read(kept)).events[0].kv.key == b"/x/1"
    assert member.e.server.stats.faults_injected["watch_cut"] == 1
    cut.cancel()
    kept.cancel()


# -- partitions (the transport's side; a cluster: tests/integration/test_faults_cluster.py) --------


async def test_partition_sets_and_heals_the_transport_drop(member: Member) -> None:
    transport = member.e.server.transport
    assert transport.drop is None
    f = await member.set(kind="partition", peers=["a", "b"])
    assert transport.drop is not None
    assert transport.drop(0xA) and not transport.drop(0xC)
    assert (await member.fault(f["id"]))["injected"] == 1
    code, _ = await member.call("DELETE", f"/faults/{f['id']}")
    assert code == 200 and transport.drop is None
    await member.set(kind="partition", ttl=0.05)
    await await_until(lambda: transport.drop is None)


# -- the control API -------------------------------------------------------------------------------


async def test_control_api(member: Member) -> None:
    code, info = await member.call("GET", "/")
    assert code == 200 and info["is_leader"] and info["member_id"] == f"{member.e.server.member_id:x}"
    assert info["errors"]["timeout"] == "etcdserver: request timed out"
    a = await member.set(kind="latency", delay_ms=1, prefix="/a/")
    b = await member.set(kind="error", error="timeout", ttl=0.05)
    await await_until(lambda: member.e.faults is not None and not member.e.faults.faults.kv[1:])
    code, listing = await member.call("GET", "/faults")
    assert [(f["id"], f["active"]) for f in listing["faults"]] == [(a["id"], True), (b["id"], False)]
    assert listing["faults"][1]["ended"] == "expired"
    code, gone = await member.call("DELETE", f"/faults/{a['id']}")
    assert (code, gone["ended"]) == (200, "cleared")
    assert (await member.call("GET", f"/faults/{a['id']}"))[0] == 404
    assert await member.call("DELETE", "/faults") == (200, {"cleared": 1})
    assert await member.call("GET", "/faults") == (200, {"faults": []})


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "error"),
    [
        ("POST", "/faults", {"kind": "meteor"}, 400, "unknown fault kind 'meteor'"),
        ("POST", "/faults", {"kind": "error", "error": "nope"}, 400, "unknown error 'nope'"),
        ("POST", "/faults", {"kind": "conflict", "prefix": 5}, 400, "prefix must be a string"),
        (
            "POST",
            "/faults",
            {"kind": "latency", "delay_ms": 5, "sometimes": 1},
            400,
            "unknown field 'sometimes'",
        ),
        ("GET", "/faults/42", None, 404, "no fault '42'"),
        ("DELETE", "/faults/x", None, 404, "no fault 'x'"),
        ("GET", "/nothing", None, 404, "not found"),
        ("PUT", "/faults", {}, 405, "method not allowed"),
    ],
)
async def test_bad_requests(
    member: Member, method: str, path: str, body: object, code: int, error: str
) -> None:
    got, out = await member.call(method, path, body)
    assert got == code and error in out["error"]


async def test_body_not_json(member: Member) -> None:
    async with member.http.post(member.url + "/faults", data=b"{kind: conflict") as r:
        assert r.status == 400
        assert (await r.json())["error"].startswith("the body is not JSON")


# -- off by default --------------------------------------------------------------------------------


async def test_absent_without_the_flag(tmp_path: Path) -> None:
    async with Etcd(member_config(tmp_path)) as e:
        assert e.faults is None
        assert e.server.stats.faults_injected == {}
        [only] = e._interceptors()
        assert only._hook is None  # type: ignore[attr-defined]
        assert e.server.transport.drop is None


async def test_no_fault_set_passes_handlers_through(member: Member) -> None:
    assert member.e.faults is not None
    hook = member.e.faults.hook
    handler: Any = grpc.unary_unary_rpc_method_handler(lambda r, c: r)
    details: Any = type("D", (), {"method": "/etcdserverpb.KV/Txn", "invocation_metadata": ()})()
    assert hook(handler, details) is handler
    await member.set(kind="latency", delay_ms=1)
    assert hook(handler, details) is not handler
    watch: Any = type("D", (), {"method": "/etcdserverpb.Watch/Watch", "invocation_metadata": ()})()
    assert hook(handler, watch) is handler
