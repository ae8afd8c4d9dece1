"""etcd's grpc-gateway: the v3 API as JSON over HTTP/1.1 (POST /v3/kv/range, ...).

etcd's gateway is a gRPC client of its own server; here each route calls the gRPC servicer
method directly (the same classes server/embed/etcd.py registers with grpcio), wrapped by the
same server interceptors, so requests are validated, served and answered with headers filled
exactly as on the gRPC path, and refusals carry the same status (server/v3rpc/errors.py).
HTTP headers Grpc-Metadata-<Key> reach the interceptors as metadata, as with grpc-gateway. A
servicer refuses through context.abort(); the gateway hands it a context whose abort() raises
instead, and maps the status to the HTTP code grpc-gateway uses (runtime.HTTPStatusFromCode).

Routes and wire format are etcd v3.6's (api/v3/etcdserverpb/gw/rpc.pb.gw.go, and v3lockpb's and
v3electionpb's gateways): POST only (another method gets 501 {"code":12, "message":"Method Not
Allowed"}), unknown paths under /v3/ get 404 {"code":5, "message":"Not Found"}, /v3beta/ is an
alias of /v3/. Streams answer with one {"result": ...} line per message, the HTTP headers going
out with the first one (a stream that sends nothing answers nothing until the client leaves, as
etcd's gateway waits for the gRPC headers): server streams (snapshot, election observe) and the
bidirectional ones, whose requests are the JSON values of the request body, read as they arrive:
lease keepalive, and watch (create, cancel and progress requests; the response stream outlives
the request body, as a watch outlives a half-closed gRPC stream, until the client goes away).
With auth enabled, the Authorization header carries the token (as metadata "authorization",
which etcd reads with or without a "Bearer " prefix); /v3/auth/authenticate gives one.
A websocket upgrade of any /v3/ path is served as etcd's tmc/grpc-websocket-proxy serves it
(Gateway._websocket): a message per request, a message per answer line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import grpc
from aiohttp import WSMsgType, web
from google.protobuf.message import Message

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.v3electionpb import v3election_pb2 as epb
from server.api.v3lockpb import v3lock_pb2 as lockpb
from server.config import Config
from server.errors import EtcdError
from server.etcdserver.server import EtcdServer
from server.httpapi import jsonpb
from server.services import servicers
from server.v3rpc.auth import AuthService
from server.v3rpc.errors import to_grpc_status
from server.v3rpc.interceptor import CallDetails, intercepted

__all__ = ["Gateway", "body_limit", "error_response", "http_status_from_code", "status_of"]

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]
Unary = Callable[[Any, Ctx], Awaitable[Message]]

JSON = "application/json"
METADATA_PREFIX = "Grpc-Metadata-"
AUTHORIZATION = "Authorization"
# the gRPC response header the gateway forwards on answers that came from the server
GRPC_METADATA_HEADERS = {"Grpc-Metadata-Content-Type": "application/grpc"}

# grpc-gateway's runtime.HTTPStatusFromCode
_HTTP_STATUS = {
    0: 200,  # OK
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}

INVALID_ARGUMENT = 3
UNKNOWN = 2
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12


def http_status_from_code(code: int) -> int:
    return _HTTP_STATUS.get(code, 500)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _GatewayContext:
    """The part of grpc.aio.ServicerContext the servicers use: abort()."""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise _Aborted(code, details)


def _code_int(code: grpc.StatusCode) -> int:
    return int(code.value[0])


def status_of(e: BaseException) -> tuple[int, str]:
    """The gRPC status (code, message) a client of the gRPC server would have seen for e."""
    if isinstance(e, _Aborted):
        return _code_int(e.code), e.details
    if isinstance(e, jsonpb.DecodeError):
        return INVALID_ARGUMENT, str(e)
    if isinstance(e, EtcdError):
        code, message = to_grpc_status(e)
        return _code_int(code), message
    # grpcio's answer to an exception escaping a handler
    return UNKNOWN, f"Unexpected {type(e)}: {e}"


@dataclass(frozen=True)
class _Route:
    request: type[Message]
    # the full gRPC method name and its handler (built once: interceptors cache by handler)
    method: str
    handler: Any


def _decoded(fn: Any, response: type[Message]) -> Any:
    """A stream handler whose responses are messages: the Watch servicer sends some already
    encoded for the gRPC wire (server/v3rpc/watch.py), the gateway writes them as JSON."""

    async def handler(requests: AsyncIterator[Message], ctx: Any) -> AsyncIterator[Message]:
        async for resp in fn(requests, ctx):
            yield response.FromString(resp) if type(resp) is bytes else resp

    return handler


def _unary(request: type[Message], method: str, fn: Unary) -> _Route:
    return _Route(request, method, grpc.unary_unary_rpc_method_handler(fn))


class Gateway:
    """The /v3/ routes over one server's gRPC servicers, through the gRPC server's interceptors
    (as etcd's gateway goes through its gRPC server)."""

    def __init__(self, server: EtcdServer, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self._s = server
        self._ctx = cast(Ctx, _GatewayContext())
        self._interceptors = tuple(interceptors)
        sv = servicers(server)
        kv, lease, cluster, maint = sv.kv, sv.lease, sv.cluster, sv.maintenance
        lock, election = sv.lock, sv.election
        K, L, C, M = (
            "/etcdserverpb.KV/",
            "/etcdserverpb.Lease/",
            "/etcdserverpb.Cluster/",
            "/etcdserverpb.Maintenance/",
        )
        E = "/v3electionpb.Election/"
        lease_revoke = _unary(pb.LeaseRevokeRequest, L + "LeaseRevoke", lease.LeaseRevoke)
        lease_ttl = _unary(pb.LeaseTimeToLiveRequest, L + "LeaseTimeToLive", lease.LeaseTimeToLive)
        lease_leases = _unary(pb.LeaseLeasesRequest, L + "LeaseLeases", lease.LeaseLeases)
        routes: dict[str, _Route] = {
            "/v3/kv/range": _unary(pb.RangeRequest, K + "Range", kv.Range),
            "/v3/kv/put": _unary(pb.PutRequest, K + "Put", kv.Put),
            "/v3/kv/deleterange": _unary(pb.DeleteRangeRequest, K + "DeleteRange", kv.DeleteRange),
            "/v3/kv/txn": _unary(pb.TxnRequest, K + "Txn", kv.Txn),
            "/v3/kv/compaction": _unary(pb.CompactionRequest, K + "Compact", kv.Compact),
            "/v3/watch": _Route(
                pb.WatchRequest,
                "/etcdserverpb.Watch/Watch",
                grpc.stream_stream_rpc_method_handler(_decoded(sv.watch.Watch, pb.WatchResponse)),
            ),
            "/v3/lease/grant": _unary(pb.LeaseGrantRequest, L + "LeaseGrant", lease.LeaseGrant),
            "/v3/lease/revoke": lease_revoke,
            "/v3/kv/lease/revoke": lease_revoke,
            "/v3/lease/keepalive": _Route(
                pb.LeaseKeepAliveRequest,
                L + "LeaseKeepAlive",
                grpc.stream_stream_rpc_method_handler(lease.LeaseKeepAlive),
            ),
            "/v3/lease/timetolive": lease_ttl,
            "/v3/kv/lease/timetolive": lease_ttl,
            "/v3/lease/leases": lease_leases,
            "/v3/kv/lease/leases": lease_leases,
            "/v3/cluster/member/add": _unary(pb.MemberAddRequest, C + "MemberAdd", cluster.MemberAdd),
            "/v3/cluster/member/remove": _unary(
                pb.MemberRemoveRequest, C + "MemberRemove", cluster.MemberRemove
            ),
            "/v3/cluster/member/update": _unary(
                pb.MemberUpdateRequest, C + "MemberUpdate", cluster.MemberUpdate
            ),
            "/v3/cluster/member/list": _unary(pb.MemberListRequest, C + "MemberList", cluster.MemberList),
            "/v3/cluster/member/promote": _unary(
                pb.MemberPromoteRequest, C + "MemberPromote", cluster.MemberPromote
            ),
            "/v3/maintenance/alarm": _unary(pb.AlarmRequest, M + "Alarm", maint.Alarm),
            "/v3/maintenance/status": _unary(pb.StatusRequest, M + "Status", maint.Status),
            "/v3/maintenance/defragment": _unary(pb.DefragmentRequest, M + "Defragment", maint.Defragment),
            "/v3/maintenance/hash": _unary(pb.HashRequest, M + "Hash", maint.Hash),
            "/v3/maintenance/hashkv": _unary(pb.HashKVRequest, M + "HashKV", maint.HashKV),
            "/v3/maintenance/snapshot": _Route(
                pb.SnapshotRequest, M + "Snapshot", grpc.unary_stream_rpc_method_handler(maint.Snapshot)
            ),
            "/v3/maintenance/transfer-leadership": _unary(
                pb.MoveLeaderRequest, M + "MoveLeader", maint.MoveLeader
            ),
            "/v3/maintenance/downgrade": _unary(pb.DowngradeRequest, M + "Downgrade", maint.Downgrade),
            "/v3/lock/lock": _unary(lockpb.LockRequest, "/v3lockpb.Lock/Lock", lock.Lock),
            "/v3/lock/unlock": _unary(lockpb.UnlockRequest, "/v3lockpb.Lock/Unlock", lock.Unlock),
            "/v3/election/campaign": _unary(epb.CampaignRequest, E + "Campaign", election.Campaign),
            "/v3/election/proclaim": _unary(epb.ProclaimRequest, E + "Proclaim", election.Proclaim),
            "/v3/election/leader": _unary(epb.LeaderRequest, E + "Leader", election.Leader),
            "/v3/election/observe": _Route(
                epb.LeaderRequest, E + "Observe", grpc.unary_stream_rpc_method_handler(election.Observe)
            ),
            "/v3/election/resign": _unary(epb.ResignRequest, E + "Resign", election.Resign),
        }
        routes.update(_auth_routes(sv.auth))
        self.routes = routes

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/v3/{tail:.*}", self.handle)
        app.router.add_route("*", "/v3beta/{tail:.*}", self.handle)

    # -- dispatch -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if _websocket_upgrade(request):
            return await self._websocket(request)
        route = self.routes.get("/v3/" + request.match_info["tail"])
        if route is None:
            return error_response(NOT_FOUND, "Not Found")
        if request.method != "POST":
            return error_response(UNIMPLEMENTED, "Method Not Allowed")
        handler = await self._intercepted(route, request.headers)
        if handler.stream_stream is not None:
            requests = self._request_stream(request.content.readany, route.request)
            return await self._forward_stream(request, handler.stream_stream(requests, self._ctx))
        try:
            msg = jsonpb.parse_first(await request.read(), route.request)
            self._check_size(msg)
        except (jsonpb.DecodeError, _Aborted) as e:
            return error_response(*status_of(e))
        if handler.unary_stream is not None:
            return await self._forward_stream(request, handler.unary_stream(msg, self._ctx))
        try:
            resp = await handler.unary_unary(msg, self._ctx)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, _Aborted | EtcdError):
                log.exception("gateway %s failed", request.path)
            return error_response(*status_of(e))
        return web.Response(
            body=jsonpb.marshal(resp).encode(),
            headers={"Content-Type": JSON, **GRPC_METADATA_HEADERS},
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """etcd wraps its gateway in tmc/grpc-websocket-proxy: a websocket upgrade of a /v3/
        path is served as a POST whose body is the client's messages, each followed by a
        newline, and whose answer lines (not its status or headers) go back as text messages;
        the connection closes when the call ends, and the call ends when the client leaves.
        Of the headers only the token crosses: Sec-WebSocket-Protocol "Bearer, <token>" or the
        cookie "token" becomes the Authorization header. A unary call reads its body to the
        end, that is until the websocket closes, and then has nowhere to answer: as with etcd,
        only the streams (watch, lease keepalive) are useful over a websocket."""
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        ws = web.WebSocketResponse(protocols=("Bearer",) if offered.startswith("Bearer") else ())
        await ws.prepare(request)
        headers: dict[str, str] = {}
        if offered:
            _, bearer, token = offered.partition("Bearer,")
            headers[AUTHORIZATION] = f"Bearer {token.strip()}" if bearer else ""
        if (cookie := request.cookies.get("token")) is not None:
            headers[AUTHORIZATION] = f"Bearer {cookie}"
        body = _WebSocketBody(ws)
        call = asyncio.create_task(self._websocket_call(request, ws, headers, body))
        reader = asyncio.create_task(body.pump())
        try:
            await asyncio.wait((call, reader), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (call, reader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            await ws.close()
        return ws

    async def _websocket_call(
        self, request: web.Request, ws: web.WebSocketResponse, headers: dict[str, str], body: _WebSocketBody
    ) -> None:
        route = self.routes.get("/v3/" + request.match_info["tail"])
        if route is None:
            await ws.send_str(jsonpb.marshal_status(NOT_FOUND, "Not Found"))
            return
        handler = await self._intercepted(route, headers)
        if handler.stream_stream is None:
            await body.read()
            return
        messages = handler.stream_stream(self._request_stream(body.readany, route.request), self._ctx)
        async with contextlib.aclosing(self._lines(request.path, messages)) as lines:
            async for _, line in lines:
                await ws.send_str(line.decode().rstrip("\n"))

    async def _intercepted(self, route: _Route, headers: Mapping[str, str]) -> Any:
        """The route's handler as the gRPC server's interceptors wrap it. Like grpc-gateway, HTTP
        headers Grpc-Metadata-<Key> are passed on as gRPC metadata <key>."""
        if not self._interceptors:
            return route.handler
        metadata = tuple(
            (k[len(METADATA_PREFIX) :].lower(), v)
            for k, v in headers.items()
            if k.lower().startswith(METADATA_PREFIX.lower())
        )
        if AUTHORIZATION in headers:  # grpc-gateway passes it on: etcd's token (auth)
            metadata += (("authorization", headers[AUTHORIZATION]),)
        return await intercepted(
            self._interceptors, CallDetails(route.method, metadata), lambda _: route.handler
        )

    def _check_size(self, msg: Message) -> None:
        """What grpcio refuses before a handler runs: a message over --max-request-bytes plus
        the gRPC overhead allowance."""
        limit = self._s.cfg.max_recv_bytes
        size = msg.ByteSize()
        if size > limit:
            raise _Aborted(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"grpc: received message larger than max ({size} vs. {limit})",
            )

    async def _request_stream(
        self, readany: Callable[[], Awaitable[bytes]], cls: type[Message]
    ) -> AsyncIterator[Message]:
        """The JSON values of the body as requests, each as soon as it is complete; the stream
        ends (like the gateway's send loop) at the end of the body or at the first bad value."""
        buf = bytearray()
        pos = 0
        eof = False
        limit = body_limit(self._s.cfg)  # one request may be as large as a unary call's body
        while True:
            try:
                start, end = jsonpb.scan_value(buf, pos, eof=eof)
            except jsonpb.NeedMore:
                if len(buf) > limit:
                    return
                try:
                    chunk = await readany()
                except Exception:
                    return  # the client went away: the stream ends
                if chunk:
                    buf += chunk
                else:
                    eof = True
                continue
            except (jsonpb.NoValue, jsonpb.DecodeError):
                return
            msg = cls()
            try:
                jsonpb.unmarshal(bytes(buf[start:end]), msg)
                self._check_size(msg)
            except (jsonpb.DecodeError, _Aborted):
                return
            del buf[:end]
            pos = 0
            yield msg

    async def _lines(
        self, path: str, messages: AsyncIterator[Message]
    ) -> AsyncGenerator[tuple[int | None, bytes], None]:
        """grpc-gateway's ForwardResponseStream: a {"result": ...} line per message, then an
        {"error": ...} line if the stream fails; each with the error's gRPC code or None."""
        try:
            async for m in messages:
                yield None, (jsonpb.wrap_stream("result", jsonpb.marshal(m, compact=True)) + "\n").encode()
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as e:
            if not isinstance(e, _Aborted | EtcdError):
                log.exception("gateway stream %s failed", path)
            code, message = status_of(e)
            status = jsonpb.marshal_status(code, message, compact=True)
            yield code, (jsonpb.wrap_stream("error", status) + "\n").encode()
        finally:
            aclose = getattr(messages, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _forward_stream(
        self, request: web.Request, messages: AsyncIterator[Message]
    ) -> web.StreamResponse:
        """The lines as a chunked answer, its headers going out with the first line (with the
        error's HTTP status if that line is an error)."""
        resp: web.StreamResponse | None = None
        try:
            async with contextlib.aclosing(self._lines(request.path, messages)) as lines:
                async for code, line in lines:
                    if resp is None:
                        if code is None:
                            resp = web.StreamResponse(headers={"Content-Type": JSON, **GRPC_METADATA_HEADERS})
                        else:
                            resp = web.StreamResponse(
                                status=http_status_from_code(code), headers={"Content-Type": JSON}
                            )
                        resp.enable_chunked_encoding()
                        await resp.prepare(request)
                    await resp.write(line)
            if resp is None:
                # the stream ended without a message: an empty 200, without a content type
                return web.Response(status=200)
            await resp.write_eof()
        except ConnectionError:
            log.debug("gateway stream %s: the client went away", request.path)
        return resp if resp is not None else web.Response(status=200)


def _websocket_upgrade(request: web.Request) -> bool:
    """gorilla/websocket's IsWebSocketUpgrade."""
    connection = [t.strip().lower() for t in request.headers.get("Connection", "").split(",")]
    upgrade = [t.strip().lower() for t in request.headers.get("Upgrade", "").split(",")]
    return "upgrade" in connection and "websocket" in upgrade


class _WebSocketBody:
    """A websocket's messages as a request body: each message and a newline, the end at close."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()

    async def pump(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type == WSMsgType.TEXT:
                    self._chunks.put_nowait(msg.data.encode() + b"\n")
                elif msg.type == WSMsgType.BINARY:
                    self._chunks.put_nowait(msg.data + b"\n")
        finally:
            self._chunks.put_nowait(b"")

    async def readany(self) -> bytes:
        chunk = await self._chunks.get()
        if not chunk:
            self._chunks.put_nowait(b"")  # the end stays the end
        return chunk

    async def read(self) -> bytes:
        out = bytearray()
        while chunk := await self.readany():
            out += chunk
        return bytes(out)


def _auth_routes(auth: AuthService) -> dict[str, _Route]:
    """etcd's /v3/auth/... routes."""
    A = "/etcdserverpb.Auth/"
    table: list[tuple[str, type[Message], str, Unary]] = [
        ("enable", pb.AuthEnableRequest, "AuthEnable", auth.AuthEnable),
        ("disable", pb.AuthDisableRequest, "AuthDisable", auth.AuthDisable),
        ("status", pb.AuthStatusRequest, "AuthStatus", auth.AuthStatus),
        ("authenticate", pb.AuthenticateRequest, "Authenticate", auth.Authenticate),
        ("user/add", pb.AuthUserAddRequest, "UserAdd", auth.UserAdd),
        ("user/get", pb.AuthUserGetRequest, "UserGet", auth.UserGet),
        ("user/list", pb.AuthUserListRequest, "UserList", auth.UserList),
        ("user/delete", pb.AuthUserDeleteRequest, "UserDelete", auth.UserDelete),
        ("user/changepw", pb.AuthUserChangePasswordRequest, "UserChangePassword", auth.UserChangePassword),
        ("user/grant", pb.AuthUserGrantRoleRequest, "UserGrantRole", auth.UserGrantRole),
        ("user/revoke", pb.AuthUserRevokeRoleRequest, "UserRevokeRole", auth.UserRevokeRole),
        ("role/add", pb.AuthRoleAddRequest, "RoleAdd", auth.RoleAdd),
        ("role/get", pb.AuthRoleGetRequest, "RoleGet", auth.RoleGet),
        ("role/list", pb.AuthRoleListRequest, "RoleList", auth.RoleList),
        ("role/delete", pb.AuthRoleDeleteRequest, "RoleDelete", auth.RoleDelete),
        ("role/grant", pb.AuthRoleGrantPermissionRequest, "RoleGrantPermission", auth.RoleGrantPermission),
        (
            "role/revoke",
            pb.AuthRoleRevokePermissionRequest,
            "RoleRevokePermission",
            auth.RoleRevokePermission,
        ),
    ]
    return {f"/v3/auth/{path}": _unary(req, A + method, fn) for path, req, method, fn in table}


def body_limit(cfg: Config) -> int:
    """The largest request body read: JSON carries bytes as base64 (4/3) plus field names, so
    leave room for grpcio's limit to be checked on the decoded request (with etcd's error)."""
    return 4 * cfg.max_recv_bytes + 64 * 1024


def error_response(code: int, message: str) -> web.Response:
    """grpc-gateway's DefaultHTTPErrorHandler."""
    return web.Response(
        status=http_status_from_code(code),
        body=jsonpb.marshal_status(code, message).encode(),
        headers={"Content-Type": JSON},
    )
