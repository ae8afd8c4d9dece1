"""grpc.aio handlers (unary, server-streaming, bidirectional) run on petcd's native gRPC front
(server/embed/_bidi: BidiFront, Rust), which serves the cleartext client connections
(server/embed/grpc_server.py NativeServer).

    server = BidiServer(front, handlers, interceptors)   # front serves list(handlers), in order,
                                                         # unary=BidiServer.unary_methods(handlers)
    await server.start()         # the loop reads the front's events when its fileno() is readable
    ...
    await server.stop(grace)     # as grpc.aio.Server.stop

HTTP/2, gRPC framing, flow control and trailers run in Rust without the GIL. Here, on the event
loop, each call runs as grpc.aio runs it: the server interceptors with the call's method and
metadata, then the handler (a coroutine, an async generator, or a coroutine using
context.read/write) with its request (it came with the call) or an async iterator of its
requests, in the same task, so what interceptors put in context variables (auth credentials)
reaches the handler. A unary answer leaves with its status in one finish(). A call ends as
grpc.aio ends it:

    the handler returns                  the code and details it set (OK, "")
    context.abort(code, details)         that status, at once; AbortError raised in the handler
    any other exception                  UNKNOWN (or the code it set) "Unexpected <class 'T'>: msg"
    the client cancels or goes away      the handler task is cancelled, nothing more is sent
    the grpc-timeout deadline passes     DEADLINE_EXCEEDED "Deadline Exceeded", the task cancelled
    interceptors find no handler         UNIMPLEMENTED "Method not found!"

Responses leave with try_send, which never blocks; past the stream's buffer (the client is not
reading) the handler waits, off the loop, in BidiFront.send on a thread of this server's own pool,
so a stuck stream holds a thread (GIL released) and never the default executor.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import contextvars
import inspect
import logging
import sys
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, NoReturn, Protocol

import grpc

from server.embed import _bidi
from server.v3rpc.interceptor import CallDetails, intercepted

__all__ = ["BidiServer", "Front"]

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]

_C = grpc.StatusCode
# what grpcio's time_remaining() says of a call without a deadline
_NO_DEADLINE = float(sys.maxsize)
_INSECURE = {"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]}
# threads waiting in BidiFront.send for a client that does not read (GIL released meanwhile)
_SEND_THREADS = 256
_BATCH = 256


class Front(Protocol):
    """What BidiServer uses of server.embed._bidi.BidiFront (see _bidi.pyi)."""

    def start(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self, max_events: int) -> list[_bidi.Event] | None: ...
    def send_initial_metadata(self, call_id: int, metadata: Metadata) -> bool: ...
    def try_send(self, call_id: int, payload: bytes) -> int: ...
    def send(self, call_id: int, payload: bytes) -> bool: ...
    def end(
        self, call_id: int, code: int, message: str = "", trailing_metadata: Metadata | None = None
    ) -> None: ...
    def finish(
        self,
        call_id: int,
        payload: bytes | None,
        code: int,
        message: str = "",
        trailing_metadata: Metadata | None = None,
    ) -> None: ...
    def close(self) -> None: ...


class Metadatum(NamedTuple):
    """One entry of invocation_metadata(), as grpcio gives it (a (key, value) pair)."""

    key: str
    value: str | bytes


class _Requests:
    """A call's requests as an async iterator: messages queue here as their events arrive and
    are decoded when the handler takes them; the iterator ends at the client's half-close (or
    when the call ends)."""

    __slots__ = ("_closed", "_decode", "_queue", "_waiter")

    def __init__(self) -> None:
        self._queue: collections.deque[bytes] = collections.deque()
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._decode: Callable[[bytes], Any] | None = None

    def put(self, payload: bytes) -> None:
        self._queue.append(payload)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if self._waiter is not None:
                raise grpc.aio.UsageError("Another read is in progress")
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        raw = self._queue.popleft()
        decode = self._decode
        return raw if decode is None else decode(raw)


# the requests of every unary-request call: already at their end
_NO_REQUESTS = _Requests()
_NO_REQUESTS.close()


class _Call:
    __slots__ = (
        "call_id",
        "callbacks",
        "cancelled",
        "deadline",
        "ended",
        "finished",
        "metadata",
        "method",
        "peer",
        "request",
        "requests",
        "running",
        "task",
        "timer",
    )

    def __init__(self, call_id: int, method: str, details: _bidi.CallDetails, request: bytes | None) -> None:
        metadata, peer, time_remaining = details
        self.call_id = call_id
        self.method = method
        self.metadata = metadata
        self.peer: str = peer
        self.deadline = None if time_remaining is None else time.monotonic() + time_remaining
        # a unary-request call's one request (it came with the call); else the stream of them
        self.request = request
        self.requests = _Requests() if request is None else _NO_REQUESTS
        self.task: asyncio.Task[None] | None = None
        # the task has begun: cancelling it runs its cleanup (a task cancelled before its first
        # step never runs, so one not yet running finds the call cancelled instead)
        self.running = False
        self.timer: asyncio.TimerHandle | None = None
        # the client went away or the deadline passed (grpc: the RPC was cancelled)
        self.cancelled = False
        # a status was sent, or the call is gone: nothing more goes out
        self.ended = False
        # the handler has returned (context.done())
        self.finished = False
        self.callbacks: list[Callable[[Any], None]] = []

    def cancel(self) -> None:
        self.cancelled = True
        self.ended = True
        if self.running and self.task is not None and not self.task.done():
            self.task.cancel()


class _Context(grpc.aio.ServicerContext[Any, Any]):
    """The grpc.aio.ServicerContext of one call."""

    def __init__(self, server: BidiServer, call: _Call) -> None:
        self._server = server
        self._call = call
        self._handler: Any = None  # the one the interceptors chose
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Metadata = ()
        self._initial_sent = False
        self._aborted = False

    async def read(self) -> Any:
        try:
            return await self._call.requests.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def write(self, message: Any) -> None:
        await self._server._send(self._call, self._handler, message)

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._initial_sent:
            raise grpc.aio.UsageError("Send initial metadata failed: already sent")
        self._initial_sent = True
        self._server._front.send_initial_metadata(self._call.call_id, tuple(initial_metadata))

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        if self._aborted:
            raise grpc.aio.UsageError("Abort already called!")
        self._aborted = True
        # as grpcio: what set_details / set_trailing_metadata left stands unless given here
        if details or not self._details:
            self._details = details
        if trailing_metadata or not self._trailing:
            self._trailing = tuple(trailing_metadata)
        self._code = code
        self._server._end(self._call, code, self._details, self._trailing)
        raise grpc.aio.AbortError("Locally aborted.")

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._trailing

    def invocation_metadata(self) -> Any:
        return tuple(Metadatum(k, v) for k, v in self._call.metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code or _C.OK

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_compression(self, compression: grpc.Compression) -> None:
        pass  # responses go uncompressed, as grpc-go's (etcd's) do unless the server sets one

    def disable_next_message_compression(self) -> None:
        pass

    def peer(self) -> str:
        return self._call.peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return _INSECURE

    def time_remaining(self) -> float:
        deadline = self._call.deadline
        return _NO_DEADLINE if deadline is None else max(0.0, deadline - time.monotonic())

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._call.finished:
            callback(self)
        else:
            self._call.callbacks.append(callback)


_Wrap = Callable[
    ["grpc.RpcMethodHandler[Any, Any]", grpc.HandlerCallDetails], "grpc.RpcMethodHandler[Any, Any]"
]


def _eager_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Runs coro's first step now, as Python 3.12's eager tasks do: None when it finished
    there (a unary call answered without waiting: no task, no turn of the loop), else the task
    it goes on in. Before its first wait coro has no current task (3.11), so the call's path to
    its first await must not need one (asyncio.timeout: use asyncio.wait_for there)."""
    if _EAGER_START:
        task: asyncio.Task[None] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
        return None if task.done() else task
    context = contextvars.copy_context()
    try:
        awaited = context.run(coro.send, None)
    except StopIteration:
        return None
    return loop.create_task(_Resumed(coro, awaited), context=context)


