"""The Watch service (etcd's api/v3rpc/watch.go): one bidirectional stream, many watchers.

Per stream, a receive task handles create / cancel / progress requests as they arrive and the
stream's generator sends what the watchers produce, in channel order. Because requests are
handled synchronously on the event loop, a watcher's `created` response is queued before any
event of it can be, and responses leave in request order.

Event responses are written as protobuf bytes here rather than as messages: the events of a
revision are encoded once for every watcher they go to (mvcc's SharedEvents), the header once
per revision, and a response is those bytes with its watch ID between them. When the sender
finds several event responses of one watcher waiting together (the client or the transport was
slower than the writes), it sends them as one response, as etcd sends a watcher that fell
behind its events of many revisions at once; progress and control responses are never
crossed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.api.mvccpb.kv_pb2 import Event
from server.errors import EtcdError
from server.etcdserver.api import Admission
from server.failpoint import failpoint
from server.mvcc.kv import CompactedError, RangeOptions, TxnRead
from server.mvcc.watcher import INVALID_WATCH_ID, Channel, FilterFunc, WatchResponse, WatchStream
from server.v3rpc.errors import WATCH_CANCEL_REASONS, go_status_text, to_grpc_status
from server.v3rpc.header import Header
from server.v3rpc.util import StreamAbort, ends_on_bad_request

__all__ = ["WatchService", "WatchableKV"]

Ctx = grpc.aio.ServicerContext[Any, Any]

MIN_PROGRESS_INTERVAL = 0.1
# event responses of one watcher merged into one stay under this many bytes of events
MAX_MERGED_BYTES = 1 << 20
# WatchResponse's fields on the wire: header (1), watch_id (2), events (11), length-delimited
# or varint
_HEADER_TAG = b"\x0a"
_WATCH_ID_TAG = b"\x10"
_EVENT_TAG = b"\x5a"
# created (3) and canceled (4) set to true
_CREATED = b"\x18\x01"
_CANCELED = b"\x20\x01"
FP_BEFORE_SEND = failpoint("beforeSendWatchResponse")
# watch ID -> WatchResponse field 2, shared by every stream (IDs count up from 0 per stream);
# holds IDs below _ID_WIRES_MAX only
_ID_WIRES: dict[int, bytes] = {}
_ID_WIRES_MAX = 1 << 14


def _filter_noput(ev: Event) -> bool:
    return ev.type == Event.PUT


def _filter_nodelete(ev: Event) -> bool:
    return ev.type == Event.DELETE


_FILTERS: dict[int, FilterFunc] = {
    pb.WatchCreateRequest.NOPUT: _filter_noput,
    pb.WatchCreateRequest.NODELETE: _filter_nodelete,
}


def progress_interval(seconds: float) -> float:
    """etcd's period between progress notifications: the configured interval plus up to 10%."""
    interval = max(seconds, MIN_PROGRESS_INTERVAL)
    return interval + random.uniform(0, interval / 10)


class WatchableKV(Protocol):
    def new_watch_stream(self, ch: Channel | None = None) -> WatchStream: ...

    def read(self) -> TxnRead: ...


