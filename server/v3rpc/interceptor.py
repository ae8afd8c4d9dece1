"""Checks every RPC passes before its handler (etcd's api/v3rpc/interceptor.go):

- a learner serves only Status and serializable Range: "etcdserver: rpc not supported for learner";
- a request carrying the metadata hasleader=true (clientv3.WithRequireLeader, which
  kube-apiserver sets on its watches) fails with "etcdserver: no leader" when the member has no
  leader; such a stream is also closed with that error once the member loses its leader, so
  the client moves to a member that has one.

While auth is enabled it also takes the call's credentials (server/v3rpc/auth.py), which the
server checks where etcd does. A hook, when given, has the last word on the handler before
those wrappers: the fault surface (server/faults) wraps KV calls with it while faults are set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.errors import EtcdError
from server.etcdserver.api import Admission, RaftStatus
from server.etcdserver.errors import NoLeaderError
from server.v3rpc.auth import CredentialsInterceptor
from server.v3rpc.errors import NotSupportedForLearnerError, to_grpc_status

__all__ = ["CallDetails", "EtcdInterceptor", "HandlerHook", "intercepted"]


class CallDetails(grpc.HandlerCallDetails):
    """What a server interceptor is told about a call: its method and metadata."""

    def __init__(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def intercepted(
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    details: grpc.HandlerCallDetails,
    resolve: Callable[[grpc.HandlerCallDetails], Any],
) -> Any:
    """The handler a call gets through the server interceptors, chained as grpc.aio chains them:
    each continues to the next, the last to resolve(details) (the registered handler or None)."""

    async def continue_at(index: int, d: grpc.HandlerCallDetails) -> Any:
        if index == len(interceptors):
            return resolve(d)
        return await interceptors[index].intercept_service(lambda d2: continue_at(index + 1, d2), d)

    return await continue_at(0, details)


REQUIRE_LEADER_KEY = "hasleader"
Ctx = grpc.aio.ServicerContext[Any, Any]
# the handler a call runs, given the method's handler and the call (synchronous: no extra await)
HandlerHook = Callable[
    ["grpc.RpcMethodHandler[Any, Any]", grpc.HandlerCallDetails], "grpc.RpcMethodHandler[Any, Any]"
]


def _supported_for_learner(request: object) -> bool:
    if isinstance(request, pb.StatusRequest):
        return True
    return isinstance(request, pb.RangeRequest) and request.serializable


class EtcdInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        status: RaftStatus,
        auth: Admission,
        *,
        election_timeout_s: float,
        client_cert_auth: bool,
        hook: HandlerHook | None = None,
    ) -> None:
        self._s = status
        self._hook = hook
        self._auth = auth
        self._election_timeout = election_timeout_s
        # wrapped handlers, built once per (method handler, hasleader)
        self._wrapped: dict[tuple[int, bool], grpc.RpcMethodHandler[Any, Any]] = {}
        self._credentials = CredentialsInterceptor(client_cert_auth=client_cert_auth)

    def _error(self, request: object, require_leader: bool) -> EtcdError | None:
        s = self._s
        if s.is_learner and not _supported_for_learner(request):
            return NotSupportedForLearnerError()
        if require_leader and s.leader_id == 0:
            return NoLeaderError()
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        return None if handler is None else self.wrap(handler, details)

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler a call runs instead of the method's, decided at once (BidiServer calls
        this directly, with no coroutine per call)."""
        if self._hook is not None:
            handler = self._hook(handler, details)
        if self._auth.enabled:
            handler = self._credentials.intercept(handler, details)  # auth: the call's credentials
        require_leader = False
        for k, v in details.invocation_metadata or ():
            if k == REQUIRE_LEADER_KEY and v == "true":
                require_leader = True
                break
        if not require_leader and not self._s.is_learner:
            return handler  # nothing to check: no wrapper on the hot path
        key = (id(handler), require_leader)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._wrap(handler, require_leader)
        return wrapped

    def _wrap(self, handler: Any, require_leader: bool) -> grpc.RpcMethodHandler[Any, Any]:
        # handler: grpc.RpcMethodHandler, whose stubs only describe the synchronous API
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: Ctx) -> Any:
                err = self._error(request, require_leader)
                if err is not None:
                    await context.abort(*to_grpc_status(err))
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_stream: Any = handler.stream_stream
            opts = {
                "request_deserializer": handler.request_deserializer,
                "response_serializer": handler.response_serializer,
            }
            if not require_leader:

                async def learner_stream(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
                    err = self._error(None, False)
                    if err is not None and self._s.is_learner:
                        await context.abort(*to_grpc_status(err))
                    async for resp in inner_stream(requests, context):
                        yield resp

                return grpc.stream_stream_rpc_method_handler(learner_stream, **opts)

            async def leader_stream(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
                err = self._error(None, True)
                if err is not None:
                    await context.abort(*to_grpc_status(err))
                responses = inner_stream(requests, context)
                task = asyncio.current_task()
                assert task is not None
                guard = _LeaderGuard(self._s, self._election_timeout, task)
                try:
                    try:
                        guard.inside = True
                        async for resp in responses:
                            guard.inside = False
                            yield resp
                            if guard.expired:
                                break
                            guard.inside = True
                    except asyncio.CancelledError:
                        # the guard's cancel, unless the task was also cancelled from outside
                        if not guard.cancelled or task.uncancel() > 0:
                            raise
                    guard.inside = False
                    if guard.expired:
                        await context.abort(*to_grpc_status(NoLeaderError()))
                finally:
                    guard.stop()
                    await responses.aclose()

            return grpc.stream_stream_rpc_method_handler(leader_stream, **opts)
        return handler  # type: ignore[no-any-return]


class _LeaderGuard:
    """Ends a require-leader stream once its member has had no leader for more than an election
    timeout (period), as found by a look every period / 2 from the stream's start: expired is
    set then, and the stream's task is cancelled if it is inside the handler (inside: waiting
    for its next response), else the stream sees expired when it resumes. The stream's
    generator runs in one task (the call's: every transport iterates it so)."""

    __slots__ = ("_loop", "_period", "_s", "_since", "_task", "_timer", "cancelled", "expired", "inside")

    def __init__(self, status: RaftStatus, period: float, task: asyncio.Task[Any]) -> None:
        self._s = status
        self._period = period
        self._task = task
        self._loop = loop = asyncio.get_running_loop()
        # when a look first found no leader (None: the last look found one)
        self._since: float | None = None
        self.inside = False
        self.expired = False
        self.cancelled = False
        self._timer: asyncio.TimerHandle | None = loop.call_later(period / 2, self._look)

    def _look(self) -> None:
        self._timer = None
        if self._s.leader_id == 0:
            now = self._loop.time()
            if self._since is None:
                self._since = now
            elif now - self._since > self._period:
                self.expired = True
                if self.inside:
                    self.cancelled = True
                    self._task.cancel()
                return
        else:
            self._since = None
        self._timer = self._loop.call_later(self._period / 2, self._look)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
