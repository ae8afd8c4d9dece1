"""The gateway over websockets (etcd wraps it in tmc/grpc-websocket-proxy), petcd next to a real
etcd v3.6: the same messages sent on a websocket to a /v3/ path, the messages that come back
compared after normalizing IDs.

We test these aspects:
- watch: each message a request (create, cancel), each answer line a message; events of puts
  made meanwhile over HTTP;
- lease keepalive: one answer per request;
- an unknown path: grpc-gateway's 404 body as the only message, then the connection closes;
- a unary path: the call waits for its body to end, so no answer comes while the socket is open;
- with auth enabled, the token given as the "Bearer, <token>" subprotocol or as the cookie
  "token" (the only ways a websocket carries it); without it the watch is refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.framework.differential import Differential
from tests.harness.procs import Member

pytestmark = pytest.mark.integration

QUIET = 1.0  # how long "no answer" is waited for
WAIT = 30.0


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


CREATE = {"create_request": {"key": b64("k")}}


class Server:
    def __init__(self, m: Member) -> None:
        self.base = f"http://127.0.0.1:{m.client_port}"
        self.ids: dict[str, str] = {}

    async def post(self, path: str, body: Any, token: str | None = None) -> dict[str, Any]:
        headers = {} if token is None else {"Authorization": token}
        async with aiohttp.ClientSession() as s, s.post(self.base + path, json=body, headers=headers) as r:
            out: dict[str, Any] = json.loads(await r.text())
        if not self.ids and "header" in out:
            h = out["header"]
            self.ids = {h["cluster_id"]: "<cluster>", h["member_id"]: "<member>"}
        return out

    async def watchers(self) -> int:
        async with aiohttp.ClientSession() as s, s.get(self.base + "/metrics") as r:
            (n,) = re.findall(r"^etcd_debugging_mvcc_watcher_total (\S+)$", await r.text(), re.M)
        return int(float(n))

    async def no_watchers(self) -> bool:
        """Whether the server forgets its watchers (waiting for it)."""
        async with asyncio.timeout(WAIT):
            while await self.watchers():
                await asyncio.sleep(0.05)
        return True

    def norm(self, line: str) -> str:
        for old, new in self.ids.items():
            line = line.replace(f'"{old}"', f'"{new}"')
        return re.sub(r'"raft_term":"\d+"', '"raft_term":"T"', line)

    @contextlib.asynccontextmanager
    async def ws(self, path: str, **kw: Any) -> AsyncIterator[Socket]:
        async with aiohttp.ClientSession() as s, s.ws_connect(self.base + path, **kw) as ws:
            yield Socket(self, ws)


class Socket:
    def __init__(self, server: Server, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.server = server
        self.ws = ws

    async def send(self, msg: Any) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def recv(self) -> str:
        msg = await self.ws.receive(timeout=WAIT)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return self.server.norm(str(msg.data))

    async def rest(self) -> list[str]:
        """Every message until the server closes the connection."""
        out: list[str] = []
        while True:
            msg = await self.ws.receive(timeout=WAIT)
            if msg.type != aiohttp.WSMsgType.TEXT:
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                return out
            out.append(self.server.norm(str(msg.data)))

    async def quiet(self) -> bool:
        try:
            msg = await self.ws.receive(timeout=QUIET)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected {msg}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with Differential.start(tmp_path_factory.mktemp("gateway-ws"), "--unsafe-no-fsync") as (p, e):
        yield Server(p), Server(e)


async def both(servers: tuple[Server, Server], scenario: Any) -> Any:
    ours, theirs = await scenario(servers[0]), await scenario(servers[1])
    assert ours == theirs
    return ours


async def test_watch(servers: tuple[Server, Server]) -> None:
    async def scenario(s: Server) -> list[str]:
        await s.post("/v3/kv/put", {"key": b64("ws/a"), "value": b64("0")})
        async with s.ws("/v3/watch") as ws:
            await ws.send({"create_request": {"key": b64("ws/"), "range_end": b64("ws0"), "watch_id": 7}})
            got = [await ws.recv()]
            await s.post("/v3/kv/put", {"key": b64("ws/a"), "value": b64("1")})
            await s.post("/v3/kv/put", {"key": b64("ws/b"), "value": b64("2")})
            got += [await ws.recv(), await ws.recv()]
            await ws.send({"cancel_request": {"watch_id": 7}})
            got.append(await ws.recv())
            await ws.send(CREATE)
            got.append(await ws.recv())
        assert await s.no_watchers()  # the socket closed: the stream and its watchers are gone
        return got

    got = await both(servers, scenario)
    assert '"created":true' in got[0] and '"canceled":true' in got[3] and '"created":true' in got[4], got
    assert all(line.startswith('{"result":') for line in got)


async def test_lease_keepalive(servers: tuple[Server, Server]) -> None:
    async def scenario(s: Server) -> list[str]:
        await s.post("/v3/lease/grant", {"ID": "4242", "TTL": "60"})
        async with s.ws("/v3/lease/keepalive") as ws:
            got = []
            for _ in range(2):
                await ws.send({"ID": "4242"})
                got.append(await ws.recv())
        await s.post("/v3/lease/revoke", {"ID": "4242"})
        return got

    got = await both(servers, scenario)
    assert all('"TTL":"60"' in line for line in got), got


async def test_unknown_path_answers_not_found_and_closes(servers: tuple[Server, Server]) -> None:
    async def scenario(s: Server) -> list[str]:
        async with s.ws("/v3/no/such/path") as ws:
            return await ws.rest()

    assert await both(servers, scenario) == ['{"code":5, "message":"Not Found"}']


async def test_unary_path_answers_nothing_while_open(servers: tuple[Server, Server]) -> None:
    async def scenario(s: Server) -> bool:
        async with s.ws("/v3/kv/range") as ws:
            await ws.send({"key": b64("ws/a")})
            return await ws.quiet()

    assert await both(servers, scenario)


@pytest.fixture(scope="module")
def auth_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with Differential.start(tmp_path_factory.mktemp("gateway-ws-auth"), "--unsafe-no-fsync") as (p, e):
        pair = Server(p), Server(e)
        for s in pair:
            asyncio.run(_enable_auth(s))
        yield pair


async def _enable_auth(s: Server) -> None:
    await s.post("/v3/auth/user/add", {"name": "root", "password": "pw"})
    await s.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
    await s.post("/v3/auth/enable", {})


async def _token(s: Server) -> str:
    return str((await s.post("/v3/auth/authenticate", {"name": "root", "password": "pw"}))["token"])


@pytest.mark.parametrize("how", ["subprotocol", "cookie"])
async def test_token(auth_servers: tuple[Server, Server], how: str) -> None:
    async def scenario(s: Server) -> list[str]:
        token = await _token(s)
        kw: dict[str, Any] = {"protocols": ("Bearer", token)} if how == "subprotocol" else {}
        if how == "cookie":
            kw["headers"] = {"Cookie": f"token={token}"}
        async with s.ws("/v3/watch", **kw) as ws:
            await ws.send(CREATE)
            return [await ws.recv(), str(ws.ws.protocol)]

    created, protocol = await both(auth_servers, scenario)
    assert '"created":true' in created and "canceled" not in created, created
    assert protocol == ("Bearer" if how == "subprotocol" else "None")


async def test_no_token_no_watch(auth_servers: tuple[Server, Server]) -> None:
    async def scenario(s: Server) -> list[str]:
        async with s.ws("/v3/watch") as ws:
            await ws.send(CREATE)
            return [await ws.recv()]

    got = await both(auth_servers, scenario)
    assert "user name is empty" in got[0], got
