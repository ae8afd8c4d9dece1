"""The composition root (etcd's server/embed/etcd.go): an EtcdServer plus its listeners.

    async with Etcd(cfg) as e:      # or: e = Etcd(cfg); await e.start(); ...; await e.stop()
        e.client_ports              # the bound ports, useful with :0 URLs in tests

gRPC is served on --listen-client-urls; grpcio cannot share a port with HTTP/1.1, so the HTTP
endpoints (/health, /version, /metrics, the JSON gateway) are served on etcd 3.5's separate
listeners, --listen-client-http-urls and --listen-metrics-urls.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from server.config import Config
from server.embed.frontends import FrontendLink, Frontends
from server.etcdserver.server import EtcdServer
from server.httpapi.http_server import HttpServers
from server.tls import TLSInfo, client_tls
from server.urls import host_port
from server.v3rpc.registry import Services, add_to, interceptor, services

__all__ = ["Etcd", "grpc_server_options"]

log = logging.getLogger(__name__)


def grpc_server_options(cfg: Config, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """etcd's server settings: receive up to max-request-bytes + 512 KiB, send anything, and
    accept client keepalive pings as often as every --grpc-keepalive-min-time (5 s), with or
    without active calls, so Go clients (kube-apiserver pings every 30 s) are never cut off
    with GOAWAY too_many_pings. Calls the Python side has not taken yet wait in grpcio's queue
    instead of being refused: past 1,000 queued calls grpcio cancels new ones at random (random
    early detection), which grpc-go, and so etcd, never does; thousands of clients opening their
    watch streams at once queue that deep."""
    return [
        # petcd enforces cfg.max_recv_bytes itself, with grpc-go's message (server/v3rpc/registry.py);
        # grpcio's own limit only bounds memory
        ("grpc.max_receive_message_length", max(4 * cfg.max_recv_bytes, 64 * 1024 * 1024)),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", 2**31 - 1),
        ("grpc.server.max_pending_requests", 2**31 - 1),
        ("grpc.server.max_pending_requests_hard_limit", 2**31 - 1),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(cfg.grpc_keepalive_min_time_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(cfg.grpc_keepalive_min_time_s * 1000)),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_time_ms", int(cfg.grpc_keepalive_interval_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(cfg.grpc_keepalive_timeout_s * 1000)),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


class Etcd:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.server = EtcdServer(cfg)
        # built once the server has started: the services hold the parts it starts with
        self.http: HttpServers | None = None
        self._grpc: grpc.aio.Server | None = None
        self._link: FrontendLink | None = None
        self._frontends: Frontends | None = None
        self._reserved: list[socket.socket] = []
        self.client_ports: list[int] = []

    async def start(self) -> None:
        cfg = self.cfg
        await self.server.start()
        try:
            await self.server.wait_ready()
            self.http = HttpServers(cfg, self.server, interceptors=[interceptor(self.server)])
            await self.http.start()
            interceptors = [interceptor(self.server)]
            options = grpc_server_options(cfg, reuse_port=cfg.grpc_frontends > 0)
            g = grpc.aio.server(interceptors=interceptors, options=options)
            svcs = services(self.server)
            add_to(g, svcs)
            tls = client_tls(cfg)
            listen: list[tuple[str, bool]] = []
            for url in cfg.listen_client_urls:
                host, port = host_port(url)
                secure = url.startswith("https")
                if cfg.grpc_frontends > 0:
                    # the front-ends serve the port; the member only holds it (bound, not listening)
                    bound = self._reserve_port(host, port)
                elif secure:
                    assert tls is not None
                    bound = g.add_secure_port(f"{host}:{port}", tls.grpc_credentials())
                else:
                    bound = g.add_insecure_port(f"{host}:{port}")
                self.client_ports.append(bound)
                listen.append((f"{host}:{bound}", secure))
            if cfg.grpc_frontends == 0:
                await g.start()
                self._grpc = g
            if cfg.grpc_frontends > 0:
                await self._start_frontends(svcs, interceptors, options, listen, tls)
        except BaseException:
            if self.http is not None:
                await self.http.stop()
            await self.server.stop()
            raise
        log.info(
            "serving client traffic", extra={"urls": list(cfg.listen_client_urls), "ports": self.client_ports}
        )

    def _reserve_port(self, host: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        self._reserved.append(sock)
        return int(sock.getsockname()[1])

    async def _start_frontends(
        self,
        svcs: Services,
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        options: list[tuple[str, Any]],
        listen: list[tuple[str, bool]],
        tls: TLSInfo | None,
    ) -> None:
        self._link = FrontendLink(svcs, interceptors)
        await self._link.start()
        spec: dict[str, Any] = {"options": options, "listen": listen, "tls": None}
        if tls is not None:
            spec["tls"] = {
                "cert": tls.cert_file,
                "key": tls.key_file,
                "ca": tls.trusted_ca_file,
                "client_auth": tls.client_cert_auth,
            }
        self._frontends = Frontends(self.cfg.grpc_frontends, self._link.address, spec)
        self._frontends.start()
        try:
            await self._link.wait_connections(self.cfg.grpc_frontends, 30.0)
        except TimeoutError:
            log.warning("gRPC front-ends did not all connect; serving without them meanwhile")

    async def stop(self) -> None:
        if self._frontends is not None:
            await self._frontends.stop()
            self._frontends = None
        if self._link is not None:
            await self._link.stop()
            self._link = None
        if self.http is not None:
            await self.http.stop()
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
            self._grpc = None
        await self.server.stop()

    async def wait_stopped(self) -> str:
        """Until the member must stop on its own: it was removed from the cluster, or its raft
        loop failed (a disk error, say). Returns the reason."""
        removed = asyncio.ensure_future(self.server.removed.wait())
        failed = asyncio.ensure_future(self.server.raft.stopped.wait())
        done, pending = await asyncio.wait({removed, failed}, return_when=asyncio.FIRST_COMPLETED)
        for f in pending:
            f.cancel()
        if removed in done:
            return "the member has been permanently removed from the cluster"
        return f"the raft loop failed: {self.server.raft.failure!r}"

    async def __aenter__(self) -> Etcd:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
