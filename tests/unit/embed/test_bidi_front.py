"""The native bidirectional-stream front (server/embed/_bidi, Rust), with grpcio clients.

We test these aspects:
- messages both ways, split across HTTP/2 frames; the call's metadata (-bin decoded, transport
  headers left out) and grpc-timeout; half-close, then trailers with trailing metadata;
- how calls end: trailers-only, after messages, after initial metadata; non-ASCII messages;
- what is answered in Rust without an event, worded as grpc-go: unknown method or service, a
  compression we lack, a message over the receive or send limit (those two cancel the call);
- a client that cancels, or whose process dies, is an EVENT_CANCEL; try_send says FULL while
  the client does not read, send() waits until it does; close() (or dropping the front) ends
  open calls, wakes recv_batch and removes the socket;
- many concurrent streams, garbage from a peer; a burst of calls answered at once, from one
  thread or several, on two IO threads;
- adopted TCP sockets (no Unix listener): unary, server-streaming and bidi calls, the peer
  string; adopt on a front not running closes the socket;
- an asyncio loop woken through fileno() and drain(), in small batches, with many calls;
- unary methods: one EVENT_CALL with the request, finish() answers (message, status, trailing
  metadata); a half-close before the message, a request over the limit: answered without event;
- keepalive pings: answered ones keep the connection, unanswered ones close it; a 2 MiB request.

grpcio names a unix: target's authority with its percent-encoded path, which HTTP/2 servers
built on the h2 crate reject (RST_STREAM PROTOCOL_ERROR); the clients here name it "localhost".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio

from server.embed import _bidi
from server.embed._bidi import BidiFront

if TYPE_CHECKING:
    from server.embed._bidi import Event

ECHO, SCRIPT, MANUAL = "/t.S/Echo", "/t.S/Script", "/t.S/Manual"
# unary-request methods: Unary echoes (or fails as x-code says), Spray answers int(request)
# messages, Hold is the test's to drive
UNARY, SPRAY, HOLD = "/t.S/Unary", "/t.S/Spray", "/t.S/Hold"
METHODS = [ECHO, SCRIPT, MANUAL, UNARY, SPRAY, HOLD]
UNARY_FLAGS = [m in (UNARY, SPRAY, HOLD) for m in METHODS]
MAX_RECEIVE = 64 * 1024
MAX_SEND = 128 * 1024
CLIENT_OPTIONS = [("grpc.default_authority", "localhost")]
TIMEOUT = 30.0


@dataclass
class Served:
    """A BidiFront and the thread serving it: Echo echoes and ends with OK at half-close
    (trailing metadata from the call's x-trailer-bin), Script ends as its metadata says
    (x-send messages, x-initial headers, x-code and x-message), Manual is the test's to drive;
    the unary-request methods as UNARY_FLAGS's comment says."""

    front: BidiFront
    path: str  # the Unix socket's, or ""
    events: list[Event] = field(default_factory=list)
    done: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    methods: dict[int, str] = field(default_factory=dict)

    def serve(self) -> None:
        while (batch := self.front.recv_batch(256, None)) is not None:
            for event in batch:
                self.behave(event)
            with self.cond:
                self.events.extend(batch)
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def behave(self, event: Event) -> None:
        kind, call, method_id, payload, details = event
        if kind == _bidi.EVENT_CALL:
            assert details is not None
            method = self.methods[call] = METHODS[method_id]
            if method == SCRIPT:
                self.script(call, dict(details[0]))
            elif method == UNARY:
                answer_unary(self.front, call, payload, dict(details[0]))
            elif method == SPRAY:
                assert payload is not None
                for i in range(int(payload)):
                    assert self.front.try_send(call, b"s%d" % i) == _bidi.STREAM_SENT
                self.front.end(call, 0)
        elif kind == _bidi.EVENT_MESSAGE and self.methods[call] == ECHO:
            assert payload is not None
            assert self.front.send(call, payload)
        elif kind == _bidi.EVENT_HALF_CLOSE and self.methods[call] == ECHO:
            self.front.end(call, grpc.StatusCode.OK.value[0], "", [("x-trailer-bin", b"\x00\xfftrailer")])

    def script(self, call: int, md: dict[str, str | bytes]) -> None:
        if "x-initial" in md:
            assert self.front.send_initial_metadata(call, [("x-initial", str(md["x-initial"]))])
        for i in range(int(str(md.get("x-send", "0")))):
            assert self.front.try_send(call, b"m%d" % i) == _bidi.STREAM_SENT
        message = md.get("x-message-bin", b"")
        assert isinstance(message, bytes)
        self.front.end(call, int(str(md["x-code"])), message.decode())

    def wait_for(self, pred: Callable[[Event], bool], what: str) -> Event:
        with self.cond:
            found: list[Event] = []

            def seen() -> bool:
                found[:] = [e for e in self.events if pred(e)]
                return bool(found)

            assert self.cond.wait_for(seen, TIMEOUT), f"no {what} event"
            return found[0]

    def wait_call(self, n: int = 1) -> list[int]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.calls()) >= n, TIMEOUT), "no calls"
            return self.calls()

    def calls(self) -> list[int]:
        return [e[1] for e in self.events if e[0] == _bidi.EVENT_CALL]

    def of(self, call: int) -> list[int]:
        with self.cond:
            return [e[0] for e in self.events if e[1] == call]


