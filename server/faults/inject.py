"""Injecting the faults of server/faults/rules.py where they act.

At the gRPC edge (FaultHook, which the member's interceptor applies to every call's handler, so
the JSON gateway and the gRPC front-ends go through it too), before the request reaches the
server:

    latency    the request waits delay_ms, then is served
    error      the request fails with etcd's own error (code and message), and is not served
    conflict   a Txn comparing MOD(key) == R, R > 0, for a key under the prefix (kube-apiserver's
               GuaranteedUpdate and conditional delete), meets a concurrent writer first: the
               key is rewritten unchanged -- value and lease kept -- at a new revision by a Txn
               "if MOD(key) == R then put(key, ignore_value, ignore_lease)", the write another
               client would make. Watchers see that event; the request's compare then fails, so
               kube-apiserver answers the client's resourceVersion-conditioned update with 409.
               Only compares that would have succeeded count: a request already stale is left
               alone, and the count is of conflicts made.

On the member itself:

    watch_cut  compact to the current revision (through raft: every member compacts), then
               cancel this member's watches meeting the prefix as etcd cancels a watcher that
               fell behind a compaction (canceled, compact_revision set): kube-apiserver's watch
               cache, and the informers above it, must relist
    partition  the peer transport drops raft traffic with the peers named (all: the member is
               cut off) until the fault ends; each message dropped counts
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.errors import EtcdError
from server.faults.rules import ERRORS, METHODS, Fault, Faults, in_range
from server.mvcc.kv import CompactedError
from server.v3rpc.errors import to_grpc_status

__all__ = ["FaultHook", "Injector", "PeerLinks", "Target"]

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]
_KV = "/etcdserverpb.KV/"
_MOD = pb.Compare.CompareTarget.MOD
_EQUAL = pb.Compare.CompareResult.EQUAL


class WatchStore(Protocol):
    def rev(self) -> int: ...
    def first_rev(self) -> int: ...
    def cut_watchers(self, key: bytes, end: bytes) -> int: ...


class Target(Protocol):
    """What injecting needs of the member (EtcdServer)."""

    @property
    def kv(self) -> WatchStore: ...
    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse: ...
    async def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse: ...


class PeerLinks(Protocol):
    """The peer transport: traffic with a peer is dropped while drop(peer ID) is true."""

    drop: Callable[[int], bool] | None


def _end(range_end: bytes) -> bytes | None:
    if not range_end:
        return None
    return b"" if range_end == b"\x00" else range_end


def _txn_ranges(t: pb.TxnRequest) -> Iterator[tuple[bytes, bytes | None]]:
    for c in t.compare:
        yield c.key, _end(c.range_end)
    for op in (*t.success, *t.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            yield op.request_range.key, _end(op.request_range.range_end)
        elif which == "request_put":
            yield op.request_put.key, None
        elif which == "request_delete_range":
            yield op.request_delete_range.key, _end(op.request_delete_range.range_end)
        elif which == "request_txn":
            yield from _txn_ranges(op.request_txn)


def request_ranges(method: str, r: Any) -> Iterator[tuple[bytes, bytes | None]]:
    """The key ranges a KV request touches ([key, end): end None for the key alone, b"" for
    every key >= key)."""
    if method in ("Range", "DeleteRange"):
        yield r.key, _end(r.range_end)
    elif method == "Put":
        yield r.key, None
    elif method == "Txn":
        yield from _txn_ranges(r)


class Injector:
    def __init__(self, faults: Faults, target: Target) -> None:
        self.faults = faults
        self._t = target
        self._links: PeerLinks | None = None
        faults.on_change = self._partitions_changed
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests hold it

    # -- the KV edge ------------------------------------------------------------------------------

    async def before(self, method: str, request: Any) -> EtcdError | None:
        """Act on the faults a request meets; the error to answer instead of serving it, if any."""
        faults = self.faults
        for f in faults.matching(method, request_ranges(method, request)):
            kind = f.spec.kind
            if kind == "latency":
                if faults.claim(f):
                    faults.done(f)
                    await self.sleep(f.spec.delay)
            elif kind == "error":
                if faults.claim(f):
                    faults.done(f)
                    return ERRORS[f.spec.error]()
            elif kind == "conflict":
                await self._conflict(f, request)
        return None

    async def _conflict(self, f: Fault, t: pb.TxnRequest) -> None:
        start = f.spec.prefix
        compares: dict[bytes, pb.Compare] = {}
        for c in t.compare:
            if (
                c.target == _MOD
                and c.result == _EQUAL
                and not c.range_end
                and c.mod_revision > 0
                and in_range(c.key, start, f.end)
            ):
                compares.setdefault(c.key, c)
        if not compares or not self.faults.claim(f):
            return
        rewrite = pb.TxnRequest(
            compare=list(compares.values()),
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=k, ignore_value=True, ignore_lease=True))
                for k in compares
            ],
        )
        try:
            resp = await self._t.txn(rewrite)
        except EtcdError as e:
            log.debug("conflict not injected", extra={"error": str(e)})
            self.faults.refund(f)
            return
        if resp.succeeded:
            self.faults.done(f)
        else:  # already stale: the request conflicts without us
            self.faults.refund(f)

    # -- on the member -------------------------------------------------------------------------

    async def watch_cut(self, f: Fault) -> None:
        """Compact to the current revision, then cut this member's watches meeting the prefix."""
        kv = self._t.kv
        rev = kv.rev()
        if rev > kv.first_rev():
            with contextlib.suppress(CompactedError):  # compacted further meanwhile
                await self._t.compact(pb.CompactionRequest(revision=rev))
        cut = kv.cut_watchers(f.spec.prefix, f.end)
        f.detail = {"compact_revision": kv.first_rev()}
        self.faults.record(f, cut)
        f.ended = "done"

    def attach(self, links: PeerLinks) -> None:
        self._links = links
        self._partitions_changed()

    def _partitions_changed(self) -> None:
        if self._links is not None:
            self._links.drop = self._drops if self.faults.partitions else None

    def _drops(self, peer_id: int) -> bool:
        faults = self.faults
        for f in faults.partitions:
            if f.spec.peers and peer_id not in f.spec.peers:
                continue
            if faults.claim(f):
                faults.done(f)
                return True
        return False


class FaultHook:
    """The member's interceptor calls wrap() on every call's handler (server/v3rpc/interceptor.py
    HandlerHook): KV calls meet the faults set; while none is, the handler passes untouched
    (one check, no extra await)."""

    def __init__(self, injector: Injector) -> None:
        self._inj = injector
        # handler -> (the handler, kept alive for its id, its faulty twin)
        self._wrapped: dict[int, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if not self._inj.faults.kv:
            return handler
        method: str = details.method
        name = method[len(_KV) :] if method.startswith(_KV) else ""
        if name not in METHODS or handler.unary_unary is None:
            return handler
        hit = self._wrapped.get(id(handler))
        if hit is None:
            hit = self._wrapped[id(handler)] = (handler, self._wrap(handler, name))
        return hit[1]

    def _wrap(self, handler: Any, name: str) -> grpc.RpcMethodHandler[Any, Any]:
        inner = handler.unary_unary
        request_cls = getattr(pb, f"{name}Request" if name != "Compact" else "CompactionRequest")
        inj = self._inj

        async def unary(request: Any, context: Ctx) -> Any:
            if isinstance(request, request_cls):  # not a request that failed to decode
                err = await inj.before(name, request)
                if err is not None:
                    await context.abort(*to_grpc_status(err))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
