"""The native bidirectional-stream front (server/embed/_bidi, Rust: native/bidi).

A gRPC server on a Unix socket (HTTP/2 with prior knowledge, h2c) that pygrpc-native's front
proxies its non-native streams to (NativeGrpcFront.set_fallback(path)): Watch, LeaseKeepAlive,
and unknown methods. HTTP/2, gRPC framing, flow control and trailers run in Rust threads
without the GIL; calls and their messages reach Python in batches (recv_batch), responses
leave through the send methods, which never block the event loop (try_send) or release the
GIL while they wait (send).
"""

from collections.abc import Sequence

Metadata = Sequence[tuple[str, str | bytes]]  # values are bytes exactly for keys ending in -bin

EVENT_CALL: int  # a stream opened: (EVENT_CALL, call_id, method_id, None, (metadata, peer, time_remaining))
EVENT_MESSAGE: int  # one whole gRPC message: (EVENT_MESSAGE, call_id, 0, payload, None)
EVENT_HALF_CLOSE: int  # the client ended its side: (EVENT_HALF_CLOSE, call_id, 0, None, None)
# the client reset the stream or its connection went away, or we ended the call over a message
# too large (either way): (EVENT_CANCEL, call_id, 0, None, None)
EVENT_CANCEL: int

STREAM_SENT: int
STREAM_FULL: int
STREAM_CLOSED: int

# metadata excludes pseudo-headers and the HTTP/2 / gRPC transport headers (te, content-type,
# grpc-timeout, grpc-encoding, grpc-accept-encoding, user-agent stays); peer is a string;
# time_remaining is grpc-timeout in seconds or None.
CallDetails = tuple[tuple[tuple[str, str | bytes], ...], str, float | None]
Event = tuple[int, int, int, bytes | None, CallDetails | None]

class BidiFront:
    def __init__(
        self,
        path: str,
        methods: Sequence[str],
        services: Sequence[str],
        *,
        max_receive_message_length: int = 4 * 1024 * 1024,
        max_send_message_length: int | None = None,
        stream_buffer_bytes: int = 256 * 1024,
        io_threads: int = 1,
    ) -> None:
        """Binds (does not yet serve) a Unix socket at path.

        methods: the gRPC paths served ("/etcdserverpb.Watch/Watch"); method_id in events is
        the index in this list. A request for another path is answered in Rust, without an
        event, as grpc-go answers it: UNIMPLEMENTED with "unknown method M for service S" when
        S is in services, else "unknown service S".
        A message over max_receive_message_length ends its call with RESOURCE_EXHAUSTED
        "grpc: received message larger than max (N vs. M)" and an EVENT_CANCEL for Python;
        one over max_send_message_length (try_send, send) with RESOURCE_EXHAUSTED "grpc: trying
        to send message larger than max (N vs. M)", STREAM_CLOSED (False) and an EVENT_CANCEL.
        Also answered without an event as grpc-go does: a content-type that is not gRPC (HTTP
        415), malformed grpc-timeout or -bin metadata (HTTP 400), a grpc-encoding other than
        identity (UNIMPLEMENTED; a compressed message on an identity call is INTERNAL + cancel).
        The :authority must be a valid URI authority (the h2 crate resets the stream otherwise):
        grpcio's default for a unix: target is not, so a direct grpcio client sets
        grpc.default_authority; pygrpc-native's proxy sends a valid one.
        stream_buffer_bytes: the bytes queued per stream beyond which try_send says FULL.
        io_threads: threads serving HTTP/2, each with its own connections (dealt in turn).
        """

    def start(self) -> None:
        """Starts serving (the Rust runtime); events are buffered until recv_batch."""

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

    def end(
        self, call_id: int, code: int, message: str = "", trailing_metadata: Metadata | None = None
    ) -> None:
        """Ends the call after every queued message: trailers with grpc-status code,
        grpc-message (percent-encoded as gRPC requires) and the metadata; a call that sent
        nothing yet gets a trailers-only response. A call already gone is a no-op."""

    def close(self) -> None:
        """Stops accepting, resets every open stream, removes the socket file, wakes recv_batch.
        Waits (GIL released) for the connections to send those resets and GOAWAY, at most about
        1 s, then for the IO threads to exit. Idempotent; dropping the front closes it too."""
