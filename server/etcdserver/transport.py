"""Peer transport: raft messages, snapshots and small requests between members, over TCP on
--listen-peer-urls (etcd's rafthttp, reduced to what petcd needs).

Every connection starts with a handshake, then carries one kind of traffic:

    client -> server:  b"PETCD1" | kind (1 byte) | from member ID (8, BE) | cluster ID (8, BE)
    server -> client:  status (1 byte: 0 ok, 1 wrong cluster, 2 removed member)

    kind R (raft stream): frames [4-byte BE length | raftpb.Message], one way, for as long as the
        connection lives; each member keeps one outbound stream per peer.
    kind S (snapshot): [4-byte length | MsgSnap] [8-byte length | backend database bytes];
        the server answers one byte (0 ok, 1 failed) once the database is saved.
    kind Q (request): [4-byte length | peerpb.PeerRequest] -> [4-byte length | peerpb.PeerResponse]
        (server/api/peerpb/peer.proto; errors by server/etcdserver/peer.py's table).

Backpressure: each peer has a bounded outbound queue; when it is full, new messages are dropped
(raft retransmits) and the peer is reported unreachable, so a slow or dead peer never blocks the
raft loop or grows memory without bound.

A partition (server/faults): while `drop` is set, traffic to and from the peers it names is
dropped here -- messages not sent, received ones discarded, snapshots and requests refused -- as
if the network between them were cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from server.api.peerpb.peer_pb2 import PeerRequest, PeerResponse
from server.api.raftpb.raftcodec import marshal_message, unmarshal_message
from server.raft.raftpb import Message, MessageType
from server.urls import host_port

__all__ = ["PeerHandler", "Transport", "TransportError", "peer_request"]

log = logging.getLogger(__name__)

MAGIC = b"PETCD1"
_HELLO = struct.Struct(">6scQQ")
_LEN4 = struct.Struct(">I")
_LEN8 = struct.Struct(">Q")
KIND_RAFT, KIND_SNAP, KIND_REQUEST = b"R", b"S", b"Q"
OK, WRONG_CLUSTER, REMOVED = 0, 1, 2
# outbound messages queued per peer before new ones are dropped (etcd's streamBufSize)
PEER_QUEUE_LEN = 4096
MAX_FRAME = 64 * 1024 * 1024
DIAL_TIMEOUT = 1.0
RECONNECT_BACKOFF = 0.1


class TransportError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        # the peer's refusal (WRONG_CLUSTER, REMOVED), 0 for other failures
        self.status = status


def _hostport(url: str) -> tuple[str, int]:
    try:
        return host_port(url)
    except ValueError as e:
        raise TransportError(f"peer URL needs host and port: {url!r}") from e


@dataclass
class PeerHandler:
    """What the transport calls into on the receiving side."""

    cluster_id: Callable[[], int]
    is_removed: Callable[[int], bool]
    on_message: Callable[[Message], None]
    # saves a snapshot's database; returns when it is durable
    on_snapshot: Callable[[Message, asyncio.StreamReader, int], Awaitable[None]]
    on_request: Callable[[PeerRequest], Awaitable[PeerResponse]]


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = _LEN4.unpack(await reader.readexactly(4))
    if n > MAX_FRAME:
        raise TransportError(f"frame of {n} bytes exceeds the limit")
    return await reader.readexactly(n)


def _frame(data: bytes) -> bytes:
    return _LEN4.pack(len(data)) + data


async def _dial(
    url: str, kind: bytes, member_id: int, cluster_id: int, ssl_ctx: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = _hostport(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_ctx if url.startswith("https") else None), DIAL_TIMEOUT
    )
    writer.write(_HELLO.pack(MAGIC, kind, member_id, cluster_id))
    await writer.drain()
    status = (await asyncio.wait_for(reader.readexactly(1), DIAL_TIMEOUT))[0]
    if status != OK:
        writer.close()
        raise TransportError(f"peer {url} refused the connection (status {status})", status)
    return reader, writer


async def peer_request(
    url: str,
    request: PeerRequest,
    *,
    member_id: int = 0,
    cluster_id: int = 0,
    ssl_ctx: ssl.SSLContext | None = None,
) -> PeerResponse:
    """One request/response exchange with the member at peer URL url."""
    reader, writer = await _dial(url, KIND_REQUEST, member_id, cluster_id, ssl_ctx)
    try:
        writer.write(_frame(request.SerializeToString()))
        await writer.drain()
        raw = await _read_frame(reader)
        try:
            return PeerResponse.FromString(raw)
        except DecodeError as e:
            raise TransportError(f"peer {url} answered something else than a PeerResponse: {e}") from e
    finally:
        writer.close()


class _Peer:
    """The outbound side towards one member."""

    def __init__(self, transport: Transport, peer_id: int, urls: list[str]) -> None:
        self.t = transport
        self.id = peer_id
        self.urls = urls
        self.queue: asyncio.Queue[Message] = asyncio.Queue(PEER_QUEUE_LEN)
        self.task: asyncio.Task[None] | None = None
        self.active = False
        self.active_since = 0.0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"peer-{self.id:x}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def send(self, m: Message) -> None:
        try:
            self.queue.put_nowait(m)
        except asyncio.QueueFull:
            self.t.report_unreachable(self.id)

    async def _run(self) -> None:
        t = self.t
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                _, writer = await _dial(self.urls[0], KIND_RAFT, t.member_id, t.cluster_id(), t.ssl_ctx)
                self.active = True
                self.active_since = time.monotonic()
                while True:
                    m = await self.queue.get()
                    batch = [m]
                    while not self.queue.empty() and len(batch) < 512:
                        batch.append(self.queue.get_nowait())
                    writer.write(b"".join(_frame(marshal_message(x)) for x in batch))
                    await writer.drain()
            except asyncio.CancelledError:
                raise
            except TransportError as e:
                self.active = False
                if e.status == REMOVED:
                    t.on_removed()
                    return
                t.report_unreachable(self.id)
                await asyncio.sleep(RECONNECT_BACKOFF)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                if self.active:
                    log.warning("lost connection to peer", extra={"peer": f"{self.id:x}"})
                self.active = False
                t.report_unreachable(self.id)
                # what was queued for a dead connection is stale by the time it comes back
                while not self.queue.empty():
                    self.queue.get_nowait()
                await asyncio.sleep(RECONNECT_BACKOFF)
            finally:
                if writer is not None:
                    writer.close()


class Transport:
    def __init__(
        self,
        member_id: int,
        cluster_id: Callable[[], int],
        handler: PeerHandler,
        *,
        report_unreachable: Callable[[int], None],
        report_snapshot: Callable[[int, bool], None],
        on_removed: Callable[[], None] = lambda: None,
        snapshot_source: Callable[[], Awaitable[bytes]],
        ssl_ctx: ssl.SSLContext | None = None,
        server_ssl_ctx: ssl.SSLContext | None = None,
    ) -> None:
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.handler = handler
        self.report_unreachable = report_unreachable
        self.report_snapshot = report_snapshot
        # a peer told us we were removed from the cluster
        self.on_removed = on_removed
        self.snapshot_source = snapshot_source
        self.ssl_ctx = ssl_ctx
        self.server_ssl_ctx = server_ssl_ctx
        self.peers: dict[int, _Peer] = {}
        self._servers: list[asyncio.Server] = []
        self._snap_tasks: set[asyncio.Task[None]] = set()
        self.ports: list[int] = []
        # member ID -> open inbound raft streams (their writer) -> when each connected
        self._inbound: dict[int, dict[asyncio.StreamWriter, float]] = {}
        # a partition: whether traffic with a peer is dropped (None: nothing is)
        self.drop: Callable[[int], bool] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def listen(self, urls: list[str]) -> None:
        for url in urls:
            host, port = _hostport(url)
            server = await asyncio.start_server(
                self._accept, host, port, ssl=self.server_ssl_ctx, reuse_address=True
            )
            self._servers.append(server)
            self.ports.extend(s.getsockname()[1] for s in server.sockets)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for peer in list(self.peers.values()):
            await peer.stop()
        for task in list(self._snap_tasks):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.peers.clear()

    # -- membership of the transport ----------------------------------------------------------

    def add_peer(self, peer_id: int, urls: list[str]) -> None:
        if peer_id == self.member_id or peer_id in self.peers:
            return
        peer = _Peer(self, peer_id, urls)
        self.peers[peer_id] = peer
        peer.start()

    def update_peer(self, peer_id: int, urls: list[str]) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.urls = urls

    def remove_peer(self, peer_id: int) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is not None and peer.task is not None:
            peer.task.cancel()
        # a removed member's streams are closed; when it dials again it is told it was removed
        for writer in list(self._inbound.pop(peer_id, {})):
            writer.close()

    def active_since(self, peer_id: int) -> float | None:
        """Since when (monotonic) the peer is connected both ways: our stream to it is up and
        its stream to us is open (a dead process closes it). None when it is not."""
        peer = self.peers.get(peer_id)
        inbound = self._inbound.get(peer_id)
        if peer is None or not peer.active or not inbound:
            return None
        return max(min(inbound.values()), peer.active_since)

    # -- sending ------------------------------------------------------------------------------

    def send(self, messages: tuple[Message, ...] | list[Message]) -> None:
        drop = self.drop
        for m in messages:
            if m.to == self.member_id:
                continue
            peer = self.peers.get(m.to)
            if peer is None or (drop is not None and drop(m.to)):
                continue
            if m.type == MessageType.MsgSnap:
                task = asyncio.create_task(self._send_snapshot(peer, m))
                self._snap_tasks.add(task)
                task.add_done_callback(self._snap_tasks.discard)
            else:
                peer.send(m)

    async def _send_snapshot(self, peer: _Peer, m: Message) -> None:
        ok = False
        writer: asyncio.StreamWriter | None = None
        try:
            db = await self.snapshot_source()
            reader, writer = await _dial(
                peer.urls[0], KIND_SNAP, self.member_id, self.cluster_id(), self.ssl_ctx
            )
            writer.write(_frame(marshal_message(m)) + _LEN8.pack(len(db)))
            view = memoryview(db)
            for i in range(0, len(db), 1 << 20):
                writer.write(view[i : i + (1 << 20)])
                await writer.drain()
            ok = (await asyncio.wait_for(reader.readexactly(1), 60.0)) == b"\x00"
            log.info("sent database snapshot", extra={"peer": f"{peer.id:x}", "bytes": len(db), "ok": ok})
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("failed to send snapshot", extra={"peer": f"{peer.id:x}", "error": repr(e)})
        finally:
            if writer is not None:
                writer.close()
            self.report_snapshot(peer.id, not ok)

    # -- receiving ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            magic, kind, frm, cid = _HELLO.unpack(
                await asyncio.wait_for(reader.readexactly(_HELLO.size), 5.0)
            )
            if magic != MAGIC:
                return
            h = self.handler
            if kind != KIND_REQUEST and cid != h.cluster_id():
                writer.write(bytes([WRONG_CLUSTER]))
                log.warning(
                    "rejected peer of another cluster", extra={"peer": f"{frm:x}", "cluster": f"{cid:x}"}
                )
                return
            if kind != KIND_REQUEST and h.is_removed(frm):
                writer.write(bytes([REMOVED]))
                return
            if kind != KIND_RAFT and self.drop is not None and self.drop(frm):
                return
            writer.write(bytes([OK]))
            await writer.drain()
            if kind == KIND_RAFT:
                self._inbound.setdefault(frm, {})[writer] = time.monotonic()
                try:
                    while True:
                        m = unmarshal_message(await _read_frame(reader))
                        if self.drop is None or not self.drop(frm):
                            h.on_message(m)
                finally:
                    streams = self._inbound.get(frm, {})
                    streams.pop(writer, None)
                    if not streams:
                        self._inbound.pop(frm, None)
            elif kind == KIND_SNAP:
                m = unmarshal_message(await _read_frame(reader))
                (size,) = _LEN8.unpack(await reader.readexactly(8))
                try:
                    await h.on_snapshot(m, reader, size)
                    writer.write(b"\x00")
                except Exception as e:
                    log.warning("failed to receive snapshot", extra={"error": repr(e)})
                    writer.write(b"\x01")
                await writer.drain()
            elif kind == KIND_REQUEST:
                req = PeerRequest.FromString(await _read_frame(reader))
                writer.write(_frame((await h.on_request(req)).SerializeToString()))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, TransportError):
            pass
        except Exception:
            log.exception("peer connection failed")
        finally:
            writer.close()
