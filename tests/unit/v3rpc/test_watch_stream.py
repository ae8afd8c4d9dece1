"""The Watch servicer (server/v3rpc/watch.py) over a real WatchableStore, no network.

We test these aspects:
- created and canceled responses leave encoded (bytes) and are byte for byte the messages etcd
  sends (header at the current revision, watch ID left out when 0, the flag);
- a created response is sent before any event of its watcher, responses in request order;
- progress notifications keep coming tick after tick (the sender's tick timer is armed again
  after it fired), and not for a watcher that did not ask for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.errors import AuthError
from server.auth.store import AuthInfo
from server.backend.lmdb_backend import LmdbBackend
from server.mvcc.watchable_store import WatchableStore
from server.v3rpc import watch
from server.v3rpc.header import Header
from tests.unit.mvcc.store_helpers import FakeLessor
from tests.unit.v3rpc.fakes import Status


@dataclass
class NoAuth:
    """Admission with auth disabled."""

    enabled: bool = False

    async def auth_info(self) -> AuthInfo | None:
        return None

    async def require_auth_info(self) -> None:
        return None

    async def check_admin(self) -> None:
        return None

    async def watch_denied(self, creq: pb.WatchCreateRequest) -> AuthError | None:
        return None


class Requests:
    """A stream's requests, fed by the test; ends when closed."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> pb.WatchRequest:
        req = await self.q.get()
        if req is None:
            raise StopAsyncIteration
        return req


class Stream:
    def __init__(self, svc: watch.WatchService) -> None:
        self.requests = Requests()
        self.responses: AsyncIterator[pb.WatchResponse | bytes] = svc.Watch(self.requests, object())  # type: ignore[arg-type]
        self.raw: list[pb.WatchResponse | bytes] = []

    def create(self, key: bytes, watch_id: int = 0, **kw: Any) -> None:
        creq = pb.WatchCreateRequest(key=key, watch_id=watch_id, **kw)
        self.requests.q.put_nowait(pb.WatchRequest(create_request=creq))

    def cancel(self, watch_id: int) -> None:
        self.requests.q.put_nowait(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    async def recv(self) -> pb.WatchResponse:
        item = await anext(self.responses)
        self.raw.append(item)
        return pb.WatchResponse.FromString(item) if isinstance(item, bytes) else item


@pytest.fixture
def store(tmp_path: Path) -> Any:
    backend = LmdbBackend(str(tmp_path / "db"), map_size=1 << 26, fsync=False)
    s = WatchableStore(backend, FakeLessor())
    yield s
    backend.close()


def put(store: WatchableStore, key: bytes, value: bytes) -> int:
    txn = store.write()
    txn.put(key, value, 0)
    txn.end()
    return store.rev()


def service(store: WatchableStore, progress_s: float = 600.0) -> watch.WatchService:
    return watch.WatchService(
        store,
        NoAuth(),
        Header(Status(), store.rev),
        kv_wake=lambda: None,
        progress_notify_interval_s=progress_s,
        max_bytes=1 << 20,
    )


def header(rev: int) -> pb.ResponseHeader:
    s = Status()
    return pb.ResponseHeader(cluster_id=s.cluster_id, member_id=s.member_id, revision=rev, raft_term=s.term)


async def test_created_and_canceled_are_etcds_messages_byte_for_byte(store: WatchableStore) -> None:
    rev = put(store, b"a", b"1")
    s = Stream(service(store))
    ids = [0, 1, 127, 128, 300, 1 << 40]
    for watch_id in ids:
        s.create(b"a", watch_id=watch_id)
    got = [await s.recv() for _ in ids]
    s.cancel(128)
    s.cancel(0)
    got += [await s.recv(), await s.recv()]
    want = [pb.WatchResponse(header=header(rev), watch_id=i, created=True) for i in ids]
    want += [pb.WatchResponse(header=header(rev), watch_id=i, canceled=True) for i in (128, 0)]
    assert got == want
    assert all(type(r) is bytes for r in s.raw)
    assert s.raw == [w.SerializeToString() for w in want]
    await s.responses.aclose()  # type: ignore[attr-defined]


async def test_created_comes_before_the_watchers_events_in_request_order(store: WatchableStore) -> None:
    rev = put(store, b"a", b"1")
    s = Stream(service(store))
    s.create(b"a")
    s.create(b"b")
    first = await s.recv()
    put(store, b"a", b"2")
    second, event = await s.recv(), await s.recv()
    assert (first.watch_id, first.created, first.header.revision) == (0, True, rev)
    assert (second.watch_id, second.created) == (1, True)
    assert (event.watch_id, [e.kv.value for e in event.events], event.header.revision) == (0, [b"2"], rev + 1)
    await s.responses.aclose()  # type: ignore[attr-defined]


async def test_progress_notifications_tick_after_tick(store: WatchableStore) -> None:
    rev = put(store, b"a", b"1")
    s = Stream(service(store, progress_s=watch.MIN_PROGRESS_INTERVAL))
    s.create(b"quiet")
    s.create(b"a", progress_notify=True)
    created = [await s.recv(), await s.recv()]
    ticks = [await s.recv() for _ in range(3)]
    assert [(r.watch_id, r.created) for r in created] == [(0, True), (1, True)]
    assert [(r.watch_id, r.header.revision, list(r.events)) for r in ticks] == [(1, rev, [])] * 3
    await s.responses.aclose()  # type: ignore[attr-defined]
