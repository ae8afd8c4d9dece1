"""The Lock service (etcd's etcdserver/api/v3lock): a mutex per name, held by a lease, on top of
the member's own KV, lease and watch API (server/concurrency.py)."""

from __future__ import annotations

from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.v3lockpb import v3lock_pb2 as lockpb
from server.api.v3lockpb import v3lock_pb2_grpc as lockpb_grpc
from server.concurrency import Mutex, session
from server.v3client import Client, clientv3_errors

__all__ = ["LockService"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class LockService(lockpb_grpc.LockServicer):
    def __init__(self, client: Client) -> None:
        self._c = client

    @clientv3_errors
    async def Lock(self, request: lockpb.LockRequest, context: Ctx) -> lockpb.LockResponse:
        m = Mutex(self._c, await session(self._c, request.lease), request.name)
        await m.lock()
        return lockpb.LockResponse(header=m.header, key=m.key)

    @clientv3_errors
    async def Unlock(self, request: lockpb.UnlockRequest, context: Ctx) -> lockpb.UnlockResponse:
        resp = await self._c.delete_range(pb.DeleteRangeRequest(key=request.key))
        return lockpb.UnlockResponse(header=resp.header)