def answer_unary(front: BidiFront, call: int, payload: bytes | None, md: dict[str, str | bytes]) -> None:
    assert payload is not None
    if "x-code" in md:
        front.finish(call, None, int(str(md["x-code"])), "it failed ✗", [("x-why-bin", b"\x00because")])
    else:
        front.finish(call, payload, 0, "", [("x-trailer", "unary")])


@pytest.fixture
def served() -> Iterator[Served]:
    directory = tempfile.mkdtemp(prefix="bidi")
    path = os.path.join(directory, "s")
    front = BidiFront(
        path,
        METHODS,
        ["t.S"],
        unary=UNARY_FLAGS,
        max_receive_message_length=MAX_RECEIVE,
        max_send_message_length=MAX_SEND,
        stream_buffer_bytes=64 * 1024,
    )
    front.start()
    s = Served(front, path)
    thread = threading.Thread(target=s.serve, daemon=True)
    thread.start()
    yield s
    front.close()
    thread.join(TIMEOUT)
    os.rmdir(directory)


@pytest.fixture
def channel(served: Served) -> Iterator[grpc.Channel]:
    # no BDP probing: the client's stream window stays 64 KiB, so a client that does not read
    # stops the server's writer
    ch = grpc.insecure_channel(f"unix:{served.path}", [*CLIENT_OPTIONS, ("grpc.http2.bdp_probe", 0)])
    yield ch
    ch.close()


def call(channel: grpc.Channel, path: str) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(path)


def unary_call(channel: grpc.Channel, path: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(path)


def spray_call(channel: grpc.Channel, path: str) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(path)


def test_echo_both_ways_with_metadata_and_trailers(served: Served, channel: grpc.Channel) -> None:
    # an empty message, small ones, and ones split across DATA frames and flow-control windows
    messages = [b"", b"a", b"bc" * 100, os.urandom(MAX_RECEIVE), os.urandom(40_000)]
    responses = call(channel, ECHO)(
        iter(messages), metadata=(("x-key", "value"), ("x-id-bin", b"\x00\x01\xfe")), timeout=60
    )
    assert list(responses) == messages
    assert responses.code() == grpc.StatusCode.OK
    assert tuple(responses.trailing_metadata() or ()) == (("x-trailer-bin", b"\x00\xfftrailer"),)
    [opened] = served.wait_call()
    _, _, method_id, payload, details = served.wait_for(lambda e: e[0] == _bidi.EVENT_CALL, "call")
    assert (method_id, payload) == (METHODS.index(ECHO), None)
    assert details is not None
    metadata, peer, timeout = details
    assert ("x-key", "value") in metadata
    assert ("x-id-bin", b"\x00\x01\xfe") in metadata
    assert not {k for k, _ in metadata} & {"te", "content-type", "grpc-timeout", "grpc-accept-encoding"}
    assert all(not k.startswith(":") for k, _ in metadata)
    assert peer.startswith("unix:")
    assert timeout is not None and 50 < timeout < 61  # grpc-core rounds its deadline up
    served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_HALF_CLOSE, "half-close")
    kinds = served.of(opened)
    assert kinds == [_bidi.EVENT_CALL] + [_bidi.EVENT_MESSAGE] * len(messages) + [_bidi.EVENT_HALF_CLOSE]


@pytest.mark.parametrize(
    ("script", "responses", "initial"),
    [
        pytest.param({"x-code": "5", "x-message-bin": b"no such key"}, [], None, id="trailers-only"),
        pytest.param(
            {"x-code": "10", "x-send": "2", "x-message-bin": "ünïcode ✓ 100% \n".encode()},
            [b"m0", b"m1"],
            None,
            id="after-messages-non-ascii",
        ),
        pytest.param(
            {"x-code": "13", "x-initial": "hello", "x-message-bin": b"boom"}, [], "hello", id="after-headers"
        ),
        pytest.param({"x-code": "0", "x-send": "1"}, [b"m0"], None, id="ok"),
    ],
)
def test_how_calls_end(
    channel: grpc.Channel, script: dict[str, str | bytes], responses: list[bytes], initial: str | None
) -> None:
    stream = call(channel, SCRIPT)(iter([]), metadata=tuple(script.items()), timeout=TIMEOUT)
    got: list[bytes] = []
    with contextlib.suppress(grpc.RpcError):
        got.extend(stream)
    code = int(str(script["x-code"]))
    assert got == responses
    assert stream.code().value[0] == code
    message = script.get("x-message-bin", b"")
    assert isinstance(message, bytes)
    assert (stream.details() or "") == message.decode()
    if initial is not None:
        assert ("x-initial", initial) in (stream.initial_metadata() or ())


