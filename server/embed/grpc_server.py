"""The client gRPC servers: pygrpc-native for cleartext client URLs, grpcio for TLS.

    g = grpc_server("native", svcs, interceptors, options)   # or "grpcio"
    port = g.add_insecure_port("127.0.0.1:2379")
    await g.start()

Both are grpc.aio servers running the same handlers and interceptors (server/v3rpc/registry.py).
grpcio runs its per-call work (HTTP/2 framing, call objects, the completion queue) in Python
under the GIL: a server that answers nothing tops out near 9,000 calls/s here, a third of etcd.
pygrpc-native (Apache-2.0) does HTTP/2 and the per-call gRPC work in Rust threads without the
GIL and hands calls to the event loop in batches, so petcd's own work is what a call costs. It
serves unary and server-streaming methods itself (KV, Lease grant/revoke/TTL, Cluster,
Maintenance including Snapshot, Auth) and proxies, in Rust, the other streams and unknown
methods to a server on a private Unix socket: by default a grpcio server, which cost a
keep-alive (a new stream per request with clientv3's KeepAliveOnce) or a watch creation
grpcio's per-call Python work again. Here that server is petcd's own BidiFront (Rust:
HTTP/2, framing, flow control; server/embed/_bidi) with BidiServer running the bidirectional
handlers (Watch, LeaseKeepAlive) on the event loop (server/embed/bidi.py); it answers unknown
methods as grpc-go does (kube-apiserver probes KV/RangeStream and needs UNIMPLEMENTED). Neither
has TLS, so https:// URLs stay on grpcio.

Go clients are never cut off for pinging: pygrpc-native accepts client pings without counting
strikes (grpcio is told the same, see grpc_server_options), and keepalive pings and their
timeout follow --grpc-keepalive-interval/-timeout on both.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import pygrpc_native.aio

from server.v3rpc.registry import Services, add_to

if TYPE_CHECKING:  # imported when the native server starts: the grpcio path needs no Rust module
    from server.embed.bidi import BidiServer

__all__ = ["grpc_server"]

# the receive limit BidiFront gets when grpc.max_receive_message_length says none
_UNLIMITED = 2**31 - 1
_SOCKETS = itertools.count()


class _NativeServer(pygrpc_native.aio.Server):
    """pygrpc-native whose non-native streams go to BidiServer on BidiFront (server/embed/bidi.py)
    instead of the grpcio server it starts behind itself.

    This relies on pygrpc-native 0.5's private API (pinned ==0.5.0 in requirements.lock): start()
    calls _start_fallback(streamed, generic) before its front starts, with the request-streaming
    registered methods by service and the generic handlers left; self._front (NativeGrpcFront,
    made by add_insecure_port) proxies every path it does not serve to set_fallback(path); and
    the attributes _interceptors, _receive_limit and _send_limit its constructor parsed."""

    def __init__(self, services: Sequence[str], private_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._services = list(services)
        self._socket = os.path.join(private_dir, f"bidi-{next(_SOCKETS)}.sock")
        self._bidi: BidiServer | None = None

    async def _start_fallback(
        self,
        streamed: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]],
        generic: list[grpc.GenericRpcHandler],
    ) -> None:
        from server.embed._bidi import BidiFront
        from server.embed.bidi import BidiServer

        if generic:
            raise ValueError("generic handlers are not served: register every method")
        handlers = {f"/{svc}/{name}": h for svc, methods in streamed.items() for name, h in methods.items()}
        receive = self._receive_limit
        front = BidiFront(
            self._socket,
            list(handlers),
            self._services,
            max_receive_message_length=_UNLIMITED if receive is None else receive,
            max_send_message_length=self._send_limit,
        )
        self._bidi = BidiServer(front, handlers, self._interceptors)
        await self._bidi.start()
        assert self._front is not None
        self._front.set_fallback(self._socket)

    async def stop(self, grace: float | None) -> None:
        stops = [super().stop(grace)]
        if self._bidi is not None:
            stops.append(self._bidi.stop(grace))  # BidiFront.close removes the socket
        await asyncio.gather(*stops)


def grpc_server(
    kind: str,
    svcs: Services,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    options: list[tuple[str, Any]],
    *,
    private_dir: str,
) -> grpc.aio.Server:
    """private_dir: a directory only this user can enter, for the native server's own socket."""
    if kind == "native":
        server: grpc.aio.Server = _NativeServer(
            list(svcs), private_dir, interceptors=interceptors, options=options
        )
        # registered methods only: unknown ones are answered by BidiFront, as grpc-go answers them
        for name, handlers in svcs.items():
            server.add_registered_method_handlers(name, handlers)
        return server
    server = grpc.aio.server(interceptors=interceptors, options=options)
    add_to(server, svcs)
    return server