class WatchService(pb_grpc.WatchServicer):
    """kv_wake: a stream drained its channel (watchers that fell behind may fit again)."""

    def __init__(
        self,
        kv: WatchableKV,
        auth: Admission,
        hdr: Header,
        *,
        kv_wake: Callable[[], None],
        progress_notify_interval_s: float,
        max_bytes: int,
    ) -> None:
        self._kv = kv
        self._auth = auth
        self._hdr = hdr
        self._kv_wake = kv_wake
        self._progress_s = progress_notify_interval_s
        self._max_bytes = max_bytes
        # the last header encoded: (revision, raft term, field 1 on the wire)
        self._header: tuple[int, int, bytes] = (-1, -1, b"")

    def header_wire(self, rev: int) -> bytes:
        """The response header at rev as WatchResponse field 1 (shared by every stream)."""
        term = self._hdr.term()
        cached_rev, cached_term, wire = self._header
        if cached_rev != rev or cached_term != term:
            raw = self._hdr.new(rev).SerializeToString()
            wire = _HEADER_TAG + _varint(len(raw)) + raw
            self._header = (rev, term, wire)
        return wire

    @ends_on_bad_request
    async def Watch(  # type: ignore[override]  # the stubs know only messages
        self, request_iterator: AsyncIterator[pb.WatchRequest], context: Ctx
    ) -> AsyncIterator[pb.WatchResponse | bytes]:
        """Responses are pb.WatchResponse messages or their encoding (bytes): the registry's
        serializer passes bytes through.

        The receive task handles requests; this generator sends what the channel holds, in
        order. A request the registry could not decode (StreamAbort, raised in the receive
        task) ends the stream with its status once the responses queued before it are sent."""
        stream = _ServerWatchStream(self)
        reader = asyncio.create_task(stream.recv_loop(request_iterator))
        ch = stream._ch
        kv_wake = self._kv_wake
        interval = progress_interval(self._progress_s)
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        reader.add_done_callback(stream._wake_sender)
        try:
            try:
                while True:
                    if not ch:
                        if reader.done():
                            # a receive error ends the stream; a client that only half-closed
                            # its side still gets its events until it cancels (as with etcd)
                            reader.result()
                        # woken by a response in the channel, the reader's end or the tick timer
                        # (armed for next_tick until it fires or next_tick moves)
                        if stream._timer is None:
                            stream._timer = loop.call_at(next_tick, stream._tick_due)
                        stream._wake = wake = loop.create_future()
                        try:
                            await wake
                        finally:
                            stream._wake = None
                        if loop.time() >= next_tick:
                            stream._tick()
                            next_tick = loop.time() + interval
                            if stream._timer is not None:
                                stream._timer.cancel()
                                stream._timer = None
                        continue
                    items = ch.drain()
                    if len(items) >= ch.capacity:
                        # the channel filled up: etcd's watchers would be victims by now, and
                        # their pending revisions sent together; below that, one response per
                        # revision as etcd
                        items = _merged(items)
                    for item in items:
                        if type(item) is WatchResponse:
                            data = stream._wire(item)
                            if data is None:
                                for resp in stream._to_pb(item):
                                    if FP_BEFORE_SEND.armed:
                                        await FP_BEFORE_SEND.hit_async()
                                    yield resp
                                continue
                            if FP_BEFORE_SEND.armed:
                                await FP_BEFORE_SEND.hit_async()
                            yield data
                        else:
                            # created and canceled responses (bytes), or messages
                            assert type(item) is bytes or isinstance(item, pb.WatchResponse)
                            if FP_BEFORE_SEND.armed:
                                await FP_BEFORE_SEND.hit_async()
                            yield item
                    kv_wake()
            finally:
                if stream._timer is not None:
                    stream._timer.cancel()
                    stream._timer = None
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
                stream.close()
        except StreamAbort as e:
            await context.abort(e.code, e.message)