_EAGER_START = sys.version_info >= (3, 12)


class _Resumed(collections.abc.Coroutine[Any, Any, None]):
    """A coroutine already started outside any task, for the task it goes on in: the first
    step hands the task what the coroutine awaits, the rest pass through."""

    __slots__ = ("_awaited", "_coro", "_started")

    def __init__(self, coro: Coroutine[Any, Any, None], awaited: Any) -> None:
        self._coro = coro
        self._awaited: Any = awaited
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._awaited
        return self._coro.send(value)

    def __next__(self) -> Any:
        return self.send(None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._started = True
        return self._coro.throw(typ) if val is None and tb is None else self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, None]:
        return self  # type: ignore[return-value]


def _encode(serialize: Callable[[Any], bytes] | None, response: Any) -> bytes:
    data = response if serialize is None else serialize(response)
    if type(data) is not bytes:
        raise TypeError(f"Expected bytes, got {type(data).__name__}")
    return data


class BidiServer:
    """Runs grpc.aio handlers on a BidiFront (see the module docstring).

    front serves the paths of handlers, method_id being the index in list(handlers); it was told
    which of them take a unary request (unary_methods), whose calls arrive with their request."""

    def __init__(
        self,
        front: Front,
        handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self._front = front
        self._handlers = dict(handlers)
        self._methods = list(handlers)
        self._interceptors = tuple(interceptors)
        # interceptors that choose a call's handler at once (EtcdInterceptor.wrap), innermost
        # first; None when one of them must be awaited (then they chain as grpc.aio chains them)
        wrappers: list[_Wrap] = [w for i in self._interceptors if callable(w := getattr(i, "wrap", None))]
        self._wrappers = tuple(reversed(wrappers)) if len(wrappers) == len(self._interceptors) else None
        self._calls: dict[int, _Call] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._senders: ThreadPoolExecutor | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    @staticmethod
    def unary_methods(handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> list[bool]:
        """For BidiFront(unary=...): which methods, in order, take one request."""
        return [not h.request_streaming for h in handlers.values()]

    async def start(self) -> None:
        if self._loop is not None:
            raise ValueError("Cannot start already-started server!")
        self._loop = loop = asyncio.get_running_loop()
        self._senders = ThreadPoolExecutor(_SEND_THREADS, thread_name_prefix="petcd-bidi-send")
        self._front.start()
        loop.add_reader(self._front.fileno(), self._on_readable)
        self._reading = True

    async def stop(self, grace: float | None) -> None:
        """As grpc.aio.Server.stop: new calls are refused at once, open calls get grace
        seconds to finish, then their handlers are cancelled and their streams reset."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        tasks = [call.task for call in self._calls.values() if call.task is not None]
        if grace and tasks:
            await asyncio.wait(tasks, timeout=grace)
        for call in list(self._calls.values()):
            call.cancel()  # the streams are reset below, not ended one by one
        await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._front.close)
        self._stop_reading()
        if self._senders is not None:
            self._senders.shutdown(wait=False)
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        """True if timeout passed first, as grpc.aio's."""
        if self._stopped.is_set():
            return False
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return True
        return False

    # -- events: the front's descriptor is readable while events wait -----------------------------

    def _on_readable(self) -> None:
        events = self._front.drain(_BATCH)
        if events is None:
            self._stop_reading()
        elif events:
            self._on_events(events)

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._front.fileno())
        self._reading = False

    def _on_events(self, events: list[_bidi.Event]) -> None:
        calls = self._calls
        for kind, call_id, method_id, payload, details in events:
            if kind == _bidi.EVENT_CALL:
                assert details is not None
                self._open(call_id, method_id, details, payload)
            elif kind == _bidi.EVENT_MESSAGE:
                call = calls.get(call_id)
                if call is not None:
                    assert payload is not None
                    call.requests.put(payload)
            elif kind == _bidi.EVENT_HALF_CLOSE:
                call = calls.get(call_id)
                if call is not None:
                    call.requests.close()
            elif kind == _bidi.EVENT_CANCEL:
                call = calls.get(call_id)
                if call is not None:
                    call.cancel()

    def _open(self, call_id: int, method_id: int, details: _bidi.CallDetails, request: bytes | None) -> None:
        if self._stopping:
            self._front.end(call_id, _C.UNAVAILABLE.value[0], "Server is shutting down")
            return
        loop = self._loop
        assert loop is not None
        call = _Call(call_id, self._methods[method_id], details, request)
        self._calls[call_id] = call
        time_remaining = details[2]
        if time_remaining is not None:
            call.timer = loop.call_later(time_remaining, self._expire, call)
        if request is None:
            call.task = loop.create_task(self._run(call))
        else:
            call.task = _eager_task(loop, self._run(call))

    def _expire(self, call: _Call) -> None:
        if not call.ended:
            self._end(call, _C.DEADLINE_EXCEEDED, "Deadline Exceeded", ())
        call.cancel()

    # -- one call ---------------------------------------------------------------------------------

    def _end(self, call: _Call, code: grpc.StatusCode, details: str, trailing: Metadata) -> None:
        if call.ended:
            return
        call.ended = True
        self._front.end(call.call_id, code.value[0], details, trailing or None)

    def _wrapped(self, call: _Call) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._handlers.get(call.method)
        if handler is None or not self._wrappers:
            return handler
        details = CallDetails(call.method, tuple(Metadatum(k, v) for k, v in call.metadata))
        for wrap in self._wrappers:
            handler = wrap(handler, details)
        return handler

    async def _intercepted(self, call: _Call) -> grpc.RpcMethodHandler[Any, Any] | None:
        metadata = tuple(Metadatum(k, v) for k, v in call.metadata)
        handler: grpc.RpcMethodHandler[Any, Any] | None = await intercepted(
            self._interceptors, CallDetails(call.method, metadata), lambda d: self._handlers.get(d.method)
        )
        return handler

    async def _run(self, call: _Call) -> None:
        call.running = True
        context = _Context(self, call)
        try:
            if call.cancelled:
                return
            handler: Any = (
                self._wrapped(call) if self._wrappers is not None else await self._intercepted(call)
            )
            if handler is None:
                self._end(call, _C.UNIMPLEMENTED, "Method not found!", ())
                return
            context._handler = handler
            if not await self._invoke(call, handler, context):
                # an interceptor swapped in a handler of another kind, or one that is not async:
                # grpc.aio would run it; petcd's handlers are never such
                log.error("no async handler of the method's kind for %s: %r", call.method, handler)
                self._end(call, _C.INTERNAL, "Error in service handler!", ())
        except asyncio.CancelledError:
            # the client left, the deadline passed or the server stops: the stream is gone or
            # already ended; else the handler cancelled itself, which ends the call
            self._end(call, _C.CANCELLED, "Cancelled", ())
        except grpc.aio.AbortError:
            pass  # abort() sent the status
        except Exception as exc:
            if not call.ended:
                log.exception("Unexpected error in RPC handler %s", call.method)
                code = context._code if context._code not in (None, _C.OK) else _C.UNKNOWN
                assert code is not None
                self._end(call, code, f"Unexpected {type(exc)}: {exc}", context._trailing)
        finally:
            self._finish(call, context)

    async def _invoke(self, call: _Call, handler: Any, context: _Context) -> bool:
        """Runs the handler and ends the call as it returned; False when the handler is not of
        the kind the call was opened as, or not async."""
        request: Any
        if call.request is not None:
            decode = handler.request_deserializer
            request = call.request if decode is None else decode(call.request)
            unary_response, streamed_responses = handler.unary_unary, handler.unary_stream
        else:
            call.requests._decode = handler.request_deserializer
            request = call.requests
            unary_response, streamed_responses = handler.stream_unary, handler.stream_stream
        if unary_response is not None:
            if not inspect.iscoroutinefunction(unary_response):
                return False
            self._answer(call, context, handler, await unary_response(request, context))
            return True
        if inspect.isasyncgenfunction(streamed_responses):
            await self._stream(call, handler, streamed_responses(request, context))
        elif inspect.iscoroutinefunction(streamed_responses):
            await streamed_responses(request, context)  # responses through context.write
        else:
            return False
        self._end(call, context._code or _C.OK, context._details, context._trailing)
        return True

    def _answer(self, call: _Call, context: _Context, handler: Any, response: Any) -> None:
        """Ends a unary-response call: its response and status in one go."""
        if call.ended:
            return
        code = context._code or _C.OK
        data = _encode(handler.response_serializer, response) if code is _C.OK else None
        call.ended = True
        self._front.finish(call.call_id, data, code.value[0], context._details, context._trailing or None)

    async def _stream(self, call: _Call, handler: Any, responses: AsyncGenerator[Any, None]) -> None:
        # _send inlined up to try_send: a response that fits the stream's buffer costs no await
        serialize = handler.response_serializer
        try_send = self._front.try_send
        call_id = call.call_id
        sent_ok = _bidi.STREAM_SENT
        async with contextlib.aclosing(responses):
            async for response in responses:
                if call.ended:
                    return
                data = response if serialize is None else serialize(response)
                if type(data) is not bytes:
                    raise TypeError(f"Expected bytes, got {type(data).__name__}")
                sent = try_send(call_id, data)
                if sent != sent_ok and not await self._send_rest(call, data, sent):
                    return

    async def _send(self, call: _Call, handler: Any, response: Any) -> bool:
        """Sends one response; False once the call has ended (nothing more goes out)."""
        if call.ended:
            return False
        data = _encode(handler.response_serializer, response)
        sent = self._front.try_send(call.call_id, data)
        return sent == _bidi.STREAM_SENT or await self._send_rest(call, data, sent)

    async def _send_rest(self, call: _Call, data: bytes, sent: int) -> bool:
        """After try_send answered sent (not STREAM_SENT): waits for room when the stream is
        full; False once the stream is gone."""
        if sent == _bidi.STREAM_FULL:
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(self._senders, self._front.send, call.call_id, data):
                return True
        call.ended = True  # the stream is gone
        return False

    def _finish(self, call: _Call, context: _Context) -> None:
        if call.timer is not None:
            call.timer.cancel()
        self._calls.pop(call.call_id, None)
        call.requests.close()
        call.finished = True
        callbacks, call.callbacks = call.callbacks, []
        for callback in callbacks:
            try:
                callback(context)
            except Exception:
                log.exception("Exception calling done callback")
