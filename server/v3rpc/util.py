"""Shared plumbing of the gRPC services: error mapping at the edge."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.errors import EtcdError
from server.v3rpc.errors import to_grpc_status

__all__ = ["StreamAbort", "abort_with", "ends_on_bad_request", "unary"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
G = TypeVar("G", bound=Callable[..., AsyncIterator[Any]])
# set on a stream servicer method that ends its stream itself on StreamAbort
ENDS_ON_BAD_REQUEST = "_petcd_ends_on_bad_request"


class StreamAbort(Exception):
    """A stream's request could not be handed to the servicer (server/v3rpc/registry.py decodes
    them): raised where the servicer takes the request; the stream ends with this status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def ends_on_bad_request(fn: G) -> G:
    """Marks a bidirectional-stream servicer method (an async generator) that catches
    StreamAbort wherever its requests surface and ends the call with context.abort(e.code,
    e.message): the registry then runs it without a wrapper around its responses."""
    setattr(fn, ENDS_ON_BAD_REQUEST, True)
    return fn


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
