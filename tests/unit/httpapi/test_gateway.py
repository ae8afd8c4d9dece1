"""The grpc-gateway routes over an in-process member (aiohttp's test client)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.api.etcdserverpb import rpc_pb2 as pb
from server.embed.etcd import Etcd
from server.httpapi.gateway import http_status_from_code
from server.httpapi.http_server import client_app
from server.httpapi.jsonpb import marshal, parse_first
from server.services import servicers

Client = TestClient[web.Request, web.Application]


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


async def post(client: Client, path: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, str | bytes) else json.dumps(body if body is not None else {})
    r = await client.post(path, data=io.BytesIO(data.encode() if isinstance(data, str) else data))
    text = await r.text()
    return r.status, json.loads(text) if text else None


async def test_put_range_delete(client: Client, etcd: Etcd) -> None:
    s = etcd.server
    status, doc = await post(client, "/v3/kv/put", {"key": b64("a"), "value": b64("1")})
    assert status == 200
    assert doc == {
        "header": {
            "cluster_id": str(s.cluster.cluster_id),
            "member_id": str(s.member_id),
            "revision": "2",
            "raft_term": str(s.term),
        }
    }
    await post(client, "/v3/kv/put", {"key": b64("b"), "value": b64("2")})
    status, doc = await post(client, "/v3/kv/range", {"key": b64("a"), "range_end": b64("c"), "limit": 1})
    assert status == 200
    assert doc["kvs"] == [
        {"key": b64("a"), "create_revision": "2", "mod_revision": "2", "version": "1", "value": b64("1")}
    ]
    assert doc["more"] is True and doc["count"] == "2"
    status, doc = await post(client, "/v3/kv/deleterange", {"key": b64("a"), "prev_kv": True})
    assert doc["deleted"] == "1" and doc["prev_kvs"][0]["value"] == b64("1")
    assert doc["header"]["revision"] == "4"


async def test_response_is_the_grpc_servicers_byte_for_byte(client: Client, etcd: Etcd) -> None:
    """The gateway answers with what the gRPC service returns, header filled the same way."""
    await post(client, "/v3/kv/put", {"key": b64("k"), "value": b64("v")})

    class Ctx:
        async def abort(self, code: Any, details: str) -> None:
            raise AssertionError(details)

    grpc_resp = await servicers(etcd.server).kv.Range(pb.RangeRequest(key=b"k"), Ctx())  # type: ignore[arg-type]
    r = await client.post("/v3/kv/range", data=json.dumps({"key": b64("k")}))
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Grpc-Metadata-Content-Type"] == "application/grpc"
    got = parse_first(await r.read(), pb.RangeResponse)
    assert got == grpc_resp
    assert await r.text() == marshal(grpc_resp)


async def test_txn_and_compaction(client: Client) -> None:
    for i in range(3):
        await post(client, "/v3/kv/put", {"key": b64("x"), "value": b64(str(i))})
    status, doc = await post(
        client,
        "/v3/kv/txn",
        {
            "compare": [{"key": b64("x"), "target": "VALUE", "result": "EQUAL", "value": b64("2")}],
            "success": [{"request_range": {"key": b64("x")}}, {"request_put": {"key": b64("y")}}],
        },
    )
    assert status == 200 and doc["succeeded"] is True
    assert doc["responses"][0]["response_range"]["header"] == {"revision": "4"}
    assert doc["responses"][1] == {"response_put": {"header": {"revision": "5"}}}
    status, doc = await post(client, "/v3/kv/compaction", {"revision": 3, "physical": True})
    assert status == 200 and doc["header"]["revision"] == "5"
    status, doc = await post(client, "/v3/kv/range", {"key": b64("x"), "revision": 2})
    assert (status, doc) == (
        400,
        {"code": 11, "message": "etcdserver: mvcc: required revision has been compacted"},
    )
    status, doc = await post(client, "/v3/kv/compaction", {"revision": 3})
    assert status == 400 and doc["code"] == 11
    status, doc = await post(client, "/v3/kv/range", {"key": b64("x"), "revision": 99})
    assert doc["message"] == "etcdserver: mvcc: required revision is a future revision"


async def test_validation_errors_are_the_grpc_services(client: Client, etcd: Etcd) -> None:
    cases: list[tuple[str, Any, int, str]] = [
        ("/v3/kv/range", {}, 400, "etcdserver: key is not provided"),
        ("/v3/kv/put", {"value": b64("v")}, 400, "etcdserver: key is not provided"),
        (
            "/v3/kv/put",
            {"key": b64("k"), "ignore_value": True, "value": b64("v")},
            400,
            "etcdserver: value is provided",
        ),
        ("/v3/kv/deleterange", {}, 400, "etcdserver: key is not provided"),
        ("/v3/kv/range", {"key": b64("k"), "sort_order": 9}, 400, "etcdserver: invalid sort option"),
        ("/v3/kv/txn", {"success": [{}]}, 400, "etcdserver: key not found"),
        (
            "/v3/kv/txn",
            {"success": [{"request_put": {"key": b64("k")}}, {"request_put": {"key": b64("k")}}]},
            400,
            "etcdserver: duplicate key given in txn request",
        ),
        ("/v3/lease/revoke", {"ID": 42}, 404, "etcdserver: requested lease not found"),
        ("/v3/cluster/member/remove", {"ID": 1}, 404, "etcdserver: member not found"),
        ("/v3/kv/range", '{"key":', 400, "unexpected EOF"),
    ]
    for path, body, status, message in cases:
        got = await post(client, path, body)
        assert got[0] == status, path
        assert got[1]["message"] == message, path


async def test_leases_and_keepalive(client: Client) -> None:
    status, doc = await post(client, "/v3/lease/grant", {"ID": 7, "TTL": 60})
    assert (status, doc["ID"], doc["TTL"]) == (200, "7", "60")
    await post(client, "/v3/kv/put", {"key": b64("l"), "value": b64("v"), "lease": 7})
    status, doc = await post(client, "/v3/kv/lease/timetolive", {"ID": 7, "keys": True})
    assert doc["grantedTTL"] == "60" and doc["keys"] == [b64("l")]
    status, doc = await post(client, "/v3/lease/leases")
    assert doc["leases"] == [{"ID": "7"}]
    r = await client.post("/v3/lease/keepalive", data='{"ID":7}\n{"ID":"8"}')
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    lines = (await r.text()).split("\n")
    assert lines[-1] == ""
    first, second = (json.loads(line)["result"] for line in lines[:-1])
    assert (first["ID"], first["TTL"]) == ("7", "60")
    assert second["ID"] == "8" and "TTL" not in second
    assert ", " not in lines[0]  # stream messages are compacted
    # a body that does not decode ends the stream: an empty 200
    r = await client.post("/v3/lease/keepalive", data="oops")
    assert r.status == 200 and await r.read() == b""
    status, doc = await post(client, "/v3/lease/revoke", {"ID": 7})
    assert status == 200
    status, doc = await post(client, "/v3/kv/range", {"key": b64("l")})
    assert "kvs" not in doc


async def test_keepalive_answers_each_request_as_it_arrives(client: Client) -> None:
    await post(client, "/v3/lease/grant", {"ID": 9, "TTL": 30})
    sent: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def body() -> AsyncIterator[bytes]:
        while (chunk := await sent.get()) is not None:
            yield chunk

    await sent.put(b'{"ID":')
    await sent.put(b"9}\n")
    req = asyncio.create_task(client.post("/v3/lease/keepalive", data=body()))
    resp = await asyncio.wait_for(req, 5)
    line = await asyncio.wait_for(resp.content.readline(), 5)
    assert json.loads(line)["result"]["TTL"] == "30"
    await sent.put(b'{"ID":9}')
    line = await asyncio.wait_for(resp.content.readline(), 5)
    assert json.loads(line)["result"]["ID"] == "9"
    await sent.put(None)
    assert await asyncio.wait_for(resp.content.read(), 5) == b""


async def test_snapshot_stream_is_the_backend_with_its_digest(client: Client) -> None:
    for i in range(50):
        await post(client, "/v3/kv/put", {"key": b64(f"k{i}"), "value": b64("v" * 2000)})
    # Hash commits the backend first (petcd's Snapshot does not yet, unlike etcd's)
    await post(client, "/v3/maintenance/hash")
    r = await client.post("/v3/maintenance/snapshot", data="{}")
    assert r.status == 200
    lines = (await r.read()).split(b"\n")
    assert lines[-1] == b""
    parts = [json.loads(line)["result"] for line in lines[:-1]]
    assert len(parts) >= 3
    data = b"".join(base64.b64decode(p["blob"]) for p in parts[:-1])
    assert base64.b64decode(parts[-1]["blob"]) == hashlib.sha256(data).digest()
    assert int(parts[0]["remaining_bytes"]) == len(data) - len(base64.b64decode(parts[0]["blob"]))
    assert all(p["version"] for p in parts)
    status, doc = await post(client, "/v3/maintenance/snapshot", "[")
    assert (status, doc["code"]) == (400, 3)


async def test_maintenance_and_cluster(client: Client, etcd: Etcd) -> None:
    s = etcd.server
    status, doc = await post(client, "/v3/maintenance/status")
    assert status == 200
    assert doc["leader"] == str(s.member_id) and doc["downgradeInfo"] == {}
    assert doc["dbSizeQuota"] == "2147483648"
    status, doc = await post(client, "/v3/cluster/member/list")
    assert doc["header"] == {
        "cluster_id": str(s.cluster.cluster_id),
        "member_id": str(s.member_id),
        "raft_term": str(s.term),
    }
    assert doc["members"][0]["ID"] == str(s.member_id)
    assert doc["members"][0]["peerURLs"] == list(etcd.cfg.initial_advertise_peer_urls)
    assert (await post(client, "/v3/maintenance/defragment"))[1] == {}
    assert (await post(client, "/v3/maintenance/alarm"))[1]["header"]["member_id"] == str(s.member_id)
    assert "hash" in (await post(client, "/v3/maintenance/hash"))[1]
    assert "hash_revision" in (await post(client, "/v3/maintenance/hashkv"))[1]


async def test_request_over_the_grpc_limit_is_resource_exhausted(client: Client, etcd: Etcd) -> None:
    limit = etcd.cfg.max_recv_bytes
    status, doc = await post(client, "/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * limit)})
    assert status == 429 and doc["code"] == 8
    assert doc["message"].startswith("grpc: received message larger than max (")
    status, doc = await post(
        client, "/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * (etcd.cfg.max_request_bytes + 1))}
    )
    assert (status, doc["message"]) == (400, "etcdserver: request is too large")


async def test_routing(client: Client) -> None:
    r = await client.get("/v3/kv/range")
    assert r.status == 501 and json.loads(await r.text()) == {"code": 12, "message": "Method Not Allowed"}
    r = await client.post("/v3/kv/nothing")
    assert r.status == 404 and await r.text() == '{"code":5, "message":"Not Found"}'
    async with client.post("/v3/watch", data='{"create_request":{"key":"YQ=="}}') as r:
        assert r.status == 200 and json.loads(await r.content.readline())["result"]["created"] is True
    r = await client.post("/v3/lock/lock", data="{}")  # no lease: a new 60 s lease holds it
    assert r.status == 200 and base64.b64decode(json.loads(await r.text())["key"]).startswith(b"/")
    r = await client.post("/v3/auth/status", data="{}")
    assert r.status == 200 and json.loads(await r.text())["authRevision"] == "1"
    r = await client.post("/v3beta/kv/range", data=json.dumps({"key": b64("a")}))
    assert r.status == 200
    r = await client.post("/v3", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (307, "/v3/")
    r = await client.options("/v3/kv/range")
    assert r.status == 200 and await r.read() == b""
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Methods"] == "POST, GET, OPTIONS, PUT, DELETE"
    r = await client.get("/nothing")
    assert (r.status, await r.text()) == (404, "404 page not found\n")
    assert r.headers["Access-Control-Allow-Headers"] == "accept, content-type, authorization"


def test_http_status_from_code_is_grpc_gateways() -> None:
    assert [http_status_from_code(c) for c in range(17)] == [
        200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401,
    ]  # fmt: skip
    assert http_status_from_code(99) == 500


class _Recorder(grpc.aio.ServerInterceptor):
    """Records calls; refuses those carrying the metadata deny=yes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        metadata = tuple(details.invocation_metadata or ())
        self.calls.append((details.method, metadata))  # type: ignore[arg-type]
        handler = await continuation(details)
        if ("deny", "yes") in metadata:

            async def deny(request: Any, context: Any) -> Any:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")

            return grpc.unary_unary_rpc_method_handler(deny)
        return handler


async def test_calls_go_through_the_grpc_interceptors(etcd: Etcd) -> None:
    rec = _Recorder()
    async with TestClient(TestServer(client_app(etcd.server, interceptors=[rec]))) as c:
        r = await c.post("/v3/kv/range", data=json.dumps({"key": b64("a")}))
        assert r.status == 200
        r = await c.post("/v3/kv/range", data="{}", headers={"Grpc-Metadata-Deny": "yes"})
        assert (r.status, await r.text()) == (403, '{"code":7, "message":"denied"}')
        r = await c.post("/v3/lease/keepalive", data='{"ID":1}')
        assert r.status == 200
    assert [m for m, _ in rec.calls] == [
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.Lease/LeaseKeepAlive",
    ]
    assert rec.calls[1][1] == (("deny", "yes"),)
