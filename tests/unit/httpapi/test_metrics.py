"""/metrics: etcd's names, read from the server at scrape time, in client_golang's format."""

from __future__ import annotations

import base64
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.embed.etcd import Etcd
from server.httpapi.health import HealthStats
from server.httpapi.http_server import client_app
from server.httpapi.metrics import CONTENT_TYPE, ServerStats, go_float, new_registry, render
from server.version import SERVER_VERSION
from tests.unit.httpapi.conftest import member_config

Client = TestClient[web.Request, web.Application]


def value(text: str, sample: str) -> str:
    (v,) = re.findall(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return str(v)


async def test_compact_revision_is_minus_one_before_any_compaction(client: Client) -> None:
    text = await (await client.get("/metrics")).text()
    assert value(text, "etcd_debugging_mvcc_compact_revision") == "-1"


async def test_metrics_read_the_server(client: Client, etcd: Etcd) -> None:
    s = etcd.server
    for k in (b"a", b"b", b"c"):
        await client.post("/v3/kv/put", data=f'{{"key":"{base64.b64encode(k).decode()}"}}')
    await client.post("/v3/kv/deleterange", data='{"key":"Yw=="}')
    await client.post("/v3/kv/compaction", data='{"revision":3}')
    await client.get("/health")
    r = await client.get("/metrics")
    assert r.headers["Content-Type"] == CONTENT_TYPE
    text = await r.text()
    assert value(text, "etcd_server_has_leader") == "1"
    assert value(text, "etcd_server_is_leader") == "1"
    assert value(text, "etcd_server_is_learner") == "0"
    assert value(text, "etcd_server_leader_changes_seen_total") == "1"
    assert value(text, "etcd_debugging_mvcc_current_revision") == "5"
    assert value(text, "etcd_debugging_mvcc_compact_revision") == "3"
    assert value(text, "etcd_debugging_mvcc_keys_total") == "2"
    assert value(text, "etcd_server_proposals_committed_total") == str(s.committed_index)
    assert value(text, "etcd_server_proposals_applied_total") == str(s.applied_index)
    assert value(text, "etcd_server_quota_backend_bytes") == "2.147483648e+09"
    assert int(value(text, "etcd_mvcc_db_total_size_in_bytes")) > 0  # (background commits move it)
    assert int(value(text, "etcd_mvcc_db_total_size_in_use_in_bytes")) > 0
    assert value(text, f'etcd_server_id{{server_id="{s.member_id:x}"}}') == "1"
    assert value(text, f'etcd_server_version{{server_version="{SERVER_VERSION}"}}') == "1"
    assert value(text, 'etcd_cluster_version{cluster_version="3.6"}') == "1"
    mid = f"{s.member_id:x}"
    assert value(text, f'etcd_network_known_peers{{Local="{mid}",Remote="{mid}"}}') == "1"
    assert value(text, "etcd_server_health_success") == "1"
    assert value(text, "etcd_server_health_failures") == "0"
    assert "# TYPE etcd_server_health_failures counter" in text
    assert "# TYPE etcd_server_proposals_applied_total gauge" in text
    assert "_created" not in text
    assert "process_cpu_seconds_total" in text
    names = re.findall(r"^# HELP (\S+)", text, re.M)
    assert names == sorted(names)
    # counters the server keeps (server.stats) are exported as they are
    assert value(text, "etcd_mvcc_put_total") == str(s.stats.mvcc_put)
    assert value(text, "etcd_server_proposals_pending") == "0"


async def test_metrics_gzip(client: Client) -> None:
    r = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert r.headers["Content-Encoding"] == "gzip"
    assert b"etcd_server_has_leader 1" in gzip.decompress(await r.read())


@dataclass
class Stats:
    leader_changes: int = 3
    proposals_failed: int = 4
    proposals_pending: int = 5
    mvcc_range: int = 6
    mvcc_put: int = 7
    mvcc_delete: int = 8
    mvcc_txn: int = 9


async def test_server_stats_are_exported(etcd: Etcd, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(Stats(), ServerStats)
    monkeypatch.setattr(etcd.server, "stats", Stats(), raising=False)
    text = render(new_registry(etcd.server, HealthStats())).decode()
    for sample, v in [
        ("etcd_server_leader_changes_seen_total", "3"),
        ("etcd_server_proposals_failed_total", "4"),
        ("etcd_server_proposals_pending", "5"),
        ("etcd_mvcc_range_total", "6"),
        ("etcd_mvcc_put_total", "7"),
        ("etcd_mvcc_delete_total", "8"),
        ("etcd_mvcc_txn_total", "9"),
    ]:
        assert value(text, sample) == v
    assert "# TYPE etcd_mvcc_put_total counter" in text


async def test_registries_are_per_server(etcd: Etcd, tmp_path: Path) -> None:
    other = Etcd(member_config(tmp_path / "other", initial_cluster_token="other"))
    await other.start()
    try:
        async with TestClient(TestServer(client_app(other.server))) as c:
            text = await (await c.get("/metrics")).text()
        ids = re.findall(r'etcd_server_id\{server_id="(\w+)"\}', text)
        assert ids == [f"{other.server.member_id:x}"]
        mine = render(new_registry(etcd.server, HealthStats())).decode()
        assert re.findall(r'etcd_server_id\{server_id="(\w+)"\}', mine) == [f"{etcd.server.member_id:x}"]
    finally:
        await other.stop()


def test_unstarted_server_exports_only_what_it_has(tmp_path: Path) -> None:
    e = Etcd(member_config(tmp_path))
    text = render(new_registry(e.server, HealthStats())).decode()
    assert "etcd_server_health_success 0" in text
    assert "etcd_server_has_leader" not in text


@pytest.mark.parametrize(
    ("v", "text"),
    [
        (0, "0"),
        (1, "1"),
        (-1, "-1"),
        (20480, "20480"),
        (123456, "123456"),
        (1e6, "1e+06"),
        (2147483648, "2.147483648e+09"),
        (1.03, "1.03"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5, "-2.5"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_go_float(v: float, text: str) -> None:
    assert go_float(v) == text