@pytest.mark.parametrize(
    ("path", "compression", "code", "details"),
    [
        ("/t.S/Nope", None, grpc.StatusCode.UNIMPLEMENTED, "unknown method Nope for service t.S"),
        ("/u.V/W", None, grpc.StatusCode.UNIMPLEMENTED, "unknown service u.V"),
        (
            ECHO,
            grpc.Compression.Gzip,
            grpc.StatusCode.UNIMPLEMENTED,
            'grpc: Decompressor is not installed for grpc-encoding "gzip"',
        ),
    ],
)
def test_answered_without_an_event(
    served: Served,
    channel: grpc.Channel,
    path: str,
    compression: grpc.Compression | None,
    code: grpc.StatusCode,
    details: str,
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        list(call(channel, path)(iter([b"x"]), timeout=TIMEOUT, compression=compression))
    assert (e.value.code(), e.value.details()) == (code, details)
    assert not served.calls()


def test_oversized_request_is_resource_exhausted_and_cancels(served: Served, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        list(call(channel, ECHO)(iter([b"x" * (MAX_RECEIVE + 1)]), timeout=TIMEOUT))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        e.value.details() == f"grpc: received message larger than max ({MAX_RECEIVE + 1} vs. {MAX_RECEIVE})"
    )
    [opened] = served.wait_call()
    served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_CANCEL, "cancel")
    assert served.of(opened) == [_bidi.EVENT_CALL, _bidi.EVENT_CANCEL]


def test_oversized_response_is_resource_exhausted_and_cancels(served: Served, channel: grpc.Channel) -> None:
    stream = call(channel, MANUAL)(iter([]), timeout=TIMEOUT)
    [opened] = served.wait_call()
    assert served.front.try_send(opened, b"y" * (MAX_SEND + 1)) == _bidi.STREAM_CLOSED
    with pytest.raises(grpc.RpcError) as e:
        list(stream)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        e.value.details() == f"grpc: trying to send message larger than max ({MAX_SEND + 1} vs. {MAX_SEND})"
    )
    served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_CANCEL, "cancel")


def test_client_cancel_is_an_event(served: Served, channel: grpc.Channel) -> None:
    requests_done = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"first"
        requests_done.wait(TIMEOUT)

    stream = call(channel, MANUAL)(requests(), timeout=TIMEOUT)
    [opened] = served.wait_call()
    served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_MESSAGE, "message")
    stream.cancel()
    requests_done.set()
    served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_CANCEL, "cancel")
    assert served.front.try_send(opened, b"late") == _bidi.STREAM_CLOSED
    assert not served.front.send(opened, b"late")
    served.front.end(opened, 0)  # a call already gone: a no-op
    assert served.of(opened) == [_bidi.EVENT_CALL, _bidi.EVENT_MESSAGE, _bidi.EVENT_CANCEL]


def test_full_while_the_client_does_not_read_then_send_waits(served: Served, channel: grpc.Channel) -> None:
    stream = call(channel, MANUAL)(iter([]), timeout=TIMEOUT)
    [opened] = served.wait_call()
    sent = 0
    while (r := served.front.try_send(opened, b"%08d" % sent + b"z" * 8192)) == _bidi.STREAM_SENT:
        sent += 1
        assert sent < 10_000, "never FULL"
    assert r == _bidi.STREAM_FULL
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(stream))
    reader.start()
    for i in range(sent, sent + 50):
        assert served.front.send(opened, b"%08d" % i + b"z" * 8192)
    served.front.end(opened, 0)
    reader.join(TIMEOUT)
    assert [int(m[:8]) for m in received] == list(range(sent + 50))
    assert stream.code() == grpc.StatusCode.OK


