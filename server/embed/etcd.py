"""The composition root (etcd's server/embed/etcd.go): an EtcdServer plus its listeners.

    async with Etcd(cfg) as e:      # or: e = Etcd(cfg); await e.start(); ...; await e.stop()
        e.client_ports              # the bound ports, useful with :0 URLs in tests

Every --listen-client-urls URL serves gRPC and HTTP/1.1 on one port, as etcd's does
(server/embed/serve.py): HTTP/1.1 connections go to the client HTTP server (/health, /livez,
/readyz, /version, /metrics, the JSON gateway), cleartext gRPC connections to petcd's native
gRPC server, which adopts them; TLS ones (and all, with --grpc-server=grpcio) are relayed to
grpcio, which listens on private Unix sockets only (with --grpc-frontends, to the front-end
processes, a pair of sockets each). With etcd's separate HTTP listeners,
--listen-client-http-urls, the client URLs serve gRPC only, as etcd's then do.
--listen-metrics-urls serve /metrics and the health endpoints. server/embed/grpc_server.py
says why the transport is what it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import grpc

from server.config import Config
from server.embed._relay import Relay
from server.embed.frontends import FrontendLink, Frontends
from server.embed.grpc_server import NativeServer, grpc_server
from server.embed.serve import ClientListener, GrpcAdopter, RelayTo
from server.etcdserver.server import EtcdServer
from server.faults.surface import FaultSurface
from server.httpapi.http_server import HttpServers
from server.services import services
from server.tls import TLSInfo, client_tls
from server.urls import host_port
from server.v3rpc.registry import Services, interceptor

__all__ = ["Etcd", "grpc_server_options"]

log = logging.getLogger(__name__)


def grpc_server_options(cfg: Config) -> list[tuple[str, Any]]:
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
        ("grpc.so_reuseport", 0),
    ]


class _Backends:
    """The private Unix sockets the gRPC server or the front-ends listen on, in a directory only
    this user can enter: one for cleartext and one for TLS per server, as grpc targets. The
    directory is named after the process, so one left by a killed member is removed by the
    next member that starts."""

    def __init__(self) -> None:
        _remove_stale_dirs()
        self.dir = tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-")
        self.plain: list[str] = []
        self.tls: list[str] = []

    def add(self, tag: str, secure: bool) -> str:
        """A new address; returns its grpc target."""
        path = os.path.join(self.dir, f"{tag}-{'tls' if secure else 'plain'}.sock")
        (self.tls if secure else self.plain).append(path)
        return f"unix:{path}"

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


_DIR_PREFIX = "petcd-grpc-"


def _remove_stale_dirs() -> None:
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        pid = name.removeprefix(_DIR_PREFIX).split("-", 1)[0]
        if not name.startswith(_DIR_PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        except OSError:
            pass  # alive (another user's)


class Etcd:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.server = EtcdServer(cfg)
        # the fault-injection control surface exists only with --listen-faults-urls
        self.faults = (
            FaultSurface(cfg, self.server, self.server.stats.faults_injected)
            if cfg.listen_faults_urls
            else None
        )
        # built once the server has started: the services hold the parts it starts with
        self.http: HttpServers | None = None
        self._grpc: list[grpc.aio.Server | NativeServer] = []
        self._grpcio_server: grpc.aio.Server | None = None
        self._link: FrontendLink | None = None
        self._frontends: Frontends | None = None
        self._relay = Relay()
        self._backends: _Backends | None = None
        self._listeners: list[ClientListener] = []
        self.client_ports: list[int] = []

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [interceptor(self.server, hook=self.faults.hook if self.faults is not None else None)]

    async def start(self) -> None:
        cfg = self.cfg
        await self.server.start()
        try:
            if self.faults is not None:
                await self.faults.start(self.server.transport)
            await self.server.wait_ready()
            self.http = HttpServers(cfg, self.server, interceptors=self._interceptors())
            await self.http.start()
            await self._serve_clients(self.http)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "serving client traffic", extra={"urls": list(cfg.listen_client_urls), "ports": self.client_ports}
        )

    async def _serve_clients(self, http: HttpServers) -> None:
        """gRPC and HTTP/1.1 on every client URL; with --listen-client-http-urls, gRPC only, as
        etcd does."""
        cfg = self.cfg
        tls = client_tls(cfg)
        grpc_only = bool(cfg.listen_client_http_urls)
        schemes = {urlsplit(url).scheme for url in cfg.listen_client_urls}
        interceptors = self._interceptors()
        options = grpc_server_options(cfg)
        svcs = services(self.server)
        backends = self._backends = _Backends()
        native: NativeServer | None = None
        if cfg.grpc_frontends > 0:
            await self._start_frontends(svcs, interceptors, options, backends, schemes, tls)
        else:
            if "http" in schemes and cfg.grpc_server == "native":
                native = NativeServer(svcs, interceptors, options)
                self._grpc.append(native)
            elif "http" in schemes:
                self._grpcio(svcs, interceptors, options).add_insecure_port(
                    backends.add("member", secure=False)
                )
            if "https" in schemes:
                assert tls is not None
                g = self._grpcio(svcs, interceptors, options)
                g.add_secure_port(backends.add("member", secure=True), tls.grpc_credentials())
            for server in self._grpc:
                await server.start()
        # the backends' sockets are all known by now
        plain: GrpcAdopter = native if native is not None else RelayTo(backends.plain, self._relay)
        secure = RelayTo(backends.tls, self._relay)
        self._relay.start()
        for url in cfg.listen_client_urls:
            host, port = host_port(url)
            https = urlsplit(url).scheme == "https"
            listener = ClientListener(
                host,
                port,
                http=None if grpc_only else http.client,
                grpc=secure if https else plain,
                tls=tls.http_context() if https and tls is not None else None,
            )
            await listener.start()
            self._listeners.append(listener)
            self.client_ports.append(listener.port)

    def _grpcio(
        self,
        svcs: Services,
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        options: list[tuple[str, Any]],
    ) -> grpc.aio.Server:
        """The member's one grpcio server (it serves any number of addresses)."""
        if self._grpcio_server is None:
            self._grpcio_server = grpc_server(svcs, interceptors, options)
            self._grpc.append(self._grpcio_server)
        return self._grpcio_server

    async def _start_frontends(
        self,
        svcs: Services,
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        options: list[tuple[str, Any]],
        backends: _Backends,
        schemes: set[str],
        tls: TLSInfo | None,
    ) -> None:
        self._link = FrontendLink(svcs, interceptors)
        await self._link.start()
        kinds = [secure for secure in (False, True) if ("https" if secure else "http") in schemes]
        listen = [[(backends.add(f"fe{i}", s), s) for s in kinds] for i in range(self.cfg.grpc_frontends)]
        spec: dict[str, Any] = {"options": options, "tls": None}
        if tls is not None:
            spec["tls"] = {
                "cert": tls.cert_file,
                "key": tls.key_file,
                "ca": tls.trusted_ca_file,
                "client_auth": tls.client_cert_auth,
            }
        self._frontends = Frontends(self._link.address, [{**spec, "listen": lst} for lst in listen])
        self._frontends.start()
        try:
            await self._link.wait_connections(self.cfg.grpc_frontends, 30.0)
        except TimeoutError:
            log.warning("gRPC front-ends did not all connect; serving without them meanwhile")

    async def stop(self) -> None:
        for listener in self._listeners:
            await listener.stop()
        self._listeners.clear()
        if self._frontends is not None:
            await self._frontends.stop()
            self._frontends = None
        if self._link is not None:
            await self._link.stop()
            self._link = None
        for g in self._grpc:
            await g.stop(grace=1.0)
        self._grpc.clear()
        self._grpcio_server = None
        self._relay.stop()
        if self._backends is not None:
            self._backends.remove()
            self._backends = None
        if self.http is not None:
            await self.http.stop()
        if self.faults is not None:
            await self.faults.stop()
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
