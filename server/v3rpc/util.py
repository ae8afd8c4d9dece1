"""Shared plumbing of the gRPC services: error mapping at the edge."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.errors import EtcdError
from server.v3rpc.errors import to_grpc_status

__all__ = ["abort_with", "unary"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], e: EtcdError) -> None:
    code, message = to_grpc_status(e)
    await context.abort(code, message)


def unary(fn: F) -> F:
    """Turn domain errors raised by a unary handler into etcd's gRPC status."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(self, request, context)
        except EtcdError as e:
            await abort_with(context, e)

    return wrapper  # type: ignore[return-value]
