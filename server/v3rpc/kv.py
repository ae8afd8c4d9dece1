"""The KV service (etcd's api/v3rpc/key.go): request validation, then the server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.etcdserver.api import Admission, RaftKV
from server.v3rpc.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    InvalidSortOptionError,
    LeaseProvidedError,
    RequestKeyNotFoundError,
    TooManyOpsError,
    ValueProvidedError,
)
from server.v3rpc.header import Header
from server.v3rpc.util import unary

__all__ = ["KVService", "check_txn_request"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class KVService(pb_grpc.KVServicer):
    def __init__(self, kv: RaftKV, auth: Admission, hdr: Header, *, max_txn_ops: int) -> None:
        self._kv = kv
        self._auth = auth
        self._hdr = hdr
        self._max_txn_ops = max_txn_ops

    @unary
    async def Range(self, request: pb.RangeRequest, context: Ctx) -> pb.RangeResponse:
        check_range_request(request)
        resp = await self._kv.range(request)
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def Put(self, request: pb.PutRequest, context: Ctx) -> pb.PutResponse:
        check_put_request(request)
        resp = await self._kv.put(request)
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def DeleteRange(self, request: pb.DeleteRangeRequest, context: Ctx) -> pb.DeleteRangeResponse:
        if not request.key:
            raise EmptyKeyError()
        resp = await self._kv.delete_range(request)
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def Txn(self, request: pb.TxnRequest, context: Ctx) -> pb.TxnResponse:
        check_txn_request(request, self._max_txn_ops)
        check_intervals(request.success)
        check_intervals(request.failure)
        resp = await self._kv.txn(request)
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def Compact(self, request: pb.CompactionRequest, context: Ctx) -> pb.CompactionResponse:
        await self._auth.check_admin()  # auth: root only
        resp = await self._kv.compact(request)
        self._hdr.fill(resp.header)
        return resp


def check_range_request(r: pb.RangeRequest) -> None:
    if not r.key:
        raise EmptyKeyError()
    if r.sort_order not in pb.RangeRequest.SortOrder.values():
        raise InvalidSortOptionError()
    if r.sort_target not in pb.RangeRequest.SortTarget.values():
        raise InvalidSortOptionError()


def check_put_request(r: pb.PutRequest) -> None:
    if not r.key:
        raise EmptyKeyError()
    if r.ignore_value and r.value:
        raise ValueProvidedError()
    if r.ignore_lease and r.lease != 0:
        raise LeaseProvidedError()


def check_txn_request(r: pb.TxnRequest, max_txn_ops: int) -> None:
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops:
        raise TooManyOpsError()
    for c in r.compare:
        if not c.key:
            raise EmptyKeyError()
    for op in (*r.success, *r.failure):
        _check_request_op(op, max_txn_ops - opc)


def _check_request_op(op: pb.RequestOp, max_txn_ops: int) -> None:
    which = op.WhichOneof("request")
    if which == "request_range":
        check_range_request(op.request_range)
    elif which == "request_put":
        check_put_request(op.request_put)
    elif which == "request_delete_range":
        if not op.request_delete_range.key:
            raise EmptyKeyError()
    elif which == "request_txn":
        check_txn_request(op.request_txn, max_txn_ops)
    else:
        raise RequestKeyNotFoundError()


class _Intervals:
    """Deleted key ranges as [start, end) (end None: the single key start). Like etcd, range_end
    is taken literally here: a "\\0" (every key >= key) delete conflicts with no put."""

    def __init__(self) -> None:
        self.spans: list[tuple[bytes, bytes | None]] = []

    def add(self, key: bytes, range_end: bytes) -> None:
        self.spans.append((key, range_end or None))

    def contains(self, k: bytes) -> bool:
        return any(k == start if end is None else start <= k < end for start, end in self.spans)


def check_intervals(reqs: Sequence[pb.RequestOp]) -> tuple[set[bytes], _Intervals]:
    """Puts and deletes of one txn level (and the levels below) must not touch the same key;
    the two branches of a nested txn may put the same key (only one runs)."""
    dels = _Intervals()
    for op in reqs:
        if op.HasField("request_delete_range"):
            d = op.request_delete_range
            dels.add(d.key, d.range_end)
    puts: set[bytes] = set()
    for op in reqs:
        if not op.HasField("request_txn"):
            continue
        puts_then, dels_then = check_intervals(op.request_txn.success)
        puts_else, dels_else = check_intervals(op.request_txn.failure)
        for k in puts_then:
            if k in puts or dels.contains(k):
                raise DuplicateKeyError()
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or dels.contains(k):
                raise DuplicateKeyError()
            puts.add(k)
        dels.spans.extend(dels_then.spans)
        dels.spans.extend(dels_else.spans)
    for op in reqs:
        if not op.HasField("request_put"):
            continue
        k = op.request_put.key
        if k in puts or dels.contains(k):
            raise DuplicateKeyError()
        puts.add(k)
    return puts, dels
