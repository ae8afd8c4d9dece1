"""Every gRPC method petcd serves as handlers (server/services.py builds them once per member:
the gRPC servers, the front-end link and the JSON gateway all run the same handlers and
interceptors).

Requests are decoded here rather than by grpcio, so that what cannot be decoded is answered as
grpc-go (etcd's gRPC) answers it, byte for byte:

    larger than the receive limit     RESOURCE_EXHAUSTED "grpc: received message larger than max (N vs. M)"
    malformed (unary)                 INTERNAL "grpc: error unmarshalling request: ..."
    malformed (stream message)        INTERNAL "grpc: failed to unmarshal the received message: ..."
    unknown method / service          UNIMPLEMENTED "unknown method X for service S" / "unknown service S"

and txns nested deeper than the C protobuf decoder goes are decoded by txn_codec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from server.api import services as api
from server.etcdserver import txn_codec
from server.etcdserver.server import EtcdServer
from server.v3rpc.errors import TooManyOpsError, to_grpc_status
from server.v3rpc.interceptor import EtcdInterceptor, HandlerHook
from server.v3rpc.util import ENDS_ON_BAD_REQUEST, StreamAbort

__all__ = ["Services", "add_to", "checked", "interceptor"]

# service name -> method name -> handler
Services = dict[str, dict[str, "grpc.RpcMethodHandler[Any, Any]"]]
Ctx = grpc.aio.ServicerContext[Any, Any]

C = grpc.StatusCode
TOO_MANY_OPS = to_grpc_status(TooManyOpsError())


class _Undecodable:
    """A request that could not be handed to the servicer, and the status to answer instead."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


class _Recorder:
    """Stands in for grpc.Server to capture what the generated add_*_to_server functions add."""

    def __init__(self) -> None:
        self.services: Services = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services[service] = dict(handlers)


def _decoder(request_cls: Any, max_bytes: int, streaming: bool) -> Callable[[bytes], Any]:
    prefix = (
        "grpc: failed to unmarshal the received message: "
        if streaming
        else "grpc: error unmarshalling request: "
    )

    def decode(raw: bytes) -> Any:
        if len(raw) > max_bytes:
            return _Undecodable(
                C.RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({len(raw)} vs. {max_bytes})"
            )
        try:
            return txn_codec.parse(request_cls, raw)
        except txn_codec.TooDeepError:
            return _Undecodable(*TOO_MANY_OPS)
        except DecodeError as e:
            return _Undecodable(C.INTERNAL, prefix + str(e))

    if not streaming:
        return decode

    def decode_or_abort(raw: bytes) -> Any:
        # a stream's requests are decoded as the servicer takes them (the transports' request
        # iterators call this): what cannot be decoded surfaces there
        req = decode(raw)
        if type(req) is _Undecodable:
            raise StreamAbort(req.code, req.message)
        return req

    return decode_or_abort


def _serializer(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """Messages are serialized; a response a servicer already encoded (bytes) is sent as is."""

    def serialize_or_pass(resp: Any) -> bytes:
        return resp if type(resp) is bytes else serialize(resp)

    return serialize_or_pass


def _checked(handler: Any, request_cls: Any, max_bytes: int) -> Any:
    opts = {
        "request_deserializer": _decoder(request_cls, max_bytes, handler.request_streaming),
        "response_serializer": _serializer(handler.response_serializer),
    }
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Any, context: Ctx) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(request.code, request.message)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, **opts)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await context.abort(request.code, request.message)
            async for resp in inner_us(request, context):
                yield resp

        return grpc.unary_stream_rpc_method_handler(unary_stream, **opts)
    inner_ss = handler.stream_stream
    if getattr(inner_ss, ENDS_ON_BAD_REQUEST, False):
        # the servicer ends the stream on StreamAbort itself: nothing to do per response
        return grpc.stream_stream_rpc_method_handler(inner_ss, **opts)

    async def stream(it: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
        try:
            async for resp in inner_ss(it, context):
                yield resp
        except StreamAbort as e:
            await context.abort(e.code, e.message)

    return grpc.stream_stream_rpc_method_handler(stream, **opts)


def interceptor(s: EtcdServer, hook: HandlerHook | None = None) -> EtcdInterceptor:
    cfg = s.cfg
    return EtcdInterceptor(
        s,
        s.auth,
        election_timeout_s=cfg.election_timeout_ms / 1000,
        client_cert_auth=cfg.client_cert_auth,
        hook=hook,
    )


def checked(servicers: Iterable[tuple[Callable[[Any, Any], None], object]], max_bytes: int) -> Services:
    """The handlers of each (generated add_*Servicer_to_server, servicer), requests decoded
    here as described above."""
    rec: Any = _Recorder()
    for add, servicer in servicers:
        add(servicer, rec)
    out: Services = {}
    for svc, handlers in rec.services.items():
        out[svc] = {}
        for name, h in handlers.items():
            request_cls = _request_class(svc, name)
            out[svc][name] = _checked(h, request_cls, max_bytes)
    return out


def _request_class(service: str, method: str) -> Any:
    return message_factory.GetMessageClass(api.service(service).methods_by_name[method].input_type)


class _Unknown(grpc.GenericRpcHandler):
    """Whatever no service claims, answered as grpc-go does (on grpcio; the native server's
    BidiFront gives the same answers itself, server/embed/grpc_server.py)."""

    def __init__(self, svcs: Services) -> None:
        self._svcs = svcs

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method: str = details.method
        service, _, name = method.lstrip("/").rpartition("/")
        if service in self._svcs:
            message = f"unknown method {name} for service {service}"
        else:
            message = f"unknown service {service}"

        async def unimplemented(_: Any, context: Ctx) -> AsyncIterator[Any]:
            # an async generator like every stream handler, so wrappers (require-leader) can
            # iterate it; kube-apiserver probes KV/RangeStream this way and needs UNIMPLEMENTED
            await context.abort(C.UNIMPLEMENTED, message)
            yield None  # pragma: no cover - abort raises

        return grpc.stream_stream_rpc_method_handler(unimplemented)


def add_to(grpc_server: grpc.aio.Server, svcs: Services) -> None:
    for name, handlers in svcs.items():
        grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    grpc_server.add_generic_rpc_handlers((_Unknown(svcs),))