class _ServerWatchStream:
    def __init__(self, svc: WatchService) -> None:
        self._svc = svc
        # what the sender awaits while the channel is empty (None while it is not waiting)
        self._wake: asyncio.Future[None] | None = None
        # wakes the sender at its next progress tick (None once fired, or not armed)
        self._timer: asyncio.TimerHandle | None = None
        self._ch = Channel(on_ready=self._wake_sender)
        self._ws: WatchStream = svc._kv.new_watch_stream(self._ch)
        # watch ID -> whether it asked for progress notifications / prev_kv / fragments;
        # progress[id] is reset to False when events were sent since the last tick
        self._progress: dict[int, bool] = {}
        self._prev_kv: set[int] = set()
        self._fragment: set[int] = set()
        self._max_bytes = svc._max_bytes

    def header(self, rev: int) -> pb.ResponseHeader:
        return self._svc._hdr.new(rev)

    # -- requests ---------------------------------------------------------------------------------

    async def recv_loop(self, requests: AsyncIterator[pb.WatchRequest]) -> None:
        async for req in requests:
            which = req.WhichOneof("request_union")
            if which == "create_request":
                creq = req.create_request
                # auth: a user that may read the watched range (else a canceled watch)
                auth = self._svc._auth
                denied = await auth.watch_denied(creq) if auth.enabled else None
                self._create(creq, None if denied is None else go_status_text(denied))
            elif which == "cancel_request":
                self._cancel(req.cancel_request.watch_id)
            elif which == "progress_request":
                self._ws.request_progress_all()

    def _create(self, creq: pb.WatchCreateRequest, denied: str | None = None) -> None:
        key = creq.key or b"\x00"
        start_rev = creq.start_revision
        if start_rev < 0:
            self._ch.put_control(
                pb.WatchResponse(
                    header=self.header(self._ws.rev()),
                    watch_id=INVALID_WATCH_ID,
                    created=True,
                    canceled=True,
                    cancel_reason=to_grpc_status(CompactedError())[1],
                )
            )
            return
        if denied is not None:
            self._ch.put_control(
                pb.WatchResponse(
                    header=self.header(self._ws.rev()),
                    watch_id=INVALID_WATCH_ID,
                    created=True,
                    canceled=True,
                    cancel_reason=denied,
                )
            )
            return
        end: bytes | None = creq.range_end or None
        if end == b"\x00":
            end = b""
        filters = tuple(_FILTERS[f] for f in creq.filters if f in _FILTERS) if creq.filters else ()
        try:
            watch_id = self._ws.watch(creq.watch_id, key, end, start_rev, filters)
        except EtcdError as e:
            self._ch.put_control(
                pb.WatchResponse(
                    header=self.header(self._ws.rev()),
                    watch_id=INVALID_WATCH_ID,
                    created=True,
                    canceled=True,
                    cancel_reason=WATCH_CANCEL_REASONS.get(type(e), str(e)),
                )
            )
            return
        if creq.progress_notify:
            self._progress[watch_id] = True
        if creq.prev_kv:
            self._prev_kv.add(watch_id)
        if creq.fragment:
            self._fragment.add(watch_id)
        self._ch.put_control(self._svc.header_wire(self._ws.rev()) + _id_wire(watch_id) + _CREATED)

    def _cancel(self, watch_id: int) -> None:
        try:
            self._ws.cancel(watch_id)
        except EtcdError:
            return
        self._ch.put_control(self._svc.header_wire(self._ws.rev()) + _id_wire(watch_id) + _CANCELED)
        self._progress.pop(watch_id, None)
        self._prev_kv.discard(watch_id)
        self._fragment.discard(watch_id)

    # -- responses --------------------------------------------------------------------------------

    def _wake_sender(self, _: object = None) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _tick_due(self) -> None:
        self._timer = None
        self._wake_sender()

    def _tick(self) -> None:
        """Periodic progress: watchers that asked and saw no events since the last tick."""
        for watch_id, idle in self._progress.items():
            if idle:
                self._ws.request_progress(watch_id)
            self._progress[watch_id] = True

    def _wire(self, wr: WatchResponse) -> bytes | None:
        """wr encoded for the wire from its shared parts; None when it must go as messages
        (_to_pb: compaction, prev_kv, fragments)."""
        watch_id = wr.watch_id
        if wr.events and watch_id in self._progress:
            self._progress[watch_id] = False
        if wr.compact_revision or watch_id in self._prev_kv or watch_id in self._fragment:
            return None
        return self._svc.header_wire(wr.revision) + _id_wire(watch_id) + _events_wire(wr)

    def _to_pb(self, wr: WatchResponse) -> list[pb.WatchResponse]:
        resp = pb.WatchResponse(
            header=self.header(wr.revision),
            watch_id=wr.watch_id,
            compact_revision=wr.compact_revision,
            canceled=wr.compact_revision != 0,
        )
        if wr.events:
            if wr.watch_id in self._prev_kv:
                for ev in wr.events:
                    out = resp.events.add()
                    out.CopyFrom(ev)
                    if not (ev.type == Event.PUT and ev.kv.create_revision == ev.kv.mod_revision):
                        prev = self._prev(ev)
                        if prev is not None:
                            out.prev_kv.CopyFrom(prev)
            else:
                resp.events.extend(wr.events)
        if wr.watch_id in self._fragment and len(resp.events) > 1 and resp.ByteSize() >= self._max_bytes:
            return self._fragments(resp)
        return [resp]

    def _prev(self, ev: Event) -> Any:
        try:
            kvs = self._svc._kv.read().range(ev.kv.key, None, RangeOptions(rev=ev.kv.mod_revision - 1)).kvs
        except CompactedError:
            return None
        return kvs[0] if kvs else None

    def _fragments(self, resp: pb.WatchResponse) -> list[pb.WatchResponse]:
        """Split events over responses below the size limit (never splitting one event); every
        part but the last has fragment=true."""
        parts: list[pb.WatchResponse] = []
        events = list(resp.events)
        idx = 0
        while idx < len(events):
            cur = pb.WatchResponse()
            cur.CopyFrom(resp)
            del cur.events[:]
            cur.fragment = True
            while idx < len(events):
                cur.events.append(events[idx])
                if len(cur.events) > 1 and cur.ByteSize() >= self._max_bytes:
                    del cur.events[-1]
                    break
                idx += 1
            parts.append(cur)
        parts[-1].fragment = False
        return parts

    def close(self) -> None:
        self._ws.close()


