"""One client port for gRPC and HTTP/1.1 (etcd's embed/serve.go with cmux).

    listener = ClientListener(host, port, http=http_server, grpc=native_server,
                              tls=ssl_context)     # tls only for https:// URLs
    await listener.start()                         # binds (port 0 allowed): listener.port
    await listener.stop()

Every connection is accepted here and classified from its first bytes, read with MSG_PEEK so
they stay in the socket (server/embed/cmux.py says how):

    HTTP/1.1  handed, as the socket itself, to the member's client HTTP server (aiohttp adopts
              it, and does the TLS handshake on https:// URLs): /health, /livez, /readyz,
              /version, /metrics, the JSON gateway.
    gRPC      cleartext: handed, as the socket itself, to petcd's native gRPC server
              (server/embed/grpc_server.py NativeServer), which reads the preface it left.
              TLS, and the front-ends: joined to a new connection to a gRPC server's private
              Unix socket by the native relay (server/embed/_relay.c, RelayTo), which copies
              the bytes both ways on a thread of its own, TLS records included: grpcio
              terminates TLS. Several backends (front-ends) take connections in turn.

grpcio serves only sockets it accepted itself (it cannot adopt one, as aiohttp and the native
server can), hence the relay; its cost is measured in docs/benchmarks.md. While the first
bytes are incomplete the socket's receive low-water mark is raised past them, so the event loop
wakes only when more arrive; a connection that does not become decidable within DETECT_TIMEOUT
is closed. Nothing here blocks: one slow or silent
client costs one pending task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

from server.embed import cmux

__all__ = ["DETECT_TIMEOUT", "ByteRelay", "ClientListener", "GrpcAdopter", "HttpAdopter", "RelayTo"]

log = logging.getLogger(__name__)

# grpc's handshake timeout: how long a connection may take to say what it speaks
DETECT_TIMEOUT = 120.0
PEEK_BYTES = 64 * 1024
BACKLOG = 4096
# how long accepting pauses when the process is out of descriptors (as Go's Accept loop backs off)
ACCEPT_BACKOFF = 0.1


class HttpAdopter(Protocol):
    """The client HTTP server, as a connection's new owner."""

    async def adopt(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None: ...


class ByteRelay(Protocol):
    """What joins a client connection to a gRPC server connection (server/embed/_relay.c)."""

    def add(self, a: int, b: int, /) -> None:
        """Relay between two connected sockets, taking ownership of both descriptors."""
        ...


class GrpcAdopter(Protocol):
    """A gRPC server, as a connection's new owner."""

    async def adopt(self, conn: socket.socket) -> None:
        """Takes conn, a connected client socket whose first bytes are still unread."""
        ...


class RelayTo:
    """Relays each connection to the next of these gRPC servers' Unix sockets that answers (a
    front-end being restarted does not)."""

    def __init__(self, backends: Sequence[str], relay: ByteRelay) -> None:
        self._backends = itertools.cycle(backends)
        self._count = len(backends)
        self._relay = relay

    async def adopt(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(self._count):
            backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                backend.setblocking(False)
                await loop.sock_connect(backend, next(self._backends))
            except (ConnectionRefusedError, FileNotFoundError):
                backend.close()
                if attempt + 1 == self._count:
                    raise
                continue
            except BaseException:
                backend.close()
                raise
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # the relay owns both descriptors from here on
            self._relay.add(conn.detach(), backend.detach())
            return


class ClientListener:
    """One client URL. http=None: gRPC only (etcd's client URLs beside --listen-client-http-urls):
    every connection goes to grpc, unread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        http: HttpAdopter | None,
        grpc: GrpcAdopter,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._http = http
        self._grpc = grpc
        self._tls = tls
        self._classify: Callable[[bytes], cmux.Route | None] = (
            cmux.classify_tls if tls is not None else cmux.classify_cleartext
        )
        self._sock: socket.socket | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    async def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.wait(self._pending)

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(e)
                return  # ECONNABORTED and the like: the next connection is another one
            conn.setblocking(False)
            task = asyncio.get_running_loop().create_task(self._serve(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _pause_accepting(self, e: OSError) -> None:
        log.warning("cannot accept client connections; retrying", extra={"error": str(e)})
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        fd = self._sock.fileno()
        loop.remove_reader(fd)

        def resume() -> None:
            if self._sock is not None:
                loop.add_reader(fd, self._accept)

        loop.call_later(ACCEPT_BACKOFF, resume)

    async def _serve(self, conn: socket.socket) -> None:
        owned = False
        try:
            if self._http is None:
                route = cmux.Route.GRPC
            else:
                try:
                    async with asyncio.timeout(DETECT_TIMEOUT):
                        route = await self._detect(conn)
                except TimeoutError:
                    route = cmux.Route.CLOSE
            if route is cmux.Route.GRPC:
                await self._grpc.adopt(conn)
                owned = True
            elif route is cmux.Route.HTTP:
                assert self._http is not None
                await self._http.adopt(conn, self._tls)
                owned = True
        except (OSError, ssl.SSLError) as e:
            log.debug("client connection failed before it was served", extra={"error": str(e)})
        finally:
            if not owned:
                _close(conn)

    async def _detect(self, conn: socket.socket) -> cmux.Route:
        """Peek until the first bytes decide the route. The socket stays readable while any
        byte is queued, so between peeks its receive low-water mark is set one byte past what
        was seen: readability then means more bytes, or the end of the stream."""
        loop = asyncio.get_running_loop()
        seen = -1
        try:
            while True:
                await _readable(loop, conn)
                data = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
                if len(data) <= seen:
                    return cmux.Route.CLOSE  # end of stream (or an error) before a decision
                route = self._classify(data)
                if route is not None:
                    return route
                seen = len(data)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, seen + 1)
        finally:
            if seen >= 0:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _close(conn: socket.socket) -> None:
    """Close with a FIN, as etcd does, rather than the RST that unread bytes would cause."""
    with contextlib.suppress(OSError):
        for _ in range(16):
            if not conn.recv(PEEK_BYTES):
                break
    conn.close()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
