"""The member as a client of its own v3 API, in process (etcd's etcdserver/api/v3client): what
v3lock and v3election are built on, as etcd builds them on clientv3.

Requests are validated and their headers filled as the gRPC services do, and run as the caller:
the call's credentials belong to the task serving it (server/auth/context.py), as etcd's
v3client passes the call's context on. clientv3 hands etcd's errors back as bare messages, so
the services built on it answer every refusal with code UNKNOWN and etcd's message
(`clientv3_errors`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.errors import EtcdError
from server.etcdserver.api import Admission, Lessor, RaftKV
from server.mvcc.kv import CompactedError
from server.mvcc.watcher import Channel, WatchResponse
from server.v3rpc.errors import EmptyKeyError, to_grpc_status
from server.v3rpc.header import Header
from server.v3rpc.kv import check_range_request, check_txn_request
from server.v3rpc.watch import WatchableKV

__all__ = ["Client", "LocalClient", "WatchCanceledError", "clientv3_errors"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class WatchCanceledError(EtcdError):
    """The server canceled a watch; the message is its cancel reason (clientv3's wr.Err())."""


class Client(Protocol):
    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse: ...

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse: ...

    async def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse: ...

    async def lease_grant(self, ttl: int) -> int:
        """A new lease's ID."""
        ...

    def watch(self, creq: pb.WatchCreateRequest) -> AsyncGenerator[pb.WatchResponse, None]:
        """The responses of one watch with events (and progress), until the caller stops
        iterating; raises when the watch is canceled (compacted, refused)."""
        ...


class LocalClient:
    """A client of this member without a network hop (etcd's v3client.New): the same checks
    and headers as its KV service, leases granted and keys watched through the member."""

    def __init__(
        self,
        kv: RaftKV,
        lessor: Lessor,
        watchable: WatchableKV,
        auth: Admission,
        hdr: Header,
        *,
        kv_wake: Callable[[], None],
        max_txn_ops: int,
    ) -> None:
        self._kv = kv
        self._lessor = lessor
        self._watchable = watchable
        self._auth = auth
        self._hdr = hdr
        self._kv_wake = kv_wake
        self._max_txn_ops = max_txn_ops

    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        check_range_request(r)
        resp = await self._kv.range(r)
        self._hdr.fill(resp.header)
        return resp

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        check_txn_request(r, self._max_txn_ops)
        resp = await self._kv.txn(r)
        self._hdr.fill(resp.header)
        return resp

    async def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        if not r.key:
            raise EmptyKeyError()
        resp = await self._kv.delete_range(r)
        self._hdr.fill(resp.header)
        return resp

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._lessor.lease_grant(pb.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def watch(self, creq: pb.WatchCreateRequest) -> AsyncGenerator[pb.WatchResponse, None]:
        if self._auth.enabled:
            denied = await self._auth.watch_denied(creq)
            if denied is not None:
                raise WatchCanceledError(denied)
        ready = asyncio.Event()
        ws = self._watchable.new_watch_stream(Channel(on_ready=ready.set))
        end: bytes | None = b"" if creq.range_end == b"\x00" else creq.range_end or None
        try:
            ws.watch(0, creq.key, end, creq.start_revision)
            while True:
                while not ws.ch:
                    ready.clear()
                    await ready.wait()
                for item in ws.ch.drain():
                    assert isinstance(item, WatchResponse)
                    if item.compact_revision:
                        raise CompactedError()
                    yield pb.WatchResponse(header=self._hdr.new(item.revision), events=item.events)
                self._kv_wake()
        finally:
            ws.close()


def clientv3_errors(fn: F) -> F:
    """A unary handler's refusals as a client of etcd's clientv3 sees them, returned by a
    gRPC service: code UNKNOWN, etcd's message."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(self, request, context)
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNKNOWN, to_grpc_status(e)[1])

    return wrapper  # type: ignore[return-value]