def _id_wire(watch_id: int) -> bytes:
    """WatchResponse field 2 (empty for ID 0, as proto3 leaves a zero out)."""
    wire = _ID_WIRES.get(watch_id)
    if wire is None:
        wire = _WATCH_ID_TAG + _varint(watch_id) if watch_id else b""
        if 0 <= watch_id < _ID_WIRES_MAX:
            _ID_WIRES[watch_id] = wire
    return wire


def _varint(n: int) -> bytes:
    """A protobuf varint; negative int64s take ten bytes (two's complement)."""
    if 0 <= n <= 0x7F:
        return _SMALL_VARINTS[n]
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# the one-byte varints, 0 to 127
_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]


def _event_wire(ev: Event) -> bytes:
    raw = ev.SerializeToString()
    return _EVENT_TAG + _varint(len(raw)) + raw


def _events_wire(wr: WatchResponse) -> bytes:
    """wr's events as WatchResponse field 11, encoded once when they are shared."""
    shared = wr.shared
    if shared is None:
        return b"".join(map(_event_wire, wr.events))
    if shared.wire is None:
        shared.wire = b"".join(map(_event_wire, shared.events))
    return shared.wire


def _merged(items: list[object]) -> list[object]:
    """Consecutive event responses (between progress or control responses) merged per watcher,
    each watcher's events in order, the merged response at the last one's revision."""
    out: list[object] = []
    run: dict[int, tuple[WatchResponse, int]] = {}

    def flush() -> None:
        out.extend(wr for wr, _ in run.values())
        run.clear()

    for item in items:
        if not isinstance(item, WatchResponse) or not item.events or item.compact_revision:
            flush()
            out.append(item)
            continue
        size = sum(ev.ByteSize() for ev in item.events)
        prev = run.get(item.watch_id)
        if prev is not None and prev[1] + size > MAX_MERGED_BYTES:
            flush()
            prev = None
        if prev is None:
            run[item.watch_id] = (item, size)
        else:
            merged = WatchResponse(item.watch_id, prev[0].events + item.events, item.revision)
            run[item.watch_id] = (merged, prev[1] + size)
    flush()
    return out
