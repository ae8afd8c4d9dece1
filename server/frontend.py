"""A gRPC front-end process (see server/embed/link.py): terminates gRPC on private Unix sockets
the member's client port relays gRPC connections to, and relays every call, as raw bytes, to the
member over the link. Started by the member; exits when the link closes (the member stopped or
died).

    python -m server.frontend --link @petcd-link-... --spec '{...}'
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.api import services as api
from server.embed import link

ACK = 9
_CODES = {c.value[0]: c for c in grpc.StatusCode}
END = object()


def _identity(b: bytes) -> bytes:
    return b


class _Link(asyncio.Protocol):
    def __init__(self, closed: asyncio.Event) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = link.FrameReader(self._on_frame)
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[tuple[int, str, bytes]]] = {}
        self.streams: dict[int, asyncio.Queue[Any]] = {}
        self.out: list[bytes] = []
        self.scheduled = False
        self.closed = closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)

    def send(self, data: bytes) -> None:
        self.out.append(data)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        if self.transport is not None and self.out:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _on_frame(self, kind: int, cid: int, body: bytes) -> None:
        if kind == link.RESULT:
            fut = self.pending.pop(cid, None)
            if fut is not None and not fut.done():
                fut.set_result(link.decode_status(body))
        elif kind == link.SMSG:
            q = self.streams.get(cid)
            if q is not None:
                q.put_nowait(body)
        elif kind == link.END:
            q = self.streams.get(cid)
            if q is not None:
                q.put_nowait((END, link.decode_status(body)))


def _metadata(context: Any) -> list[tuple[str, str]]:
    md = [(k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)]
    auth = context.auth_context() or {}
    cn = auth.get("x509_common_name") or []
    if cn:
        md.append((":cn", cn[0].decode()))
    md.append((":peer", context.peer() or ""))
    return md


def _unknown(method: str, services: set[str]) -> Any:
    """grpc-go's answer to a method nobody serves (see server/v3rpc/registry.py)."""
    service, _, name = method.lstrip("/").rpartition("/")
    message = (
        f"unknown method {name} for service {service}"
        if service in services
        else f"unknown service {service}"
    )

    async def unimplemented(_: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return grpc.stream_stream_rpc_method_handler(unimplemented)


class _Relay(grpc.GenericRpcHandler):
    def __init__(self, conn: _Link) -> None:
        self.conn = conn
        self.kinds: dict[str, tuple[bool, bool]] = {}
        for name in api.SERVICE_NAMES:
            svc = api.service(name)
            for m in svc.methods:
                self.kinds[f"/{svc.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        kind = self.kinds.get(method)
        if kind is None:
            return _unknown(method, {k.rsplit("/", 1)[0].lstrip("/") for k in self.kinds})
        conn = self.conn
        client_streaming, server_streaming = kind

        async def unary(request: bytes, context: Any) -> bytes:
            cid = next(conn.ids)
            fut: asyncio.Future[tuple[int, str, bytes]] = asyncio.get_running_loop().create_future()
            conn.pending[cid] = fut
            conn.send(link.frame(link.CALL, cid, link.encode_call(method, _metadata(context), request)))
            try:
                code, msg, payload = await fut
            except asyncio.CancelledError:
                conn.pending.pop(cid, None)
                conn.send(link.frame(link.CANCEL, cid))
                raise
            if code:
                await context.abort(_CODES[code], msg)
            return payload

        async def relay(cid: int, context: Any) -> AsyncIterator[bytes]:
            q = conn.streams[cid]
            ended = False
            try:
                while True:
                    item = await q.get()
                    if isinstance(item, tuple) and item[0] is END:
                        ended = True
                        code, msg, _ = item[1]
                        if code:
                            await context.abort(_CODES[code], msg)
                        return
                    yield item
                    conn.send(link.frame(ACK, cid))
            finally:
                conn.streams.pop(cid, None)
                if not ended:
                    conn.send(link.frame(link.CANCEL, cid))

        async def unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            cid = next(conn.ids)
            conn.streams[cid] = asyncio.Queue()
            conn.send(link.frame(link.OPEN, cid, link.encode_call(method, _metadata(context), request)))
            async for item in relay(cid, context):
                yield item

        async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            cid = next(conn.ids)
            conn.streams[cid] = asyncio.Queue()
            conn.send(link.frame(link.OPEN, cid, link.encode_call(method, _metadata(context))))

            async def pump() -> None:
                async for req in requests:
                    conn.send(link.frame(link.MSG, cid, req))
                conn.send(link.frame(link.CLOSE, cid))

            task = asyncio.create_task(pump())
            try:
                async for item in relay(cid, context):
                    yield item
            finally:
                task.cancel()

        opts = {"request_deserializer": _identity, "response_serializer": _identity}
        if client_streaming:
            return grpc.stream_stream_rpc_method_handler(stream_stream, **opts)
        if server_streaming:
            return grpc.unary_stream_rpc_method_handler(unary_stream, **opts)
        return grpc.unary_unary_rpc_method_handler(unary, **opts)


async def run(link_address: str, spec: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()
    _, conn = await loop.create_unix_connection(lambda: _Link(closed), link_address)
    server = grpc.aio.server(options=[tuple(o) for o in spec["options"]])
    server.add_generic_rpc_handlers((_Relay(conn),))
    tls = spec.get("tls")
    creds = None
    if tls:
        with open(tls["key"], "rb") as k, open(tls["cert"], "rb") as c:
            pair = (k.read(), c.read())
        ca = None
        if tls.get("ca"):
            with open(tls["ca"], "rb") as f:
                ca = f.read()
        creds = grpc.ssl_server_credentials(
            [pair], root_certificates=ca, require_client_auth=bool(tls.get("client_auth"))
        )
    for addr, secure in spec["listen"]:
        if secure:
            assert creds is not None
            server.add_secure_port(addr, creds)
        else:
            server.add_insecure_port(addr)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(closed.wait())}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    await server.stop(grace=0.5)
    return 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--link", required=True)
    p.add_argument("--spec", required=True)
    args = p.parse_args()
    address = args.link.replace("@", "\0", 1) if args.link.startswith("@") else args.link
    sys.exit(asyncio.run(run(address, json.loads(args.spec))))


if __name__ == "__main__":
    main()