def test_close_ends_open_calls(served: Served, channel: grpc.Channel) -> None:
    streams = [call(channel, MANUAL)(iter([]), timeout=TIMEOUT) for _ in range(3)]
    opened = served.wait_call(3)
    assert served.front.send_initial_metadata(opened[0], [("x-h", "v")])
    assert served.front.try_send(opened[1], b"one") == _bidi.STREAM_SENT

    def flood() -> None:  # sends until send() waits for a client that does not read
        while served.front.send(opened[2], b"w" * 8192):
            pass

    sender = threading.Thread(target=flood)
    sender.start()
    served.front.close()
    sender.join(TIMEOUT)
    assert not sender.is_alive()
    served.front.close()
    for stream in streams:
        with pytest.raises(grpc.RpcError) as e:
            list(stream)
        assert e.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    with served.cond:
        assert served.cond.wait_for(lambda: served.done, TIMEOUT)
    assert not os.path.exists(served.path)
    assert served.front.try_send(opened[0], b"late") == _bidi.STREAM_CLOSED
    assert served.front.recv_batch(10, 0) is None
    assert all(e[0] != _bidi.EVENT_CANCEL for e in served.events)


async def test_concurrent_streams(served: Served) -> None:
    async with aio.insecure_channel(f"unix:{served.path}", options=CLIENT_OPTIONS) as ch:
        echo: aio.StreamStreamMultiCallable = ch.stream_stream(ECHO)

        async def one(i: int) -> list[bytes]:
            return [r async for r in echo(iter([b"%d" % i, b"again %d" % i]), timeout=TIMEOUT)]

        got = await asyncio.gather(*(one(i) for i in range(200)))
    assert got == [[b"%d" % i, b"again %d" % i] for i in range(200)]
    assert len(served.calls()) == 200


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64, b"\x00" * 9],
    ids=["http1", "bad-frames", "bad-preface"],
)
def test_garbage_ends_only_its_connection(served: Served, channel: grpc.Channel, garbage: bytes) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(served.path)
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    assert list(call(channel, ECHO)(iter([b"still"]), timeout=TIMEOUT)) == [b"still"]


def test_dropped_without_close() -> None:
    directory = tempfile.mkdtemp(prefix="bidi")
    path = os.path.join(directory, "s")
    front = BidiFront(path, METHODS, ["t.S"])
    front.start()
    with grpc.insecure_channel(f"unix:{path}", CLIENT_OPTIONS) as ch:
        stream = call(ch, MANUAL)(iter([]), timeout=TIMEOUT)
        batch = front.recv_batch(1, int(TIMEOUT * 1000))
        assert batch and batch[0][0] == _bidi.EVENT_CALL
        del front
        with pytest.raises(grpc.RpcError):
            list(stream)
    assert not os.path.exists(path)
    os.rmdir(directory)


def test_client_process_killed_is_a_cancel(served: Served) -> None:
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import grpc, sys, threading\n"
            f"ch = grpc.insecure_channel('unix:{served.path}', {CLIENT_OPTIONS!r})\n"
            f"s = ch.stream_stream('{MANUAL}')(iter([b'hello']))\n"
            "threading.Event().wait()\n",
        ]
    )
    try:
        [opened] = served.wait_call()
        served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_MESSAGE, "message")
    finally:
        client.kill()
        client.wait()
    served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_CANCEL, "cancel")
    assert served.front.try_send(opened, b"late") == _bidi.STREAM_CLOSED


def test_connections_across_io_threads() -> None:
    directory = tempfile.mkdtemp(prefix="bidi")
    path = os.path.join(directory, "s")
    s = Served(BidiFront(path, METHODS, ["t.S"], io_threads=3), path)
    s.front.start()
    thread = threading.Thread(target=s.serve, daemon=True)
    thread.start()
    # a channel of its own pool per client: one connection each
    options = [*CLIENT_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(f"unix:{s.path}", options) for _ in range(6)]
    try:
        for i, ch in enumerate(channels):
            assert list(call(ch, ECHO)(iter([b"%d" % i]), timeout=TIMEOUT)) == [b"%d" % i]
    finally:
        for ch in channels:
            ch.close()
        s.front.close()
        thread.join(TIMEOUT)
    assert len(s.calls()) == 6
    os.rmdir(directory)


# --- adopted sockets, unary calls, the event loop's fd, keepalive --------------------------------


@dataclass
class Tcp:
    """A front without a Unix socket, served by a Served thread, and a TCP listener whose
    connections a thread adopts (peer as grpcio writes it)."""

    served: Served
    port: int
    peers: list[str]


@contextlib.contextmanager
def serving_tcp(io_threads: int = 1) -> Iterator[Tcp]:
    front = BidiFront(
        None,
        METHODS,
        ["t.S"],
        unary=UNARY_FLAGS,
        max_receive_message_length=4 * 1024 * 1024,
        max_send_message_length=MAX_SEND,
        io_threads=io_threads,
    )
    front.start()
    s = Served(front, "")
    serving = threading.Thread(target=s.serve, daemon=True)
    serving.start()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peers: list[str] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, (host, client_port) = listener.accept()
                peers.append(f"ipv4:{host}:{client_port}")
                front.adopt(conn.detach(), peers[-1])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield Tcp(s, port, peers)
    listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
    listener.close()
    acceptor.join(TIMEOUT)
    front.close()
    serving.join(TIMEOUT)


