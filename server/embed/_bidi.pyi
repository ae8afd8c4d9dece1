"""petcd's native gRPC front (server/embed/_bidi, Rust: native/bidi).

The gRPC server for cleartext client connections: Python accepts each TCP connection, tells
HTTP/2 from the rest by its first bytes (peeked, left unread) and hands the socket over
(adopt). Unary, server-streaming and bidirectional calls all run here. Still, also, a gRPC
server on a Unix socket (HTTP/2 with prior knowledge, h2c) when given a path.
HTTP/2, gRPC framing, flow control, keepalive pings and trailers run in Rust threads without
the GIL; calls and their messages reach Python in batches: drain() when fileno() is readable
(an event loop's add_reader), or recv_batch() in a thread of its own. Responses leave through
finish() (a unary answer), the send methods, which never block the event loop (try_send) or
release the GIL while they wait (send), and end().
"""

from collections.abc import Sequence

Metadata = Sequence[tuple[str, str | bytes]]  # values are bytes exactly for keys ending in -bin

# a call opened: (EVENT_CALL, call_id, method_id, request, (metadata, peer, time_remaining));
# request is the whole request message (bytes) for a method flagged unary, else None
EVENT_CALL: int
EVENT_MESSAGE: int  # one whole gRPC message: (EVENT_MESSAGE, call_id, 0, payload, None)
EVENT_HALF_CLOSE: int  # the client ended its side: (EVENT_HALF_CLOSE, call_id, 0, None, None)
# the client reset the stream or its connection went away, or we ended the call over a message
# too large (either way): (EVENT_CANCEL, call_id, 0, None, None)
EVENT_CANCEL: int

STREAM_SENT: int
STREAM_FULL: int
STREAM_CLOSED: int

# metadata excludes pseudo-headers and the HTTP/2 / gRPC transport headers (te, content-type,
# grpc-timeout, grpc-encoding, grpc-accept-encoding, user-agent stays); peer is the string given
# to adopt() ("unix:PATH" for the Unix socket's connections); time_remaining is grpc-timeout in
# seconds or None.
CallDetails = tuple[tuple[tuple[str, str | bytes], ...], str, float | None]
Event = tuple[int, int, int, bytes | None, CallDetails | None]

