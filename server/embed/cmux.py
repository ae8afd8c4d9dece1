"""Which server a new client connection belongs to, from its first bytes (etcd serves gRPC and
HTTP/1.1 on one port with soheilhy/cmux; see server/embed/serve.py). Pure functions: each takes
the bytes received so far and answers a Route, or None when it needs more bytes to decide.

Cleartext (http:// client URLs), as etcd's matchers in their order:
    HTTP/1   the first line (at most 4,096 bytes) is a request line "METHOD URI HTTP/1.x"
    gRPC     the HTTP/2 client preface "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n" (h2c prior knowledge)
    closed   anything else; a TLS ClientHello is refused at its first byte instead of waiting for
             a line (etcd waits for a newline that may never come)

TLS (https:// client URLs): etcd terminates TLS itself and serves gRPC and HTTP on both ALPN
protocols; here TLS is terminated by whichever server gets the connection, so the route is read
from the ClientHello, before the handshake:
    gRPC     the client offers ALPN h2 and not http/1.1 (grpc-go, grpcio and other gRPC clients)
    HTTP/1   anything else: http/1.1 offered (curl, Go's net/http), no ALPN, or a ClientHello
             this parser does not understand (the TLS library answers it with its alert)
    closed   anything that is not a TLS handshake record (etcd's TLS listener closes those,
             a plain HTTP request included)
"""

from __future__ import annotations

import enum

__all__ = [
    "HTTP2_PREFACE",
    "MAX_HTTP1_LINE",
    "Route",
    "classify_cleartext",
    "classify_tls",
    "client_hello_alpn",
]

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# cmux's maxHTTPRead: the request line must end within this many bytes
MAX_HTTP1_LINE = 4096

_TLS_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_ALPN = 16
# a ClientHello larger than this is not worth waiting for: the TLS library may judge it
_MAX_CLIENT_HELLO = 64 * 1024


class Route(enum.Enum):
    GRPC = "grpc"
    HTTP = "http"
    CLOSE = "close"


def _is_http1_request_line(line: bytes) -> bool:
    """cmux's parseRequestLine and net/http's ParseHTTPVersion, major version 1."""
    s1 = line.find(b" ")
    if s1 < 0:
        return False
    s2 = line.find(b" ", s1 + 1)
    if s2 < 0:
        return False
    proto = line[s2 + 1 :]
    if proto in (b"HTTP/1.1", b"HTTP/1.0"):
        return True
    return len(proto) == 8 and proto.startswith(b"HTTP/1.") and proto[7:8].isdigit()


def classify_cleartext(data: bytes) -> Route | None:
    if not data:
        return None
    if data[0] == _TLS_HANDSHAKE:
        return Route.CLOSE
    newline = data.find(b"\n", 0, MAX_HTTP1_LINE)
    if newline < 0:
        if len(data) >= MAX_HTTP1_LINE:
            return Route.CLOSE  # no line within the limit, and too long to be the preface
        return None
    line = data[:newline]
    if line.endswith(b"\r"):
        line = line[:-1]
    if _is_http1_request_line(line):
        return Route.HTTP
    if len(data) < len(HTTP2_PREFACE):
        return None if HTTP2_PREFACE.startswith(data) else Route.CLOSE
    return Route.GRPC if data.startswith(HTTP2_PREFACE) else Route.CLOSE


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.uint(length_bytes))

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)


def _handshake_bytes(data: bytes) -> bytes | None:
    """The handshake bytes carried by the leading handshake records (a ClientHello may span
    records); None while the first handshake message is incomplete."""
    out = bytearray()
    pos = 0
    while True:
        if len(out) >= 4:
            need = 4 + int.from_bytes(out[1:4], "big")
            if len(out) >= need:
                return bytes(out[:need])
            if need > _MAX_CLIENT_HELLO:
                raise ValueError("ClientHello too large")
        if len(data) < pos + 5:
            return None
        if data[pos] != _TLS_HANDSHAKE:
            raise ValueError("not a handshake record")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if len(data) < pos + 5 + length:
            return None
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length


def client_hello_alpn(data: bytes) -> list[bytes] | None:
    """The ALPN protocols a TLS ClientHello offers ([] without the extension); None while more
    bytes are needed. Raises ValueError on anything that is not a ClientHello."""
    hs = _handshake_bytes(data)
    if hs is None:
        return None
    r = _Reader(hs)
    try:
        if r.uint(1) != _CLIENT_HELLO:
            raise ValueError("not a ClientHello")
        body = _Reader(r.vector(3))
        body.take(2 + 32)  # legacy_version, random
        body.vector(1)  # legacy_session_id
        body.vector(2)  # cipher_suites
        body.vector(1)  # legacy_compression_methods
        if body.done:
            return []
        extensions = _Reader(body.vector(2))
        while not extensions.done:
            kind = extensions.uint(2)
            ext = extensions.vector(2)
            if kind != _ALPN:
                continue
            names = _Reader(_Reader(ext).vector(2))
            protocols = []
            while not names.done:
                protocols.append(names.vector(1))
            return protocols
        return []
    except _Truncated:
        raise ValueError("malformed ClientHello") from None


def classify_tls(data: bytes) -> Route | None:
    if not data:
        return None
    if data[0] != _TLS_HANDSHAKE:
        return Route.CLOSE
    try:
        alpn = client_hello_alpn(data)
    except ValueError:
        return Route.HTTP  # the TLS library answers what it cannot parse
    if alpn is None:
        return None
    return Route.GRPC if b"h2" in alpn and b"http/1.1" not in alpn else Route.HTTP
