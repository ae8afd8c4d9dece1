"""BidiServer (server/embed/bidi.py) on an in-process BidiFront that implements _bidi.pyi.

We test these aspects:
- requests reach the handler decoded and in order, the iterator ends at the half-close, and
  responses leave encoded and in order; a coroutine handler reads and writes through the context;
- every way a call ends, with grpcio's codes and texts: the handler returns (with a code it set),
  aborts (trailing metadata too), raises, cancels itself; the client cancels (nothing more is
  sent); the deadline passes; the stream is gone;
- a full stream buffer: the response waits in BidiFront.send off the event loop, other calls go on;
- interceptors see the method and metadata, run in the handler's task, can swap the handler or
  find none; one that raises fails the call;
- stop(): new calls refused, open calls get the grace period, then are cancelled and the front
  closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from server.embed import _bidi
from server.embed.bidi import BidiServer
from tests.framework.wait import await_until

ECHO = "/test.Echo/Echo"
OTHER = "/test.Echo/Other"
UNARY_UNARY = "/test.Echo/UnaryUnary"
UNARY_STREAM = "/test.Echo/UnaryStream"
STREAM_UNARY = "/test.Echo/StreamUnary"
METHODS = [ECHO, OTHER, UNARY_UNARY, UNARY_STREAM, STREAM_UNARY]
UNARY = {UNARY_UNARY, UNARY_STREAM}
C = grpc.StatusCode


class Events:
    """BidiFront's event queue and its descriptor, readable while events wait (an eventfd)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._queue: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    def put(self, batch: list[Any]) -> None:
        with self._lock:
            self._queue.extend(batch)
            os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.eventfd_write(self.fd, 1)

    def empty(self) -> bool:
        return not self._queue

    def drain(self, max_events: int) -> list[Any] | None:
        with self._lock:
            if self._closed and not self._queue:
                return None
            out = [self._queue.popleft() for _ in range(min(max_events, len(self._queue)))]
            if not self._queue and not self._closed:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self.fd)
            return out


@dataclass
class FakeFront:
    """BidiFront's contract (server/embed/_bidi.pyi), the client side driven by the test."""

    events: Events = field(default_factory=lambda: Events())
    sent: dict[int, list[bytes]] = field(default_factory=dict)
    initial: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)
    ended: dict[int, tuple[int, str, list[tuple[str, Any]] | None]] = field(default_factory=dict)
    full: set[int] = field(default_factory=set)  # try_send says FULL for these calls
    gone: set[int] = field(default_factory=set)  # ... and CLOSED for these
    room: threading.Event = field(default_factory=threading.Event)  # send() waits for it
    send_threads: list[str] = field(default_factory=list)
    started: bool = False
    closed: bool = False
    next_id: int = 1

    # -- BidiFront ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True

    def fileno(self) -> int:
        return self.events.fd

    def drain(self, max_events: int) -> list[Any] | None:
        return self.events.drain(max_events)

    def send_initial_metadata(self, call_id: int, metadata: Any) -> bool:
        self.initial[call_id] = list(metadata)
        return True

    def try_send(self, call_id: int, payload: bytes) -> int:
        assert type(payload) is bytes
        if call_id in self.gone:
            return _bidi.STREAM_CLOSED
        if call_id in self.full:
            return _bidi.STREAM_FULL
        self.sent.setdefault(call_id, []).append(payload)
        return _bidi.STREAM_SENT

    def send(self, call_id: int, payload: bytes) -> bool:
        self.send_threads.append(threading.current_thread().name)
        self.room.wait()
        if call_id in self.gone:
            return False
        self.sent.setdefault(call_id, []).append(payload)
        return True

    def end(self, call_id: int, code: int, message: str = "", trailing_metadata: Any = None) -> None:
        assert call_id not in self.ended, "a call ends once"
        self.ended[call_id] = (code, message, None if trailing_metadata is None else list(trailing_metadata))

    def finish(
        self, call_id: int, payload: bytes | None, code: int, message: str = "", trailing_metadata: Any = None
    ) -> None:
        if payload is not None:
            assert self.try_send(call_id, payload) == _bidi.STREAM_SENT
        self.end(call_id, code, message, trailing_metadata)

    def close(self) -> None:
        self.closed = True
        self.room.set()
        self.events.close()

    # -- the client --------------------------------------------------------------------------------

    def call(
        self,
        method: str = ECHO,
        messages: tuple[bytes, ...] = (),
        *,
        half_close: bool = True,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
        timeout: float | None = None,
    ) -> int:
        call_id, self.next_id = self.next_id, self.next_id + 1
        method_id = METHODS.index(method)
        if method in UNARY:
            assert len(messages) == 1 and half_close, "a unary call comes with its request"
            self.events.put(
                [(_bidi.EVENT_CALL, call_id, method_id, messages[0], (metadata, "unix:peer", timeout))]
            )
            return call_id
        batch: list[Any] = [(_bidi.EVENT_CALL, call_id, method_id, None, (metadata, "unix:peer", timeout))]
        batch += [(_bidi.EVENT_MESSAGE, call_id, 0, m, None) for m in messages]
        if half_close:
            batch.append((_bidi.EVENT_HALF_CLOSE, call_id, 0, None, None))
        self.events.put(batch)
        return call_id

    def message(self, call_id: int, payload: bytes) -> None:
        self.events.put([(_bidi.EVENT_MESSAGE, call_id, 0, payload, None)])

    def half_close(self, call_id: int) -> None:
        self.events.put([(_bidi.EVENT_HALF_CLOSE, call_id, 0, None, None)])

    def cancel(self, call_id: int) -> None:
        self.events.put([(_bidi.EVENT_CANCEL, call_id, 0, None, None)])

    async def status(self, call_id: int) -> tuple[int, str, list[tuple[str, Any]] | None]:
        await await_until(lambda: call_id in self.ended, what=f"call {call_id} ended")
        return self.ended[call_id]


