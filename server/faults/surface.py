"""The fault-injection control surface: JSON over HTTP on --listen-faults-urls, a listener of its
own (never the client or peer port). Without the flag it does not exist.

    GET    /                 the member: name, ID, leader, revision; the kinds, methods, errors
    GET    /faults           every fault set on this member, active or ended, with what it did
    POST   /faults           set one: {"kind": "conflict", "prefix": "/registry/configmaps/", "count": 3}
                             -> 201 and the fault (a watch_cut runs now and answers its result)
    GET    /faults/ID        one fault
    DELETE /faults/ID        clear it (a partition heals) -> 200 and its final state
    DELETE /faults           clear all -> {"cleared": N}

A bad request (not JSON, an unknown kind, field, method or error, a bad prefix, count,
probability or duration) is a 400 with {"error": "<one line>"}; an unknown fault or path a 404.
With --client-cert-auth the surface is https:// only and a caller must present a certificate
the client CA (--trusted-ca-file) verifies, as on the client port.

Faults are per member: in a cluster, set them on the member(s) the client talks to (the harness
does that for you: petcd_harness.faults).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import web

from server.config import Config, ConfigError
from server.errors import EtcdError
from server.faults.inject import FaultHook, Injector, PeerLinks, Target
from server.faults.rules import ERRORS, KINDS, METHODS, BadFaultError, Fault, Faults, FaultSpec
from server.tls import TLSInfo, client_tls
from server.v3rpc.errors import to_grpc_status

__all__ = ["FaultSurface"]

log = logging.getLogger(__name__)


class Member(Target, Protocol):
    member_id: int

    @property
    def leader_id(self) -> int: ...


def _ssl_context(cfg: Config) -> ssl.SSLContext:
    tls = client_tls(cfg)
    if tls is None:
        if not cfg.cert_file or not cfg.key_file:
            raise ConfigError("--listen-faults-urls: https:// needs --cert-file and --key-file")
        tls = TLSInfo(
            cfg.cert_file,
            cfg.key_file,
            cfg.trusted_ca_file,
            cfg.client_cert_auth,
            cfg.cipher_suites,
            cfg.tls_min_version,
            cfg.tls_max_version,
        )
    return tls.server_context()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return _error(e.status, e.reason.lower(), allow)


class FaultSurface:
    """The faults of one member, how they are injected, and the listener that sets them.

    surface.hook goes to the member's interceptor (server/v3rpc/registry.interceptor); start()
    after the member started, with its peer transport; stop() before it stops."""

    def __init__(
        self,
        cfg: Config,
        member: Member,
        injected: dict[str, int],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._member = member
        self._clock = clock
        self.faults = Faults(injected, clock=clock)
        self.injector = Injector(self.faults, member)
        self.hook = FaultHook(self.injector).wrap
        self._runner: web.AppRunner | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self.ports: list[int] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get("/", self._info)
        app.router.add_get("/faults", self._list)
        app.router.add_post("/faults", self._add)
        app.router.add_delete("/faults", self._clear)
        app.router.add_get("/faults/{id}", self._get)
        app.router.add_delete("/faults/{id}", self._remove)
        return app

    async def start(self, links: PeerLinks) -> None:
        self.injector.attach(links)
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        try:
            for url in self._cfg.listen_faults_urls:
                u = urlsplit(url)
                host = "127.0.0.1" if u.hostname in (None, "localhost") else u.hostname
                tls = _ssl_context(self._cfg) if u.scheme == "https" else None
                before = len(runner.addresses)
                await web.TCPSite(runner, host, u.port, ssl_context=tls).start()
                self.ports.append(int(runner.addresses[before][1]))
        except BaseException:
            await self.stop()
            raise
        log.warning(
            "serving the fault-injection control surface",
            extra={"urls": list(self._cfg.listen_faults_urls), "ports": self.ports},
        )

    async def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.faults.clear()
        self.ports = []

    # -- handlers ---------------------------------------------------------------------------------

    def _json(self, f: Fault, status: int = 200) -> web.Response:
        return web.json_response(f.to_json(self._clock()), status=status)

    async def _info(self, request: web.Request) -> web.Response:
        m = self._member
        return web.json_response(
            {
                "name": self._cfg.name,
                "member_id": f"{m.member_id:x}",
                "leader_id": f"{m.leader_id:x}",
                "is_leader": m.leader_id != 0 and m.leader_id == m.member_id,
                "revision": m.kv.rev(),
                "compact_revision": max(m.kv.first_rev(), 0),
                "kinds": list(KINDS),
                "methods": list(METHODS),
                "errors": {name: to_grpc_status(cls())[1] for name, cls in ERRORS.items()},
            }
        )

    async def _list(self, request: web.Request) -> web.Response:
        now = self._clock()
        return web.json_response({"faults": [f.to_json(now) for f in self.faults.listing()]})

    async def _add(self, request: web.Request) -> web.Response:
        try:
            doc = json.loads(await request.read())
        except ValueError as e:
            return _error(400, f"the body is not JSON: {e}")
        try:
            spec = FaultSpec.from_json(doc)
        except BadFaultError as e:
            return _error(400, str(e))
        f = self.faults.add(spec)
        if spec.kind == "watch_cut":
            try:
                await self.injector.watch_cut(f)
            except EtcdError as e:
                self.faults.remove(f.id)
                return _error(503, to_grpc_status(e)[1])
        if spec.ttl is not None:
            self._expire_after(spec.ttl)
        log.info("fault set", extra={"fault": f.to_json(self._clock())})
        return self._json(f, 201)

    def _expire_after(self, delay: float) -> None:
        """End what expired once delay has passed (so an expired fault stops costing its check)."""

        def fire() -> None:
            self._timers.discard(handle)
            self.faults.expire()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _fault(self, request: web.Request) -> Fault | None:
        raw = request.match_info["id"]
        return self.faults.get(int(raw)) if raw.isdigit() else None

    async def _get(self, request: web.Request) -> web.Response:
        f = self._fault(request)
        if f is None:
            return _error(404, f"no fault {request.match_info['id']!r}")
        self.faults.expire()
        return self._json(f)

    async def _remove(self, request: web.Request) -> web.Response:
        f = self._fault(request)
        if f is None:
            return _error(404, f"no fault {request.match_info['id']!r}")
        self.faults.remove(f.id)
        log.info("fault cleared", extra={"fault": f.id})
        return self._json(f)

    async def _clear(self, request: web.Request) -> web.Response:
        n = self.faults.clear()
        log.info("faults cleared", extra={"count": n})
        return web.json_response({"cleared": n})
