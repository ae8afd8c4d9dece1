"""Mutex.lock cancelled while its acquiring txn is in flight: the txn still applies (the key is
written), so the mutex removes the key once the txn is done; etcd's Mutex.Lock returns the
context's error there and leaves the key behind until its lease ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.concurrency import Mutex


class SlowTxnClient:
    """Applies each txn's put after `release` is set; records what is deleted."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.keys: set[bytes] = set()

    async def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        put = req.success[0].request_put
        self.keys.add(put.key)
        await self.release.wait()
        resp = pb.TxnResponse(succeeded=True, header=pb.ResponseHeader(revision=2))
        resp.responses.add().response_put.SetInParent()
        resp.responses.add().response_range.kvs.add(key=put.key, create_revision=2)
        return resp

    async def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        self.keys.discard(req.key)
        return pb.DeleteRangeResponse()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call {name}")


async def test_cancelled_during_acquire_removes_its_key() -> None:
    c = SlowTxnClient()
    m = Mutex(c, 0x1234, b"lock")
    task = asyncio.ensure_future(m.lock())
    while not c.keys:
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert c.keys == {b"lock/1234"}  # the txn has not finished yet
    c.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.keys == set()


async def test_not_cancelled_holds_the_lock() -> None:
    c = SlowTxnClient()
    c.release.set()
    m = Mutex(c, 0x1234, b"lock")
    await m.lock()
    assert m.key == b"lock/1234" and c.keys == {b"lock/1234"}