Stream = Callable[[AsyncIterator[str], Any], AsyncIterator[str]]


def handler(stream: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=bytes.decode, response_serializer=str.encode
    )


async def echo(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    async for r in requests:
        yield r.upper()


async def forever(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    yield "started"
    await asyncio.Event().wait()


@pytest.fixture
async def front() -> AsyncIterator[FakeFront]:
    yield FakeFront()


async def serve(
    front: FakeFront, stream: Any, interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
) -> BidiServer:
    handlers = {
        ECHO: handler(stream),
        OTHER: handler(echo),
        UNARY_UNARY: grpc.unary_unary_rpc_method_handler(
            shout, request_deserializer=bytes.decode, response_serializer=str.encode
        ),
        UNARY_STREAM: grpc.unary_stream_rpc_method_handler(
            spell, request_deserializer=bytes.decode, response_serializer=str.encode
        ),
        STREAM_UNARY: grpc.stream_unary_rpc_method_handler(
            join, request_deserializer=bytes.decode, response_serializer=str.encode
        ),
    }
    assert list(handlers) == METHODS
    assert BidiServer.unary_methods(handlers) == [m in UNARY for m in METHODS]
    server = BidiServer(front, handlers, interceptors)
    await server.start()
    return server


async def shout(request: str, context: Any) -> str:
    """A unary handler whose request says how the call ends."""
    if request == "abort":
        await context.abort(C.NOT_FOUND, "etcdserver: requested lease not found", (("k", "v"),))
    if request == "raise":
        raise ValueError("boom")
    if request == "code":
        context.set_code(C.OUT_OF_RANGE)
        context.set_details("done early")
        context.set_trailing_metadata((("x-bin", b"\x00\x01"),))
    if request == "forever":
        await asyncio.Event().wait()
    if request == "later":
        await asyncio.sleep(0)
        async with asyncio.timeout(30):  # in a task by now
            await asyncio.sleep(0.01)
    if request == "user":
        return USER.get()
    return request.upper()


async def spell(request: str, context: Any) -> AsyncIterator[str]:
    for letter in request:
        yield letter


async def join(requests: AsyncIterator[str], context: Any) -> str:
    return "".join([r async for r in requests])


OK = (C.OK.value[0], "", None)


async def test_messages_in_order_then_half_close(front: FakeFront) -> None:
    server = await serve(front, echo)
    one = front.call(messages=(b"a", b"b"), half_close=False)
    await await_until(lambda: len(front.sent.get(one, [])) == 2)
    assert one not in front.ended  # the client has not half-closed: the handler still reads
    front.message(one, b"c")
    front.half_close(one)
    assert await front.status(one) == OK
    assert front.sent[one] == [b"A", b"B", b"C"]
    # a keep-alive: one stream, one message
    two = front.call(messages=(b"x",))
    assert await front.status(two) == OK
    assert front.sent[two] == [b"X"]
    await server.stop(None)


async def coroutine_style(requests: Any, context: Any) -> None:
    while (r := await context.read()) is not grpc.aio.EOF:
        await context.write(r + "!")
    await context.write("eof")


async def test_coroutine_handler_reads_and_writes_through_the_context(front: FakeFront) -> None:
    server = await serve(front, coroutine_style)
    call = front.call(messages=(b"a", b"b"))
    assert await front.status(call) == OK
    assert front.sent[call] == [b"a!", b"b!", b"eof"]
    await server.stop(None)


async def aborts(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    async for r in requests:
        yield r
        await context.abort(C.NOT_FOUND, "etcdserver: requested lease not found")


async def aborts_with_status(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    context.set_trailing_metadata((("k", "v"),))
    status = grpc.Status()
    status.code, status.details, status.trailing_metadata = C.FAILED_PRECONDITION, "pre", ()
    await context.abort_with_status(status)
    yield "never"


async def sets_code(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    yield "one"
    context.set_code(C.OUT_OF_RANGE)
    context.set_details("done early")
    context.set_trailing_metadata((("x-bin", b"\x00\x01"),))


async def raises(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    yield "one"
    raise ValueError("boom")


async def sets_code_then_raises(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    context.set_code(C.RESOURCE_EXHAUSTED)
    raise KeyError("k")
    yield "never"


async def swallows_abort(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    with contextlib.suppress(grpc.aio.AbortError):
        await context.abort(C.PERMISSION_DENIED, "no")
    yield "after abort"  # not sent: the call has its status


async def cancels_itself(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    yield "one"
    raise asyncio.CancelledError


async def bad_response(requests: AsyncIterator[str], context: Any) -> AsyncIterator[Any]:
    yield 42  # str.encode(42) fails: an unexpected error of the handler, as in grpc.aio


@pytest.mark.parametrize(
    ("stream", "sent", "status"),
    [
        (echo, [b"A"], OK),
        (aborts, [b"a"], (C.NOT_FOUND.value[0], "etcdserver: requested lease not found", None)),
        (aborts_with_status, [], (C.FAILED_PRECONDITION.value[0], "pre", [("k", "v")])),
        (sets_code, [b"one"], (C.OUT_OF_RANGE.value[0], "done early", [("x-bin", b"\x00\x01")])),
        (raises, [b"one"], (C.UNKNOWN.value[0], "Unexpected <class 'ValueError'>: boom", None)),
        (
            sets_code_then_raises,
            [],
            (C.RESOURCE_EXHAUSTED.value[0], "Unexpected <class 'KeyError'>: 'k'", None),
        ),
        (swallows_abort, [], (C.PERMISSION_DENIED.value[0], "no", None)),
        (cancels_itself, [b"one"], (C.CANCELLED.value[0], "Cancelled", None)),
        (
            bad_response,
            [],
            (
                C.UNKNOWN.value[0],
                "Unexpected <class 'TypeError'>: descriptor 'encode' for 'str' objects "
                "doesn't apply to a 'int' object",
                None,
            ),
        ),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
async def test_how_a_call_ends(
    front: FakeFront, caplog: pytest.LogCaptureFixture, stream: Stream, sent: list[bytes], status: Any
) -> None:
    server = await serve(front, stream)
    call = front.call(messages=(b"a",))
    assert await front.status(call) == status
    assert front.sent.get(call, []) == sent
    unexpected = status[1].startswith("Unexpected")
    assert ("Unexpected error in RPC handler" in caplog.text) == unexpected
    await server.stop(None)


@pytest.mark.parametrize(
    ("method", "messages", "sent", "status"),
    [
        (UNARY_UNARY, (b"a",), [b"A"], OK),
        (UNARY_UNARY, (b"",), [b""], OK),
        (
            UNARY_UNARY,
            (b"abort",),
            [],
            (C.NOT_FOUND.value[0], "etcdserver: requested lease not found", [("k", "v")]),
        ),
        (UNARY_UNARY, (b"raise",), [], (C.UNKNOWN.value[0], "Unexpected <class 'ValueError'>: boom", None)),
        # as grpc.aio: a response under a non-OK code is discarded
        (UNARY_UNARY, (b"code",), [], (C.OUT_OF_RANGE.value[0], "done early", [("x-bin", b"\x00\x01")])),
        (UNARY_STREAM, (b"abc",), [b"a", b"b", b"c"], OK),
        (UNARY_STREAM, (b"",), [], OK),
        (STREAM_UNARY, (b"a", b"b"), [b"ab"], OK),
        (STREAM_UNARY, (), [b""], OK),
    ],
)
async def test_unary_calls(
    front: FakeFront, method: str, messages: tuple[bytes, ...], sent: list[bytes], status: Any
) -> None:
    server = await serve(front, echo)
    call = front.call(method, messages)
    assert await front.status(call) == status
    assert front.sent.get(call, []) == sent
    await server.stop(None)


async def test_unary_call_cancelled_and_deadline(front: FakeFront) -> None:
    server = await serve(front, echo)
    cancelled = front.call(UNARY_UNARY, (b"forever",))
    expires = front.call(UNARY_UNARY, (b"forever",), timeout=0.05)
    await await_until(lambda: cancelled in server._calls and server._calls[cancelled].running)
    front.cancel(cancelled)
    await await_until(lambda: cancelled not in server._calls)
    assert cancelled not in front.ended  # the stream is gone: nothing is sent
    assert await front.status(expires) == (C.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded", None)
    await server.stop(None)


async def test_undecodable_request_is_the_handlers_error(front: FakeFront) -> None:
    server = await serve(front, echo)
    call = front.call(messages=(b"\xff",))
    code, message, _ = await front.status(call)
    assert (code, message.split(":")[0]) == (C.UNKNOWN.value[0], "Unexpected <class 'UnicodeDecodeError'>")
    await server.stop(None)


@dataclass
class Watched:
    """What a long-lived handler saw of its call."""

    cancelled: list[bool] = field(default_factory=list)
    closed: int = 0

    async def stream(self, requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
        context.add_done_callback(lambda ctx: self.cancelled.append(ctx.cancelled()))
        try:
            yield "started"
            await asyncio.Event().wait()
        finally:
            self.closed += 1


async def test_client_cancel_cancels_the_handler_and_sends_nothing(front: FakeFront) -> None:
    seen = Watched()
    server = await serve(front, seen.stream)
    call = front.call(half_close=False)
    await await_until(lambda: front.sent.get(call) == [b"started"])
    front.cancel(call)
    await await_until(lambda: seen.cancelled == [True])
    assert seen.closed == 1
    assert call not in front.ended
    await server.stop(None)


async def test_cancel_before_the_handler_starts(front: FakeFront) -> None:
    seen = Watched()
    server = await serve(front, seen.stream)
    front.events.put(
        [(_bidi.EVENT_CALL, 1, 0, None, ((), "unix:peer", None)), (_bidi.EVENT_CANCEL, 1, 0, None, None)]
    )
    await await_until(lambda: front.events.empty() and not server._calls)
    assert seen.cancelled == [] and front.sent == {} and front.ended == {}
    await server.stop(None)


async def test_deadline_ends_the_call(front: FakeFront) -> None:
    seen = Watched()
    server = await serve(front, seen.stream)
    call = front.call(timeout=0.05)
    assert await front.status(call) == (C.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded", None)
    await await_until(lambda: seen.cancelled == [True])
    # a call that finishes in time keeps its status, and its timer goes with it
    quick = front.call(OTHER, messages=(b"q",), timeout=30)
    assert await front.status(quick) == OK
    await server.stop(None)


async def test_stream_gone_ends_the_handler(front: FakeFront) -> None:
    async def endless(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
        try:
            while True:
                yield "x"
                await asyncio.sleep(0)
        finally:
            closed.set()

    closed = asyncio.Event()
    server = await serve(front, endless)
    call = front.call()
    await await_until(lambda: len(front.sent.get(call, [])) >= 3)
    front.gone.add(call)
    await asyncio.wait_for(closed.wait(), 30)
    assert call not in front.ended
    await server.stop(None)


async def test_full_stream_waits_off_the_loop(front: FakeFront) -> None:
    server = await serve(front, echo)
    slow = front.call(messages=(b"a", b"b"))
    front.full.add(slow)
    await await_until(lambda: len(front.send_threads) == 1)
    # the loop is free: another call is served meanwhile
    other = front.call(messages=(b"o",))
    assert await front.status(other) == OK
    assert slow not in front.ended and slow not in front.sent
    front.room.set()
    assert await front.status(slow) == OK
    assert front.sent[slow] == [b"A", b"B"]
    assert all(name.startswith("petcd-bidi-send") for name in front.send_threads)
    await server.stop(None)


async def test_full_stream_then_gone(front: FakeFront) -> None:
    seen = Watched()
    server = await serve(front, seen.stream)
    call = front.call()
    front.full.add(call)
    await await_until(lambda: len(front.send_threads) == 1)
    front.gone.add(call)
    front.room.set()
    await await_until(lambda: seen.closed == 1)
    assert call not in front.ended
    await server.stop(None)


USER: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="")


@dataclass
class Recorder(grpc.aio.ServerInterceptor):
    """Records what it sees; swaps the handler for the metadata's `swap`, or hides it."""

    seen: list[tuple[str, list[tuple[str, Any]]]] = field(default_factory=list)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        metadata = list(details.invocation_metadata or ())
        self.seen.append((details.method, metadata))
        found = await continuation(details)
        md = dict(metadata)
        USER.set(str(md.get("user", "")))
        if md.get("swap") == "other":
            return await continuation(_Details(OTHER, details.invocation_metadata))
        if md.get("swap") == "none":
            return None
        if md.get("swap") == "unary":
            return grpc.unary_unary_rpc_method_handler(lambda r, c: r)
        if md.get("swap") == "raise":
            raise RuntimeError("interceptor failed")
        return found


@dataclass
class _Details:
    method: str
    invocation_metadata: Any


async def whoami(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
    yield f"{USER.get()} {[(m.key, m.value) for m in context.invocation_metadata()]}"
    yield f"{context.peer()} {context.auth_context()['security_level'][0].decode()}"


@pytest.mark.parametrize(
    ("metadata", "sent", "status"),
    [
        (
            (("user", "root"), ("k-bin", b"\x01")),
            [b"root [('user', 'root'), ('k-bin', b'\\x01')]", b"unix:peer TSI_SECURITY_NONE"],
            OK,
        ),
        ((("swap", "other"),), [b"A"], OK),
        ((("swap", "none"),), [], (C.UNIMPLEMENTED.value[0], "Method not found!", None)),
        ((("swap", "unary"),), [], (C.INTERNAL.value[0], "Error in service handler!", None)),
        (
            (("swap", "raise"),),
            [],
            (C.UNKNOWN.value[0], "Unexpected <class 'RuntimeError'>: interceptor failed", None),
        ),
    ],
)
async def test_interceptors(front: FakeFront, metadata: Any, sent: list[bytes], status: Any) -> None:
    first, second = Recorder(), Recorder()
    server = await serve(front, whoami, (first, second))
    call = front.call(messages=(b"a",), metadata=metadata)
    assert await front.status(call) == status
    assert front.sent.get(call, []) == sent
    assert first.seen[0] == second.seen[0] == (ECHO, list(metadata))
    await server.stop(None)


@dataclass
class Wrapper(grpc.aio.ServerInterceptor):
    """An interceptor that chooses the handler at once (as EtcdInterceptor.wrap): BidiServer
    calls wrap without a coroutine; it puts the metadata's user in a context variable."""

    seen: list[str] = field(default_factory=list)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        raise AssertionError("BidiServer calls wrap")

    def wrap(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        self.seen.append(details.method)
        USER.set(str(dict(details.invocation_metadata or ()).get("user", "")))
        return handler


async def test_unary_call_answered_in_the_step_that_reads_it(front: FakeFront) -> None:
    """A unary call whose handler does not wait is answered as its event is read (no task, no
    turn of the loop), in a context of its own; one that waits goes on in a task."""
    wrapper = Wrapper()
    server = await serve(front, echo, (wrapper,))
    server._stop_reading()  # the test reads the events itself
    now = front.call(UNARY_UNARY, (b"user",), metadata=(("user", "root"),))
    later = front.call(UNARY_UNARY, (b"later",))
    server._on_readable()
    assert front.ended.get(now) == OK and front.sent[now] == [b"root"]
    assert USER.get() == "" and wrapper.seen == [UNARY_UNARY, UNARY_UNARY]
    assert later not in front.ended and server._calls[later].task is not None
    assert await front.status(later) == OK and front.sent[later] == [b"LATER"]
    await server.stop(None)


async def test_context(front: FakeFront) -> None:
    async def stream(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
        await context.send_initial_metadata((("h", "1"),))
        with pytest.raises(grpc.aio.UsageError):
            await context.send_initial_metadata((("h", "2"),))
        remaining = context.time_remaining()
        assert 0 < remaining <= 30
        assert (context.code(), context.details(), context.done(), context.cancelled()) == (
            C.OK,
            "",
            False,
            False,
        )
        context.set_details("fine")
        yield "x"

    server = await serve(front, stream)
    call = front.call(timeout=30)
    assert await front.status(call) == (C.OK.value[0], "fine", None)
    assert front.initial[call] == [("h", "1")]
    await server.stop(None)


async def test_stop_with_open_calls(front: FakeFront) -> None:
    seen = Watched()
    finishing = asyncio.Event()

    async def finishes_in_grace(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
        await finishing.wait()
        yield "bye"

    server = BidiServer(front, {ECHO: handler(seen.stream), OTHER: handler(finishes_in_grace)})
    await server.start()
    leaves = front.call(half_close=False)
    polite = front.call(OTHER)
    await await_until(lambda: front.sent.get(leaves) == [b"started"])
    stop = asyncio.create_task(server.stop(30))
    await await_until(lambda: server._stopping)
    late = front.call()
    assert await front.status(late) == (C.UNAVAILABLE.value[0], "Server is shutting down", None)
    finishing.set()
    assert await front.status(polite) == OK  # within the grace period
    assert not stop.done()  # the other call still has its grace
    front.cancel(leaves)
    await asyncio.wait_for(stop, 30)
    assert seen.cancelled == [True] and front.closed
    assert await server.wait_for_termination(0) is False
    await server.stop(None)  # again: returns at once


@pytest.mark.parametrize("grace", [None, 0.05])
async def test_stop_cancels_what_outlives_the_grace(front: FakeFront, grace: float | None) -> None:
    seen = Watched()
    server = await serve(front, seen.stream)
    call = front.call(half_close=False)
    await await_until(lambda: front.sent.get(call) == [b"started"])
    await asyncio.wait_for(server.stop(grace), 30)
    assert seen.closed == 1 and front.closed
    assert call not in front.ended  # its stream is reset by close(), not ended
