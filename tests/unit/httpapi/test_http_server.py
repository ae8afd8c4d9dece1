"""The HTTP listeners as server/embed/etcd.py starts and stops them."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from server.api.etcdserverpb import rpc_pb2 as pb
from server.embed.etcd import Etcd
from server.httpapi.http_server import HttpServers
from tests.unit.httpapi.conftest import member_config


async def _get(url: str, **kw: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


async def test_etcd_serves_http_on_its_own_listeners(tmp_path: Path) -> None:
    cfg = member_config(
        tmp_path,
        listen_client_http_urls=("http://127.0.0.1:0", "http://localhost:0"),
        listen_metrics_urls=("http://127.0.0.1:0",),
    )
    async with Etcd(cfg) as e:
        assert e.http is not None
        client_ports, metrics_ports = e.http.client_http_ports, e.http.metrics_ports
        assert len(client_ports) == 2 and len(metrics_ports) == 1
        assert 0 not in client_ports + metrics_ports
        for port in client_ports:
            assert await _get(f"http://127.0.0.1:{port}/health") == (200, '{"health":"true","reason":""}')
            status, text = await _get(f"http://127.0.0.1:{port}/version")
            assert status == 200 and "etcdserver" in text
        status, text = await _get(f"http://127.0.0.1:{metrics_ports[0]}/metrics")
        assert status == 200 and "etcd_server_has_leader 1" in text
        assert (await _get(f"http://127.0.0.1:{metrics_ports[0]}/version"))[0] == 404
        # the health endpoints of both listeners count into the same metrics
        status, text = await _get(f"http://127.0.0.1:{client_ports[0]}/metrics")
        assert "etcd_server_health_success 2" in text
    # stopped: the ports are free again
    for port in client_ports + metrics_ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert e.http.client_http_ports == []


async def test_no_http_urls_no_listeners(tmp_path: Path) -> None:
    async with Etcd(member_config(tmp_path)) as e:
        assert e.http is not None
        assert e.http.client_http_ports == [] and e.http.metrics_ports == []


async def test_failed_http_start_leaves_nothing_running(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = member_config(
            tmp_path,
            listen_client_http_urls=("http://127.0.0.1:0",),
            listen_metrics_urls=(f"http://127.0.0.1:{port}",),
        )
        e = Etcd(cfg)
        with pytest.raises(OSError):
            await e.start()
    assert e.http is not None
    assert e.http.client_http_ports == [] and e.http.metrics_ports == []
    # the member was stopped: its data directory can be opened again
    async with Etcd(member_config(tmp_path)) as again:
        assert again.server.kv.rev() == 1


async def test_https_needs_a_certificate(tmp_path: Path) -> None:
    e = Etcd(member_config(tmp_path, listen_client_http_urls=("https://127.0.0.1:0",)))
    with pytest.raises(ValueError, match="--cert-file"):
        await e.start()


async def test_https(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    cfg = member_config(
        tmp_path,
        listen_client_http_urls=("https://127.0.0.1:0",),
        cert_file=str(cert_file),
        key_file=str(key_file),
    )
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with Etcd(cfg) as e:
        assert e.http is not None
        (port,) = e.http.client_http_ports
        assert (await _get(f"https://127.0.0.1:{port}/livez", ssl=client_ctx)) == (200, "ok\n")


async def test_http_servers_construct_without_starting(tmp_path: Path) -> None:
    e = Etcd(member_config(tmp_path, listen_client_http_urls=("http://127.0.0.1:0",)))
    await e.server.start()
    try:
        servers = HttpServers(e.cfg, e.server)
        assert servers.client_http_ports == []
        await servers.stop()  # stopping what never started is a no-op
    finally:
        await e.server.stop()


async def test_stop_ends_open_streams(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A keepalive stream whose body never ends does not hold up Etcd.stop()."""
    cfg = member_config(tmp_path, listen_client_http_urls=("http://127.0.0.1:0",))
    e = Etcd(cfg)
    await e.start()
    assert e.http is not None
    (port,) = e.http.client_http_ports
    await e.server.lease_grant(pb.LeaseGrantRequest(ID=5, TTL=30))
    forever = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"ID":5}'
        await forever.wait()

    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"http://127.0.0.1:{port}/v3/lease/keepalive", data=body())
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert b'"TTL":"30"' in line
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(e.stop(), 10)
        assert loop.time() - started < 5
        resp.close()
    assert not [
        r
        for r in caplog.records
        if r.name.startswith(("server.httpapi", "aiohttp")) and r.levelno >= logging.ERROR
    ]


async def test_client_going_away_mid_stream_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = member_config(tmp_path, listen_client_http_urls=("http://127.0.0.1:0",))
    async with Etcd(cfg) as e:
        assert e.http is not None
        (port,) = e.http.client_http_ports
        await e.server.lease_grant(pb.LeaseGrantRequest(ID=6, TTL=30))
        forever = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b'{"ID":6}'
            await forever.wait()

        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}/v3/lease/keepalive", data=body())
            await asyncio.wait_for(resp.content.readline(), 5)
            resp.close()
        await asyncio.sleep(0.2)
        assert (await _get(f"http://127.0.0.1:{port}/health"))[0] == 200
    assert not [
        r
        for r in caplog.records
        if r.name.startswith(("server.httpapi", "aiohttp")) and r.levelno >= logging.ERROR
    ]