@pytest.fixture
def tcp() -> Iterator[Tcp]:
    with serving_tcp() as t:
        yield t


def test_adopted_tcp_serves_unary_streaming_and_bidi_calls(tcp: Tcp) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        response, state = unary_call(ch, UNARY).with_call(b"ping", timeout=TIMEOUT)
        assert response == b"ping"
        assert state.code() == grpc.StatusCode.OK
        assert ("x-trailer", "unary") in (state.trailing_metadata() or ())
        assert list(spray_call(ch, SPRAY)(b"3", timeout=TIMEOUT)) == [b"s0", b"s1", b"s2"]
        assert list(spray_call(ch, SPRAY)(b"0", timeout=TIMEOUT)) == []
        assert list(call(ch, ECHO)(iter([b"a", b"b" * 100_000]), timeout=TIMEOUT)) == [b"a", b"b" * 100_000]
    s = tcp.served
    calls = [e for e in s.events if e[0] == _bidi.EVENT_CALL]
    assert [(METHODS[e[2]], e[3]) for e in calls] == [
        (UNARY, b"ping"),
        (SPRAY, b"3"),
        (SPRAY, b"0"),
        (ECHO, None),
    ]
    [peer] = tcp.peers  # one connection
    assert all(e[4] is not None and e[4][1] == peer for e in calls)
    # a unary call is its EVENT_CALL alone; the bidi call has its messages and half-close
    for e in calls[:3]:
        assert s.of(e[1]) == [_bidi.EVENT_CALL]
    assert s.of(calls[3][1]) == [
        _bidi.EVENT_CALL,
        _bidi.EVENT_MESSAGE,
        _bidi.EVENT_MESSAGE,
        _bidi.EVENT_HALF_CLOSE,
    ]


@pytest.mark.parametrize("threads", [1, 4])
def test_calls_answered_in_a_burst(threads: int) -> None:
    """500 held calls on two connections (one per IO thread), then all answered at once, by
    finish() or try_send() and end(), from one thread or several together: each completes."""
    n = 500
    options = [("grpc.use_local_subchannel_pool", 1)]
    with (
        serving_tcp(io_threads=2) as t,
        grpc.insecure_channel(f"127.0.0.1:{t.port}", options) as a,
        grpc.insecure_channel(f"127.0.0.1:{t.port}", options) as b,
    ):
        futures = [unary_call((a, b)[i % 2], HOLD).future(b"r%d" % i, timeout=TIMEOUT) for i in range(n)]
        t.served.wait_call(n)
        assert len(set(t.peers)) == 2
        with t.served.cond:
            requests = {e[1]: e[3] for e in t.served.events if e[0] == _bidi.EVENT_CALL}
        front = t.served.front
        start = threading.Barrier(threads)

        def answer(calls: list[int]) -> None:
            start.wait(TIMEOUT)
            for call_id in calls:
                payload = requests[call_id]
                assert payload is not None
                if call_id % 2:
                    front.finish(call_id, payload, 0)
                else:
                    assert front.try_send(call_id, payload) == _bidi.STREAM_SENT
                    front.end(call_id, 0)

        ids = sorted(requests)
        answering = [threading.Thread(target=answer, args=(ids[i::threads],)) for i in range(threads)]
        for th in answering:
            th.start()
        for th in answering:
            th.join(TIMEOUT)
        assert [f.result() for f in futures] == [b"r%d" % i for i in range(n)]


def test_adopt_needs_a_running_front() -> None:
    front = BidiFront(None, METHODS, ["t.S"])
    for state in ("not started", "closed"):
        ours, theirs = socket.socketpair()
        with theirs:
            fd = ours.detach()
            with pytest.raises(RuntimeError, match=state):
                front.adopt(fd, "unix:")
            theirs.settimeout(TIMEOUT)
            assert theirs.recv(1) == b""  # the front closed its end
        if state == "not started":
            front.start()
            front.close()
    with pytest.raises(RuntimeError, match="closed"):
        front.start()


def test_adopt_rejects_a_descriptor_that_is_not_a_stream_socket() -> None:
    front = BidiFront(None, METHODS, ["t.S"])
    front.start()
    try:
        read_end, write_end = os.pipe()
        with pytest.raises(OSError):
            front.adopt(read_end, "pipe")
        with pytest.raises(OSError):  # closed: the write end sees no reader
            os.write(write_end, b"x")
        os.close(write_end)
        datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with pytest.raises(OSError, match="not a stream socket"):
            front.adopt(datagram.detach(), "dgram")
    finally:
        front.close()


