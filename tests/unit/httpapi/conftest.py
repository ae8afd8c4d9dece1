"""An in-process member and an aiohttp test client on its HTTP apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.config import Config
from server.embed.etcd import Etcd
from server.httpapi.health import HealthStats
from server.httpapi.http_server import client_app, metrics_app
from tests.harness.procs import free_port


def member_config(tmp_path: Path, **kw: object) -> Config:
    peer = f"http://127.0.0.1:{free_port()}"
    return Config(
        data_dir=str(tmp_path / "member"),
        listen_client_urls=("http://127.0.0.1:0",),
        listen_peer_urls=(peer,),
        initial_advertise_peer_urls=(peer,),
        unsafe_no_fsync=True,
    ).with_(**kw)


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[Etcd]:
    e = Etcd(member_config(tmp_path))
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


@pytest.fixture
def stats() -> HealthStats:
    return HealthStats()


@pytest.fixture
async def client(etcd: Etcd, stats: HealthStats) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(client_app(etcd.server, stats))) as c:
        yield c


@pytest.fixture
async def metrics_client(
    etcd: Etcd, stats: HealthStats
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(metrics_app(etcd.server, stats))) as c:
        yield c