class BidiFront:
    def __init__(
        self,
        path: str | None,
        methods: Sequence[str],
        services: Sequence[str],
        *,
        unary: Sequence[bool] | None = None,
        max_receive_message_length: int = 4 * 1024 * 1024,
        max_send_message_length: int | None = None,
        stream_buffer_bytes: int = 256 * 1024,
        io_threads: int = 1,
        keepalive_time_ms: int | None = None,
        keepalive_timeout_ms: int = 20_000,
    ) -> None:
        """Binds (does not yet serve) a Unix socket at path; with None, connections come only
        through adopt().

        methods: the gRPC paths served ("/etcdserverpb.Watch/Watch"); method_id in events is
        the index in this list. A request for another path is answered in Rust, without an
        event, as grpc-go answers it: UNIMPLEMENTED with "unknown method M for service S" when
        S is in services, else "unknown service S".
        unary: one flag per method, True when its request is one message (unary-unary and
        unary-stream methods; None: all False). Such a call is one EVENT_CALL that carries the
        request, sent once its first message is whole; no EVENT_MESSAGE or EVENT_HALF_CLOSE
        follow (later request DATA is read and dropped), only EVENT_CANCEL if the client
        resets the stream or leaves after the call event. A client that half-closes before
        the message is whole is answered in Rust, without an event, as grpc-go's
        processUnaryRPC answers it: UNKNOWN "EOF" (no byte of a message) or "unexpected EOF".
        (grpc-go answers a server-streaming method's missing request INTERNAL "cardinality
        violation: received no request message from non-client-streaming RPC"; the flag does
        not tell the two kinds apart.)
        A message over max_receive_message_length ends its call with RESOURCE_EXHAUSTED
        "grpc: received message larger than max (N vs. M)" and an EVENT_CANCEL for Python (no
        event at all when it is a unary call's request: Python never heard of the call);
        one over max_send_message_length (try_send, send) with RESOURCE_EXHAUSTED "grpc: trying
        to send message larger than max (N vs. M)", STREAM_CLOSED (False) and an EVENT_CANCEL
        (finish: that status instead, no event).
        Also answered without an event as grpc-go does: a content-type that is not gRPC (HTTP
        415), malformed grpc-timeout or -bin metadata (HTTP 400), a grpc-encoding other than
        identity (UNIMPLEMENTED; a compressed message on an identity call is INTERNAL, with an
        EVENT_CANCEL once the call was announced).
        The :authority must be a valid URI authority (the h2 crate resets the stream otherwise):
        grpcio's default for a unix: target is not, so a grpcio client of the Unix socket sets
        grpc.default_authority.
        stream_buffer_bytes: the bytes queued per stream beyond which try_send says FULL.
        io_threads: threads serving HTTP/2, each with its own connections (dealt in turn).
        keepalive_time_ms: when set, every connection is sent a PING this often (not only when
        idle); one whose PING ACK is later than keepalive_timeout_ms gets a GOAWAY and is
        closed (its calls get EVENT_CANCEL). Client pings are answered and never counted.
        HTTP/2: no limit on concurrent streams is advertised; stream receive windows are 1 MiB
        (connection 2 MiB), frames 16 KiB, header lists up to 16 MiB (grpc-go's).
        """

    def start(self) -> None:
        """Starts serving (the Rust runtime); events are buffered until drain or recv_batch.
        RuntimeError if started already or closed."""

    def adopt(self, fd: int, peer: str) -> None:
        """Takes ownership of fd, a connected stream socket (TCP, or Unix), and serves it as an
        HTTP/2 (h2c) connection on one of the IO threads, dealt in turn. The client preface may
        still be unread in the socket. fd is made non-blocking (TCP: TCP_NODELAY too); peer is
        the call details' peer for its calls (grpcio's form: "ipv4:127.0.0.1:54321").
        Never blocks. RuntimeError when the front is not started or is closed, ValueError or
        OSError for a descriptor that is not such a socket: fd is closed in every case."""

    def fileno(self) -> int:
        """An eventfd, readable while events wait to be drained and, for good, once close() was
        called. It belongs to the front and stays open after close() (so an event loop's
        remove_reader after close is safe) until the front is dropped; do not close it."""

    def drain(self, max_events: int) -> list[Event] | None:
        """Never waits: up to max_events (at least 1) waiting events, [] when none wait, None
        once close() was called and every event was taken. fileno() stays readable while events
        remain. Takes from the same queue as recv_batch."""

    def recv_batch(self, max_events: int, timeout_ms: int | None = None) -> list[Event] | None:
        """Waits (GIL released) for at least one event, returns up to max_events; [] on
        timeout; None once close() was called and every event was taken."""

    def send_initial_metadata(self, call_id: int, metadata: Metadata) -> bool:
        """Response headers with metadata now (else they go with the first message)."""

    def try_send(self, call_id: int, payload: bytes) -> int:
        """Queues one message without waiting: STREAM_SENT, STREAM_FULL (nothing queued: more
        than stream_buffer_bytes wait for the client) or STREAM_CLOSED (the call is gone)."""

    def send(self, call_id: int, payload: bytes) -> bool:
        """Queues one message, waiting (GIL released) for room; False if the call is gone."""

    def finish(
        self,
        call_id: int,
        payload: bytes | None,
        code: int,
        message: str = "",
        trailing_metadata: Metadata | None = None,
    ) -> None:
        """Ends the call with payload (if not None) as its last message, then the status as
        end() does; whatever HTTP/2 flow control allows, never FULL (a unary answer). A
        payload over max_send_message_length ends the call with RESOURCE_EXHAUSTED "grpc:
        trying to send message larger than max (N vs. M)" instead (no event). Response
        headers, message and trailers of a call that sent nothing yet go in one write.
        A call already gone or ended is a no-op."""

    def end(
        self, call_id: int, code: int, message: str = "", trailing_metadata: Metadata | None = None
    ) -> None:
        """Ends the call after every queued message: trailers with grpc-status code,
        grpc-message (percent-encoded as gRPC requires) and the metadata; a call that sent
        nothing yet gets a trailers-only response. A call already gone is a no-op."""

    def close(self) -> None:
        """Stops accepting, resets every open stream, removes the socket file, wakes recv_batch
        and makes fileno() readable. Waits (GIL released) for the connections to send those
        resets and GOAWAY, at most about 1 s, then for the IO threads to exit. Idempotent;
        dropping the front closes it too (and closes fileno())."""