@pytest.mark.parametrize(
    ("metadata", "code", "details", "trailing"),
    [
        pytest.param((), grpc.StatusCode.OK, "", ("x-trailer", "unary"), id="ok"),
        pytest.param(
            (("x-code", "9"),),
            grpc.StatusCode.FAILED_PRECONDITION,
            "it failed ✗",
            ("x-why-bin", b"\x00because"),
            id="failed-with-trailers",
        ),
    ],
)
def test_unary_finish(
    tcp: Tcp,
    metadata: tuple[tuple[str, str], ...],
    code: grpc.StatusCode,
    details: str | None,
    trailing: tuple[str, str | bytes],
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        unary = unary_call(ch, UNARY)
        try:
            response, state = unary.with_call(b"req", metadata=metadata, timeout=TIMEOUT)
            assert response == b"req"
            got: grpc.Call = state
        except grpc.RpcError as e:
            assert isinstance(e, grpc.Call)
            got = e
        assert got.code() == code
        assert got.details() == details
        assert trailing in (got.trailing_metadata() or ())
    [opened] = tcp.served.wait_call()
    assert tcp.served.of(opened) == [_bidi.EVENT_CALL]


def test_close_sends_the_answers_already_given(tcp: Tcp) -> None:
    """As a member that applied its own removal stops: the calls it answered just before close()
    get their answers; the calls it had not answered are reset."""
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        hold = unary_call(ch, HOLD)
        futures = [hold.future(b"%d" % i, timeout=TIMEOUT) for i in range(20)]
        opened = tcp.served.wait_call(20)
        answered, held = opened[:10], opened[10:]
        for call_id in answered:
            tcp.served.front.finish(call_id, b"answer", 0)
        tcp.served.front.close()
        results: list[object] = []
        for f in futures:
            try:
                results.append(f.result())
            except grpc.RpcError as e:
                results.append(e.code())
    assert results.count(b"answer") == len(answered)
    assert len([r for r in results if r != b"answer"]) == len(held)
    assert {r for r in results if r != b"answer"} <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}


def test_unary_takes_the_first_message_only(tcp: Tcp) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        # a client streaming to a unary method: the rest of its messages are not read
        stream = call(ch, UNARY)(iter([b"first", b"second", b"x" * (5 * 1024 * 1024)]), timeout=TIMEOUT)
        assert list(stream) == [b"first"]
        assert stream.code() == grpc.StatusCode.OK
    [opened] = tcp.served.wait_call()
    assert tcp.served.of(opened) == [_bidi.EVENT_CALL]


@pytest.mark.parametrize(
    ("request_messages", "code", "details"),
    [
        pytest.param([], grpc.StatusCode.UNKNOWN, "EOF", id="half-close-without-message"),
        pytest.param(
            [b"y" * (4 * 1024 * 1024 + 1)],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"grpc: received message larger than max ({4 * 1024 * 1024 + 1} vs. {4 * 1024 * 1024})",
            id="too-large",
        ),
    ],
)
def test_unary_answered_without_an_event(
    tcp: Tcp, request_messages: list[bytes], code: grpc.StatusCode, details: str
) -> None:
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}", options) as ch:
        for path in (UNARY, SPRAY):
            with pytest.raises(grpc.RpcError) as e:
                list(call(ch, path)(iter(request_messages), timeout=TIMEOUT))
            assert (e.value.code(), e.value.details()) == (code, details)
        # the connection serves on, and the front heard of nothing before this call
        assert unary_call(ch, UNARY)(b"after", timeout=TIMEOUT) == b"after"
    [opened] = tcp.served.wait_call()
    assert [e for e in tcp.served.events if e[1] != opened] == []


def test_unary_finish_over_the_send_limit(tcp: Tcp) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        future = unary_call(ch, HOLD).future(b"x", timeout=TIMEOUT)
        [opened] = tcp.served.wait_call()
        tcp.served.front.finish(opened, b"z" * (MAX_SEND + 1), 0)
        with pytest.raises(grpc.RpcError) as e:
            future.result()
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            e.value.details()
            == f"grpc: trying to send message larger than max ({MAX_SEND + 1} vs. {MAX_SEND})"
        )
        tcp.served.front.finish(opened, b"late", 0)  # ended: a no-op
    assert tcp.served.of(opened) == [_bidi.EVENT_CALL]


def test_unary_client_cancel_is_an_event(tcp: Tcp) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        future = unary_call(ch, HOLD).future(b"x", timeout=TIMEOUT)
        [opened] = tcp.served.wait_call()
        future.cancel()
        tcp.served.wait_for(lambda e: e[1] == opened and e[0] == _bidi.EVENT_CANCEL, "cancel")
        tcp.served.front.finish(opened, b"late", 0)  # gone: a no-op
    assert tcp.served.of(opened) == [_bidi.EVENT_CALL, _bidi.EVENT_CANCEL]


