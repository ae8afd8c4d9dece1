"""/health, /livez, /readyz and /version (answers as recorded from etcd v3.6.16)."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.api.etcdserverpb import rpc_pb2 as pb
from server.embed.etcd import Etcd
from server.etcdserver.errors import TimeoutError_
from server.httpapi.health import HealthStats
from server.version import CLUSTER_VERSION, SERVER_VERSION, STORAGE_VERSION

Client = TestClient[web.Request, web.Application]


async def _alarm(etcd: Etcd, action: int, alarm: int) -> None:
    s = etcd.server
    await s.alarm(pb.AlarmRequest(action=action, memberID=s.member_id, alarm=alarm))  # type: ignore[arg-type]


async def test_health_ok(client: Client, stats: HealthStats) -> None:
    r = await client.get("/health")
    assert r.status == 200
    assert await r.text() == '{"health":"true","reason":""}'
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "X-Content-Type-Options" not in r.headers
    assert stats.success == 1


async def test_health_with_alarms(client: Client, etcd: Etcd, stats: HealthStats) -> None:
    await _alarm(etcd, pb.AlarmRequest.ACTIVATE, pb.NOSPACE)
    r = await client.get("/health")
    assert r.status == 503
    assert await r.text() == '{"health":"false","reason":"ALARM NOSPACE"}\n'
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await client.get("/health?exclude=NOSPACE")
    assert (r.status, await r.text()) == (200, '{"health":"true","reason":""}')
    await _alarm(etcd, pb.AlarmRequest.ACTIVATE, pb.CORRUPT)
    r = await client.get("/health?exclude=NOSPACE")
    assert await r.text() == '{"health":"false","reason":"ALARM CORRUPT"}\n'
    r = await client.get("/health?exclude=NOSPACE&exclude=CORRUPT")
    assert r.status == 200
    assert (stats.success, stats.failures) == (2, 2)


async def test_health_reports_a_failing_range(
    client: Client, etcd: Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(r: pb.RangeRequest) -> pb.RangeResponse:
        raise TimeoutError_()

    monkeypatch.setattr(etcd.server, "range", broken)
    r = await client.get("/health")
    assert (r.status, await r.text()) == (
        503,
        '{"health":"false","reason":"RANGE ERROR:etcdserver: request timed out"}\n',
    )
    r = await client.get("/livez")
    assert r.status == 503
    assert await r.text() == "[-]serializable_read failed: etcdserver: request timed out\n\n"


async def test_livez_and_readyz(client: Client, etcd: Etcd, stats: HealthStats) -> None:
    r = await client.get("/livez")
    assert (r.status, await r.text()) == (200, "ok\n")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await client.get("/livez?verbose")
    assert await r.text() == "[+]serializable_read ok\nok\n"
    r = await client.get("/readyz?verbose")
    assert await r.text() == (
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n"
    )
    r = await client.get("/readyz?verbose&exclude=non_learner&exclude=nope")
    assert "non_learner" not in await r.text()
    r = await client.get("/readyz/non_learner?verbose")
    assert await r.text() == "[+]non_learner ok\nok\n"
    r = await client.get("/readyz/nope")
    assert r.status == 404
    await _alarm(etcd, pb.AlarmRequest.ACTIVATE, pb.CORRUPT)
    r = await client.get("/readyz")
    assert r.status == 503
    assert await r.text() == (
        "[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n"
        "[+]linearizable_read ok\n[+]non_learner ok\n\n"
    )
    r = await client.get("/livez")
    assert r.status == 200
    assert stats.check[("readyz", "data_corruption")] == 0.0
    assert stats.checks_total[("readyz", "data_corruption", "error")] == 1
    assert stats.checks_total[("livez", "serializable_read", "success")] == 3


async def test_methods(client: Client) -> None:
    for path in ("/health", "/livez", "/readyz", "/readyz/non_learner", "/version"):
        r = await client.post(path)
        assert r.status == 405, path
        assert r.headers["Allow"] == "GET"
        assert await r.text() == "Method Not Allowed\n"


async def test_version(client: Client) -> None:
    r = await client.get("/version")
    assert r.headers["Content-Type"] == "application/json"
    text = await r.text()
    assert text == json.dumps(
        {"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION, "storage": STORAGE_VERSION},
        separators=(",", ":"),
    )


async def test_metrics_listener_has_no_version_and_no_cors(metrics_client: Client) -> None:
    r = await metrics_client.get("/version")
    assert r.status == 404
    r = await metrics_client.get("/health")
    assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    r = await metrics_client.options("/health")
    assert r.status == 405
    r = await metrics_client.post("/v3/kv/range", data="{}")
    assert r.status == 404
    r = await metrics_client.get("/readyz/data_corruption")
    assert r.status == 200
