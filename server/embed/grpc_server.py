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
Maintenance including Snapshot, Auth) and proxies the bidirectional ones (Watch,
LeaseKeepAlive) and unknown methods, in Rust, to a grpcio server on a private Unix socket,
with the same interceptors. It has no TLS, so https:// URLs stay on grpcio.

Go clients are never cut off for pinging: pygrpc-native accepts client pings without counting
strikes (grpcio is told the same, see grpc_server_options), and keepalive pings and their
timeout follow --grpc-keepalive-interval/-timeout on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from server.v3rpc.registry import Services, add_to

__all__ = ["grpc_server"]


def grpc_server(
    kind: str,
    svcs: Services,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    options: list[tuple[str, Any]],
) -> grpc.aio.Server:
    if kind == "native":
        import pygrpc_native.aio  # loaded only when used: the grpcio path never needs it

        server: grpc.aio.Server = pygrpc_native.aio.server(interceptors=interceptors, options=options)
        # registered methods are the ones it serves natively; add_to's generic handlers are
        # what grpcio (behind it) serves: the streams, and unknown methods answered as grpc-go
        for name, handlers in svcs.items():
            server.add_registered_method_handlers(name, handlers)
    else:
        server = grpc.aio.server(interceptors=interceptors, options=options)
    add_to(server, svcs)
    return server