def test_large_unary_request(tcp: Tcp) -> None:
    big = b" " * (2 * 1024 * 1024) + b"2"  # int(big) == 2
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        started = time.monotonic()
        assert list(spray_call(ch, SPRAY)(big, timeout=TIMEOUT)) == [b"s0", b"s1"]
        elapsed = time.monotonic() - started
    [(_, _, _, payload, _)] = [e for e in tcp.served.events if e[0] == _bidi.EVENT_CALL]
    assert payload == big
    assert elapsed < 5


def test_a_burst_of_cancelled_streams_keeps_the_connection(tcp: Tcp) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tcp.port}") as ch:
        streams = [call(ch, MANUAL)(iter(()), timeout=TIMEOUT) for _ in range(1000)]
        for stream in streams:
            stream.cancel()
        s = tcp.served

        def settled() -> bool:  # every stream Python heard of was cancelled
            opened = {e[1] for e in s.events if e[0] == _bidi.EVENT_CALL and METHODS[e[2]] == MANUAL}
            return opened == {e[1] for e in s.events if e[0] == _bidi.EVENT_CANCEL}

        # after the burst on the same connection: read once every frame of the burst was
        assert unary_call(ch, UNARY)(b"still", timeout=TIMEOUT) == b"still"
        with s.cond:
            assert s.cond.wait_for(settled, TIMEOUT)
    assert len(tcp.peers) == 1  # no GOAWAY, no second connection


def test_streams_reset_before_they_are_accepted_keep_the_connection() -> None:
    # h2 counts streams the client reset while they wait in its accept queue (20 by default,
    # then GOAWAY ENHANCE_YOUR_CALM): a burst of opened-and-cancelled streams in one write
    front = BidiFront(None, METHODS, ["t.S"])
    front.start()
    try:
        ours, theirs = socket.socketpair()
        front.adopt(ours.detach(), "unix:raw")
        with theirs:
            raw = RawH2(theirs)
            burst = b"".join(
                RawH2.request(stream, MANUAL)
                + RawH2.encode(RawH2.RST_STREAM, 0, struct.pack(">I", 8), stream)
                for stream in range(1, 400, 2)
            )
            theirs.sendall(burst + RawH2.encode(RawH2.PING, 0, b"8 bytes!"))
            while (frame := raw.frame()) is not None:
                assert frame[0] != RawH2.GOAWAY
                if frame[0] == RawH2.PING and frame[1] & RawH2.ACK:
                    break
            assert frame == (RawH2.PING, RawH2.ACK, b"8 bytes!")
    finally:
        front.close()


async def test_event_loop_woken_through_fileno() -> None:
    front = BidiFront(None, METHODS, ["t.S"], unary=UNARY_FLAGS)
    front.start()
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    kinds: dict[int, list[int]] = {}
    methods: dict[int, str] = {}
    drained: list[int] = []

    def on_events() -> None:
        batch = front.drain(3)  # small batches: the fd must stay readable while events remain
        if batch is None:
            loop.remove_reader(front.fileno())
            return
        drained.append(len(batch))
        for kind, call_id, method_id, payload, _ in batch:
            kinds.setdefault(call_id, []).append(kind)
            if kind == _bidi.EVENT_CALL:
                methods[call_id] = METHODS[method_id]
                if methods[call_id] == UNARY:
                    front.finish(call_id, payload, 0)
            elif kind == _bidi.EVENT_MESSAGE and methods[call_id] == ECHO:
                assert payload is not None
                assert front.try_send(call_id, payload) == _bidi.STREAM_SENT
            elif kind == _bidi.EVENT_HALF_CLOSE and methods[call_id] == ECHO:
                front.end(call_id, 0)

    def on_accept() -> None:
        with contextlib.suppress(BlockingIOError):
            conn, (host, client_port) = listener.accept()
            front.adopt(conn.detach(), f"ipv4:{host}:{client_port}")

    loop.add_reader(front.fileno(), on_events)
    loop.add_reader(listener.fileno(), on_accept)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            unary: aio.UnaryUnaryMultiCallable = ch.unary_unary(UNARY)
            echo: aio.StreamStreamMultiCallable = ch.stream_stream(ECHO)

            async def streamed(i: int) -> list[bytes]:
                return [r async for r in echo(iter([b"e%d" % i]), timeout=TIMEOUT)]

            got = await asyncio.gather(*(unary(b"%d" % i, timeout=TIMEOUT) for i in range(200)))
            assert got == [b"%d" % i for i in range(200)]
            assert await asyncio.gather(*(streamed(i) for i in range(50))) == [
                [b"e%d" % i] for i in range(50)
            ]
    finally:
        loop.remove_reader(listener.fileno())
        listener.close()
    assert sum(1 for k in kinds.values() if k == [_bidi.EVENT_CALL]) == 200
    assert max(drained) == 3
    assert front.drain(10) == []
    assert not select.select([front.fileno()], [], [], 0)[0]
    front.close()
    assert select.select([front.fileno()], [], [], 0)[0]  # readable for good once closed
    assert front.drain(10) is None
    loop.remove_reader(front.fileno())


