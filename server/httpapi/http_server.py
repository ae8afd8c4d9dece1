"""The HTTP servers (etcd's embed/serve.go for the client URLs and --listen-client-http-urls,
and serveMetrics for --listen-metrics-urls).

    servers = HttpServers(cfg, etcd_server)    # builds the apps, starts nothing
    await servers.start()                      # binds every URL (port 0 allowed)
    servers.client_http_ports, servers.metrics_ports
    await servers.client.adopt(sock, ssl_ctx)  # a client-port connection that speaks HTTP/1.1
    await servers.stop()

Client HTTP URLs serve everything etcd serves to HTTP clients: the grpc-gateway under /v3/ (and
/v3beta/), /health, /livez, /readyz, /version and /metrics, with etcd's CORS headers (etcd's
default --cors is "*") and 200 to any OPTIONS request; the client URLs hand their HTTP/1.1
connections to the same server (server/embed/serve.py). Metrics URLs serve /metrics and the
health endpoints only, without CORS, like etcd's metrics mux. https:// URLs use --cert-file and
--key-file (and --trusted-ca-file with --client-cert-auth), and offer ALPN http/1.1 only.

A request handler is cancelled when its client goes away (etcd's request context is), which is
what ends the gateway's long-lived streams (watch, observe, a lock being waited for).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import grpc
from aiohttp import web

from server.config import Config
from server.etcdserver.server import EtcdServer
from server.httpapi.gateway import Gateway, body_limit
from server.httpapi.gohttp import not_found, serve_mux_redirects
from server.httpapi.health import Health, HealthStats
from server.httpapi.metrics import new_registry, serve_metrics
from server.tls import client_tls
from server.urls import host_port

__all__ = ["HttpServer", "HttpServers", "client_app", "metrics_app"]

log = logging.getLogger(__name__)

# how long stop() lets open requests (a keepalive stream, a snapshot) finish
SHUTDOWN_TIMEOUT = 1.0
TLS_HANDSHAKE_TIMEOUT = 60.0

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
}


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in CORS_HEADERS.items():
        response.headers.setdefault(k, v)


@web.middleware
async def _options(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """etcd's access controller answers any OPTIONS request (a CORS preflight) with an empty 200."""
    if request.method == "OPTIONS":
        return web.Response(status=200)
    return await handler(request)


def client_app(
    server: EtcdServer,
    stats: HealthStats | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> web.Application:
    """The client HTTP API of one server; the gateway's calls go through the gRPC server's
    interceptors."""
    stats = stats if stats is not None else HealthStats()
    app = web.Application(
        client_max_size=body_limit(server.cfg), middlewares=[_options, serve_mux_redirects({"/v3/"})]
    )
    app.on_response_prepare.append(_add_cors)
    Gateway(server, interceptors).add_routes(app)
    Health(server, stats).add_routes(app, version=True)
    app.router.add_route("*", "/metrics", serve_metrics(new_registry(server, stats)))
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def metrics_app(server: EtcdServer, stats: HealthStats | None = None) -> web.Application:
    """/metrics and the health endpoints of one server."""
    stats = stats if stats is not None else HealthStats()
    app = web.Application(middlewares=[serve_mux_redirects()])
    app.router.add_route("*", "/metrics", serve_metrics(new_registry(server, stats)))
    Health(server, stats).add_routes(app, version=False)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def _ssl_context(cfg: Config) -> ssl.SSLContext:
    tls = client_tls(cfg)
    if tls is None:
        raise ValueError("client TLS key/cert (--cert-file, --key-file) must be provided for https URLs")
    return tls.http_context()


class HttpServer:
    """One aiohttp app served on some URLs and on the connections it adopts. Nothing is bound
    until start()."""

    def __init__(self, app: web.Application, urls: Sequence[str], cfg: Config, *, name: str = "http") -> None:
        self.app = app
        self.urls = tuple(urls)
        self.name = name
        self.ports: list[int] = []
        self._cfg = cfg
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT, handler_cancellation=True
        )
        await runner.setup()
        self._runner = runner
        try:
            for url in self.urls:
                host, port = host_port(url)
                scheme = urlsplit(url).scheme
                if scheme not in ("http", "https"):
                    raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}")
                tls = _ssl_context(self._cfg) if scheme == "https" else None
                before = len(runner.addresses)
                await web.TCPSite(runner, host, port, ssl_context=tls).start()
                self.ports.append(int(runner.addresses[before][1]))
        except BaseException:
            await self.stop()
            raise
        if self.urls:
            log.info("serving %s", self.name, extra={"urls": list(self.urls), "ports": self.ports})

    async def adopt(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        """Serve an accepted connection (doing the TLS handshake first with ssl_context)."""
        if self._runner is None or self._runner.server is None:
            raise RuntimeError(f"{self.name} is not running")
        await asyncio.get_running_loop().connect_accepted_socket(
            self._runner.server,
            sock,
            ssl=ssl_context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ssl_context is not None else None,
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.ports = []


class HttpServers:
    """The HTTP listeners of one member: its client HTTP URLs and its metrics URLs."""

    def __init__(
        self, cfg: Config, server: EtcdServer, *, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    ) -> None:
        stats = HealthStats()
        self.health_stats = stats
        self.client = HttpServer(
            client_app(server, stats, interceptors),
            cfg.listen_client_http_urls,
            cfg,
            name="client HTTP traffic",
        )
        self.metrics = HttpServer(metrics_app(server, stats), cfg.listen_metrics_urls, cfg, name="metrics")

    @property
    def client_http_ports(self) -> list[int]:
        return self.client.ports

    @property
    def metrics_ports(self) -> list[int]:
        return self.metrics.ports

    async def start(self) -> None:
        await self.client.start()
        try:
            await self.metrics.start()
        except BaseException:
            await self.client.stop()
            raise

    async def stop(self) -> None:
        await self.client.stop()
        await self.metrics.stop()
