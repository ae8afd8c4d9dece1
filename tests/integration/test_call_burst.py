"""A burst of calls opened at once, as when thousands of clients reconnect after a restart or a
leader change: every call is served, on petcd as on etcd.

grpcio queues calls the Python side has not yet taken; with the default settings it cancels new
ones at random once 1,000 are queued (the client sees CANCELLED, or INTERNAL "Internal error
from Core" when it was still sending). grpc-go never does, so neither may petcd.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.harness.procs import Member

pytestmark = pytest.mark.integration

STREAMS = 2500
CHANNELS = 25


async def _watch_created(stub: Any, key: bytes) -> str:
    """stub: a grpc.aio WatchStub (the stubs are typed for the synchronous API)."""
    """Open a Watch stream, create one watcher, return "" once it is created, else the error."""
    done = asyncio.Event()

    async def requests() -> AsyncIterator[pb.WatchRequest]:
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key))
        await done.wait()

    call = stub.Watch(requests())
    try:
        async for resp in call:
            if resp.created:
                return ""
        return "stream ended before the watcher was created"
    except grpc.aio.AioRpcError as e:
        return f"{e.code().name}: {e.details()}"
    finally:
        done.set()
        call.cancel()


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
async def test_thousands_of_watch_streams_opened_at_once_are_all_served(kind: str, tmp_path: Path) -> None:
    with Member(kind, tmp_path / f"{kind}.etcd") as m:
        target = m.client_url.split("://")[1]
        channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CHANNELS)
        ]
        try:
            await asyncio.gather(*(ch.channel_ready() for ch in channels))
            stubs = [pb_grpc.WatchStub(ch) for ch in channels]
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(_watch_created(stubs[i % CHANNELS], b"burst/%d" % i) for i in range(STREAMS))
                ),
                timeout=120,
            )
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))
        errors = [r for r in results if r]
        assert not errors, f"{len(errors)} of {STREAMS} streams failed, e.g. {errors[0]!r}"
        assert m.proc is not None and m.proc.poll() is None