class RawH2:
    """The client side of HTTP/2 by hand: the preface and SETTINGS, then frames one by one."""

    HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 1, 3, 4, 6, 7
    ACK = 1

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(TIMEOUT)
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.send(self.SETTINGS, 0, b"")

    @staticmethod
    def encode(kind: int, flags: int, payload: bytes, stream: int = 0) -> bytes:
        return (
            struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
        )

    def send(self, kind: int, flags: int, payload: bytes) -> None:
        self.sock.sendall(self.encode(kind, flags, payload))

    @classmethod
    def request(cls, stream: int, path: str) -> bytes:
        """A gRPC request's HEADERS (END_HEADERS), in HPACK without the dynamic table."""

        def literal(name_index: int, value: bytes) -> bytes:  # literal, not indexed, name indexed
            return bytes([name_index]) + bytes([len(value)]) + value

        block = (
            bytes([0x83, 0x86])  # :method POST, :scheme http
            + literal(4, path.encode())  # :path
            + literal(1, b"localhost")  # :authority
            + b"\x0f\x10\x10application/grpc"  # content-type (static index 31: 15 + 16)
            + b"\x00\x02te\x08trailers"  # a literal name
        )
        return cls.encode(cls.HEADERS, 0x4, block, stream)

    def read(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def frame(self) -> tuple[int, int, bytes] | None:
        """The next frame (kind, flags, payload); SETTINGS are acknowledged; None at EOF."""
        header = self.read(9)
        if header is None:
            return None
        length = int.from_bytes(header[:3], "big")
        payload = self.read(length) if length else b""
        if payload is None:
            return None
        kind, flags = header[3], header[4]
        if kind == self.SETTINGS and not flags & self.ACK:
            self.send(self.SETTINGS, self.ACK, b"")
        return kind, flags, payload


def test_keepalive_pings_answered_keep_the_connection() -> None:
    directory = tempfile.mkdtemp(prefix="bidi")
    path = os.path.join(directory, "s")
    s = Served(BidiFront(path, METHODS, ["t.S"], unary=UNARY_FLAGS, keepalive_time_ms=100), path)
    s.front.start()
    thread = threading.Thread(target=s.serve, daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"unix:{path}", CLIENT_OPTIONS) as ch:
            # a grpcio call open across several pings (grpcio answers them), counted by a raw
            # client that answers them too
            requests_done = threading.Event()

            def requests() -> Iterator[bytes]:
                yield b"before"
                requests_done.wait(TIMEOUT)
                yield b"after"

            stream = call(ch, ECHO)(requests(), timeout=TIMEOUT)
            assert next(stream) == b"before"
            ours, theirs = socket.socketpair()
            s.front.adopt(ours.detach(), "unix:raw")
            with theirs:
                raw = RawH2(theirs)
                pings = 0
                while pings < 5:
                    frame = raw.frame()
                    assert frame is not None and frame[0] != RawH2.GOAWAY
                    if frame[0] == RawH2.PING and not frame[1] & RawH2.ACK:
                        pings += 1
                        raw.send(RawH2.PING, RawH2.ACK, frame[2])
            requests_done.set()
            assert list(stream) == [b"after"]
            assert stream.code() == grpc.StatusCode.OK
    finally:
        s.front.close()
        thread.join(TIMEOUT)
        os.rmdir(directory)


def test_keepalive_closes_a_connection_whose_pongs_are_late() -> None:
    front = BidiFront(None, METHODS, ["t.S"], keepalive_time_ms=100, keepalive_timeout_ms=300)
    front.start()
    try:
        ours, theirs = socket.socketpair()
        front.adopt(ours.detach(), "unix:raw")
        with theirs:
            raw = RawH2(theirs)  # reads, never answers a PING
            pinged: float | None = None
            kinds: list[int] = []
            while (frame := raw.frame()) is not None:
                kinds.append(frame[0])
                if frame[0] == RawH2.PING and pinged is None:
                    pinged = time.monotonic()
            assert pinged is not None
            waited = time.monotonic() - pinged
    finally:
        front.close()
    assert kinds.count(RawH2.PING) == 1
    assert kinds[-1] == RawH2.GOAWAY
    assert 0.25 < waited < 0.3 + 2  # the timeout, then the GOAWAY and close at once
