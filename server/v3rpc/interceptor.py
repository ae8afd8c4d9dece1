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
import contextlib
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
        if handler is None:
            return handler
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

            async def stream(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
                err = self._error(None, require_leader)
                if err is not None and (require_leader or self._s.is_learner):
                    await context.abort(*to_grpc_status(err))
                if not require_leader:
                    async for resp in inner_stream(requests, context):
                        yield resp
                    return
                async for resp in self._while_leader(inner_stream(requests, context), context):
                    yield resp

            return grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # type: ignore[no-any-return]

    async def _while_leader(self, responses: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
        """Relay responses; end the stream with "no leader" when the member loses its leader for
        more than an election timeout."""
        s = self._s
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(1)

        async def pump() -> None:
            async for item in responses:
                await queue.put((True, item))
            await queue.put((False, None))

        task = asyncio.create_task(pump())
        period = self._election_timeout
        leaderless_since: float | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    more, item = await asyncio.wait_for(queue.get(), period / 2)
                except TimeoutError:
                    more, item = True, None
                if task.done() and task.exception() is not None and queue.empty():
                    raise task.exception()  # type: ignore[misc]
                if s.leader_id == 0:
                    leaderless_since = leaderless_since or loop.time()
                    if loop.time() - leaderless_since > period:
                        await context.abort(*to_grpc_status(NoLeaderError()))
                else:
                    leaderless_since = None
                if not more:
                    return
                if item is not None:
                    yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
