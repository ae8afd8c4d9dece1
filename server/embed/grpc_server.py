"""The client gRPC servers: petcd's native front for cleartext client connections, grpcio for TLS.

    g = NativeServer(svcs, interceptors, options)     # http:// client URLs
    await g.start()
    await g.adopt(conn)          # an accepted connection whose HTTP/2 preface is still unread
    ...
    g = grpc_server(svcs, interceptors, options)       # grpcio: https:// URLs, --grpc-server=grpcio
    g.add_insecure_port("unix:/private/member.sock")

Both run the same handlers and interceptors (server/v3rpc/registry.py). grpcio runs its
per-call work (HTTP/2 framing, call objects, the completion queue) in Python under the GIL: a
server that answers nothing tops out near 9,000 calls/s here, a third of etcd, and it can only
serve sockets it accepted itself, so connections reach it through the relay (serve.py).
NativeServer is petcd's own front: BidiFront (Rust, server/embed/_bidi) adopts the connection
the listener accepted and does HTTP/2, gRPC framing, flow control, keepalive pings and trailers
on its own threads without the GIL; calls reach the event loop in batches through one file
descriptor, with their request when it is unary, and BidiServer (server/embed/bidi.py) runs the
grpc.aio handlers there unchanged. Unknown methods are answered in Rust as grpc-go answers them
(kube-apiserver probes KV/RangeStream and needs UNIMPLEMENTED). BidiFront has no TLS, so
https:// URLs stay on grpcio.

Go clients are never cut off for pinging: BidiFront answers client pings without counting
strikes (grpcio is told the same, see etcd.grpc_server_options), and keepalive pings and their
timeout follow --grpc-keepalive-interval/-timeout on both.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import grpc

from server.v3rpc.registry import Services, add_to

__all__ = ["NativeServer", "grpc_server"]

# the receive limit BidiFront gets when grpc.max_receive_message_length says none
_UNLIMITED = 2**31 - 1


def _peer_name(sock: socket.socket) -> str:
    """The peer as grpcio's ServicerContext.peer() gives it: ipv4:127.0.0.1:5000, ipv6:[::1]:5000."""
    try:
        address = sock.getpeername()
    except OSError:
        return "unknown"
    if sock.family == socket.AF_INET6:
        return f"ipv6:[{address[0]}]:{address[1]}"
    if sock.family == socket.AF_INET:
        return f"ipv4:{address[0]}:{address[1]}"
    return f"unix:{address}"


class NativeServer:
    """Serves the client connections it is given on BidiFront (see the module docstring)."""

    def __init__(
        self,
        svcs: Services,
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        options: Sequence[tuple[str, Any]],
    ) -> None:
        from server.embed._bidi import BidiFront
        from server.embed.bidi import BidiServer

        opts = dict(options)
        handlers = {f"/{svc}/{name}": h for svc, methods in svcs.items() for name, h in methods.items()}
        receive = opts.get("grpc.max_receive_message_length", -1)
        send = opts.get("grpc.max_send_message_length", -1)
        self._front = BidiFront(
            None,
            list(handlers),
            list(svcs),
            unary=BidiServer.unary_methods(handlers),
            max_receive_message_length=_UNLIMITED if receive < 0 else receive,
            max_send_message_length=None if send < 0 else send,
            keepalive_time_ms=opts.get("grpc.keepalive_time_ms"),
            keepalive_timeout_ms=opts.get("grpc.keepalive_timeout_ms", 20_000),
        )
        self._server = BidiServer(self._front, handlers, interceptors)

    async def start(self) -> None:
        await self._server.start()

    async def adopt(self, conn: socket.socket) -> None:
        """Takes conn, a connected client socket whose first bytes are still unread."""
        peer = _peer_name(conn)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._front.adopt(conn.detach(), peer)

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)


def grpc_server(
    svcs: Services,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    options: list[tuple[str, Any]],
) -> grpc.aio.Server:
    """grpcio's server with petcd's handlers; it serves the addresses it binds."""
    server = grpc.aio.server(interceptors=interceptors, options=options)
    add_to(server, svcs)
    return server
