"""/health, /livez, /readyz and /version (etcd v3.6's etcdserver/api/etcdhttp health.go and
version.go), plus the Go net/http answers they share (405, 404).

/health answers {"health":"true","reason":""} (200) or {"health":"false","reason":...} (503):
unhealthy on an active alarm not excluded with ?exclude=NOSPACE ("ALARM NOSPACE",
"ALARM CORRUPT"), without a leader ("RAFT NO LEADER", unless ?serializable=true) or when a
range fails ("RANGE ERROR:<err>").

/livez (serializable_read) and /readyz (data_corruption, serializable_read, linearizable_read,
non_learner) answer "ok\\n", preceded by one "[+]<check> ok" line per check with ?verbose;
a failing check makes them 503 with the "[+]/[-]" lines. ?exclude=<check> skips a check,
/livez/<check> and /readyz/<check> run one. etcd runs the checks in Go map order (random);
petcd runs them in the order above.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from server.api.etcdserverpb import rpc_pb2 as pb
from server.errors import EtcdError
from server.etcdserver.server import EtcdServer
from server.httpapi.gohttp import TEXT, go_http_error, go_json, method_not_allowed
from server.v3rpc.errors import to_grpc_status
from server.v3rpc.maintenance import alarm_name
from server.version import SERVER_VERSION, STORAGE_VERSION

__all__ = ["Health", "HealthStats"]

Check = Callable[[], Awaitable[str | None]]


@dataclass
class HealthStats:
    """What the health endpoints record for /metrics (etcd's etcd_server_health_success,
    etcd_server_health_failures, etcd_server_healthcheck and etcd_server_healthchecks_total)."""

    success: int = 0
    failures: int = 0
    # (type, name) -> 1.0 / 0.0 (the last result)
    check: dict[tuple[str, str], float] = field(default_factory=dict)
    # (type, name, status) -> count
    checks_total: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def record(self, check_type: str, name: str, ok: bool) -> None:
        status = "success" if ok else "error"
        self.check[(check_type, name)] = 1.0 if ok else 0.0
        key = (check_type, name, status)
        self.checks_total[key] = self.checks_total.get(key, 0) + 1


def _error_text(e: BaseException) -> str:
    if isinstance(e, EtcdError):
        return to_grpc_status(e)[1]
    return str(e) or type(e).__name__


class Health:
    """The health and version endpoints of one server."""

    def __init__(self, server: EtcdServer, stats: HealthStats) -> None:
        self._s = server
        self.stats = stats
        self._registries: dict[str, dict[str, Check]] = {
            "livez": {"serializable_read": self._read_check(True)},
            "readyz": {
                "data_corruption": self._alarm_check(pb.CORRUPT),
                "serializable_read": self._read_check(True),
                "linearizable_read": self._read_check(False),
                "non_learner": self._learner_check,
            },
        }

    def add_routes(self, app: web.Application, *, version: bool) -> None:
        r = app.router
        r.add_route("*", "/health", self.health)
        for check_type, checks in self._registries.items():
            r.add_route("*", f"/{check_type}", self._root_handler(check_type))
            for name in checks:
                r.add_route("*", f"/{check_type}/{name}", self._check_handler(check_type, name))
        if version:
            r.add_route("*", "/version", self.version)

    # -- /health --------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return method_not_allowed()
        excluded = {v for v in request.query.getall("exclude", []) if v}
        serializable = request.query.get("serializable") == "true"
        healthy, reason = await self._health(excluded, serializable)
        doc = go_json({"health": "true" if healthy else "false", "reason": reason})
        if healthy:
            self.stats.success += 1
            # Go sniffs the JSON body as plain text
            return web.Response(body=doc.encode(), headers={"Content-Type": TEXT})
        self.stats.failures += 1
        return go_http_error(doc, 503)

    async def _health(self, excluded: set[str], serializable: bool) -> tuple[bool, str]:
        s = self._s
        for alarm in s.alarms.get():
            name = alarm_name(alarm.alarm)
            if name in excluded:
                continue
            if alarm.alarm == pb.NOSPACE:
                return False, "ALARM NOSPACE"
            if alarm.alarm == pb.CORRUPT:
                return False, "ALARM CORRUPT"
            return False, "ALARM UNKNOWN"
        if not serializable and s.leader_id == 0:
            return False, "RAFT NO LEADER"
        # etcd's request timeout: 5 s plus two election timeouts
        timeout = 5 + 2 * s.cfg.election_timeout_ms / 1000
        try:
            err = await asyncio.wait_for(self._range(serializable), timeout)
        except TimeoutError:
            err = "context deadline exceeded"
        if err is not None:
            return False, f"RANGE ERROR:{err}"
        return True, ""

    async def _range(self, serializable: bool) -> str | None:
        try:
            await self._s.range(pb.RangeRequest(keys_only=True, limit=1, serializable=serializable))
        except Exception as e:
            return _error_text(e)
        return None

    # -- /livez, /readyz ------------------------------------------------------------------------

    def _read_check(self, serializable: bool) -> Check:
        async def check() -> str | None:
            return await self._range(serializable)

        return check

    def _alarm_check(self, alarm: pb.AlarmType.ValueType) -> Check:
        async def check() -> str | None:
            if any(a.alarm == alarm for a in self._s.alarms.get()):
                return f"alarm activated: {alarm_name(alarm)}"
            return None

        return check

    async def _learner_check(self) -> str | None:
        s = self._s
        me = s.cluster.member(s.member_id)
        if me is not None and me.is_learner:
            return "not supported for learner"
        return None

    async def _run(self, check_type: str, names: list[str]) -> tuple[bool, str]:
        checks = self._registries[check_type]
        ok = True
        out = []
        for name in names:
            err = await checks[name]()
            if err is not None:
                out.append(f"[-]{name} failed: {err}\n")
                ok = False
            else:
                out.append(f"[+]{name} ok\n")
            self.stats.record(check_type, name, err is None)
        return ok, "".join(out)

    def _root_handler(self, check_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if request.method != "GET":
                return method_not_allowed()
            excluded = {v for v in request.query.getall("exclude", []) if v}
            names = [n for n in self._registries[check_type] if n not in excluded]
            return self._answer(request, *await self._run(check_type, names))

        return handler

    def _check_handler(self, check_type: str, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if request.method != "GET":
                return method_not_allowed()
            return self._answer(request, *await self._run(check_type, [name]))

        return handler

    @staticmethod
    def _answer(request: web.Request, ok: bool, reason: str) -> web.Response:
        if not ok:
            return go_http_error(reason, 503)
        body = (reason if "verbose" in request.query else "") + "ok\n"
        return web.Response(
            body=body.encode(), headers={"Content-Type": TEXT, "X-Content-Type-Options": "nosniff"}
        )

    # -- /version -------------------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return method_not_allowed()
        doc = go_json(
            {
                "etcdserver": SERVER_VERSION,
                "etcdcluster": self._s.cluster.version or "not_decided",
                "storage": STORAGE_VERSION,
            }
        )
        return web.Response(body=doc.encode(), headers={"Content-Type": "application/json"})
