"""The member's side of the front-end link (see link.py): a Unix socket that front-end processes
connect to, and the supervisor that starts them. Each front-end serves gRPC on private Unix
sockets of its own; the client port relays gRPC connections to them in turn (server/embed/serve.py).

Calls arriving over the link run through exactly the handlers and interceptors of the member's
own gRPC server. A stream's server messages are sent under a credit window: at most
STREAM_WINDOW unacknowledged messages per stream, so a slow gRPC client still backs up into the
watch channel (and its watchers become victims) instead of into front-end memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc

from server.embed import link
from server.errors import EtcdError
from server.v3rpc.errors import to_grpc_status
from server.v3rpc.registry import Services

__all__ = ["FrontendLink", "Frontends"]

log = logging.getLogger(__name__)

STREAM_WINDOW = 16
ACK = 9  # front-end -> core: one stream message was delivered to the client
RESTART_BACKOFF = 1.0


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _LinkContext:
    """What servicers and interceptors use of grpc.aio.ServicerContext."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._md = tuple((k, v) for k, v in metadata if not k.startswith(":"))
        extra = dict(kv for kv in metadata if kv[0].startswith(":"))
        self._cn = extra.get(":cn", "")
        self._peer = extra.get(":peer", "")

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise _Aborted(code, details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self._cn.encode()]} if self._cn else {}

    def peer(self) -> str:
        return self._peer


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def _status(e: BaseException) -> tuple[int, str]:
    if isinstance(e, _Aborted):
        return int(e.code.value[0]), e.details
    if isinstance(e, EtcdError):
        code, msg = to_grpc_status(e)
        return int(code.value[0]), msg
    return int(grpc.StatusCode.UNKNOWN.value[0]), f"Unexpected {type(e)}: {e}"


class _Conn(asyncio.Protocol):
    def __init__(self, owner: FrontendLink) -> None:
        self.owner = owner
        self.reader = link.FrameReader(self._on_frame)
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.inbox: dict[int, asyncio.Queue[bytes | None]] = {}
        self.credit: dict[int, asyncio.Semaphore] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.connected()

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self.tasks.values():
            t.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)

    def send(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and self.out:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _on_frame(self, kind: int, cid: int, body: bytes) -> None:
        if kind == link.CALL:
            self._spawn(cid, self._unary(cid, body))
        elif kind == link.OPEN:
            self.inbox[cid] = asyncio.Queue()
            self.credit[cid] = asyncio.Semaphore(STREAM_WINDOW)
            self._spawn(cid, self._stream(cid, body))
        elif kind == link.MSG:
            q = self.inbox.get(cid)
            if q is not None:
                q.put_nowait(body)
        elif kind == link.CLOSE:
            q = self.inbox.get(cid)
            if q is not None:
                q.put_nowait(None)
        elif kind == ACK:
            sem = self.credit.get(cid)
            if sem is not None:
                sem.release()
        elif kind == link.CANCEL:
            task = self.tasks.get(cid)
            if task is not None:
                task.cancel()

    def _spawn(self, cid: int, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks[cid] = task
        task.add_done_callback(lambda _: self._done(cid))

    def _done(self, cid: int) -> None:
        self.tasks.pop(cid, None)
        self.inbox.pop(cid, None)
        self.credit.pop(cid, None)

    async def _unary(self, cid: int, body: bytes) -> None:
        method, metadata, payload = link.decode_call(body)
        try:
            handler, ctx = await self.owner.resolve(method, metadata)
            resp = await handler.unary_unary(handler.request_deserializer(payload), ctx)
            self.send(
                link.frame(link.RESULT, cid, link.encode_status(0, "", handler.response_serializer(resp)))
            )
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            code, msg = _status(e)
            self.send(link.frame(link.RESULT, cid, link.encode_status(code, msg)))

    async def _stream(self, cid: int, body: bytes) -> None:
        method, metadata, payload = link.decode_call(body)
        inbox = self.inbox[cid]
        credit = self.credit[cid]
        try:
            handler, ctx = await self.owner.resolve(method, metadata)
            deserialize = handler.request_deserializer

            async def requests() -> AsyncIterator[Any]:
                while (raw := await inbox.get()) is not None:
                    yield deserialize(raw)

            if handler.unary_stream is not None:
                responses = handler.unary_stream(deserialize(payload), ctx)
            else:
                responses = handler.stream_stream(requests(), ctx)
            async for resp in responses:
                await credit.acquire()
                self.send(link.frame(link.SMSG, cid, handler.response_serializer(resp)))
            self.send(link.frame(link.END, cid, link.encode_status(0, "")))
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            code, msg = _status(e)
            self.send(link.frame(link.END, cid, link.encode_status(code, msg)))


class FrontendLink:
    """The Unix socket front-ends relay calls over."""

    def __init__(self, svcs: Services, interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:
        self._handlers = {f"/{svc}/{m}": h for svc, methods in svcs.items() for m, h in methods.items()}
        self._interceptors = tuple(interceptors)
        self._server: asyncio.AbstractServer | None = None
        self.address = ""
        self.connections = 0
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self.address = f"\0petcd-link-{os.getpid()}-{id(self):x}"
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _Conn(self), self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def connected(self) -> None:
        self.connections += 1
        self._changed.set()

    async def wait_connections(self, n: int, timeout: float) -> bool:
        async with asyncio.timeout(timeout):
            while self.connections < n:
                self._changed.clear()
                await self._changed.wait()
        return True

    async def resolve(self, method: str, metadata: list[tuple[str, str]]) -> tuple[Any, _LinkContext]:
        ctx = _LinkContext(metadata)
        handler: Any = self._handlers.get(method)
        if handler is None:
            raise _Aborted(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if self._interceptors:
            details = _CallDetails(method, ctx.invocation_metadata())

            async def base(_: grpc.HandlerCallDetails) -> Any:
                return handler

            cont: Any = base
            for icpt in reversed(self._interceptors):

                async def chained(d: grpc.HandlerCallDetails, i: Any = icpt, nxt: Any = cont) -> Any:
                    return await i.intercept_service(nxt, d)

                cont = chained
            handler = await cont(details)
        return handler, ctx


class Frontends:
    """Starts and supervises the front-end processes, one per spec (its server options, TLS
    files and the private addresses it listens on)."""

    def __init__(self, link_address: str, specs: list[dict[str, Any]]) -> None:
        self._link = link_address
        self._specs = specs
        self._tasks: list[asyncio.Task[None]] = []
        self._procs: list[asyncio.subprocess.Process] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise(i), name=f"frontend-{i}") for i in range(len(self._specs))
        ]

    async def _supervise(self, index: int) -> None:
        while True:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.frontend",
                "--link",
                self._link.replace("\0", "@"),
                "--spec",
                json.dumps(self._specs[index]),
                stdin=asyncio.subprocess.DEVNULL,
            )
            self._procs.append(proc)
            code = await proc.wait()
            self._procs.remove(proc)
            log.warning("gRPC front-end exited; restarting", extra={"frontend": index, "code": code})
            await asyncio.sleep(RESTART_BACKOFF)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for p in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in list(self._procs):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 5)
