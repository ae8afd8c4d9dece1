"""The client port's classification of new connections (server/embed/cmux.py).

We test these aspects:
- cleartext, as etcd's cmux matchers: HTTP/1.x request lines (at most 4,096 bytes), the HTTP/2
  preface, everything else closed; undecided (None) exactly while more bytes could still decide;
- TLS: real ClientHellos (made by Python's ssl with various ALPN lists, TLS 1.2 and 1.3) routed
  by ALPN; a ClientHello split over records; truncated ones undecided; non-TLS bytes closed;
- any byte string is classified without an exception, and adding bytes never changes a decision
  (hypothesis).
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.embed.cmux import (
    HTTP2_PREFACE,
    MAX_HTTP1_LINE,
    Route,
    classify_cleartext,
    classify_tls,
    client_hello_alpn,
)

H, G, C = Route.HTTP, Route.GRPC, Route.CLOSE


@pytest.mark.parametrize(
    ("data", "route"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", H),
        (b"GET /health HTTP/1.1\n", H),
        (b"POST /v3/kv/range HTTP/1.0\r\n", H),
        (b"BREW /pot HTTP/1.9\r\n", H),  # any method: net/http answers it
        (b"GET /a b HTTP/1.1\r\n", C),  # the third field is "b HTTP/1.1"
        (b"GET /health HTTP/2.0\r\n", C),
        (b"GET /health HTTP/1.x\r\n", C),
        (b"GET /health\r\n\r\n", C),
        (b"GARBAGE\r\n\r\n", C),
        (b"\r\n" * 20, C),
        (HTTP2_PREFACE, G),
        (HTTP2_PREFACE + b"\x00\x00\x12\x04", G),
        (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", C),
        (b"\x16\x03\x01\x02\x00", C),  # a TLS record on a cleartext port
        (b"G", None),
        (b"GET /health HTTP/1.1", None),
        (b"PRI * HTTP/2.0\r\n", None),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n", None),
        (b"x" * (MAX_HTTP1_LINE - 1), None),
        (b"x" * MAX_HTTP1_LINE, C),
        (b"GET /" + b"a" * (MAX_HTTP1_LINE - 15) + b" HTTP/1.1\n", H),  # 4,096 bytes with the newline
        (b"GET /" + b"a" * (MAX_HTTP1_LINE - 14) + b" HTTP/1.1\n", C),
    ],
)
def test_cleartext(data: bytes, route: Route | None) -> None:
    assert classify_cleartext(data) is route


def client_hello(alpn: list[str] | None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = version
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname="petcd.test")
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    ("alpn", "route"),
    [
        (["h2"], G),  # grpc-go
        (["grpc-exp", "h2"], G),  # grpcio
        (["h2", "http/1.1"], H),  # curl, Go's net/http
        (["http/1.1"], H),
        (None, H),  # no ALPN at all
        (["spdy/3"], H),
    ],
)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_routes_by_alpn(alpn: list[str] | None, route: Route, version: ssl.TLSVersion) -> None:
    hello = client_hello(alpn, version)
    assert client_hello_alpn(hello) == [p.encode() for p in alpn or []]
    assert classify_tls(hello) is route
    for cut in (1, 5, 6, len(hello) // 2, len(hello) - 1):
        assert classify_tls(hello[:cut]) is None, cut


def test_tls_client_hello_split_over_records() -> None:
    hello = client_hello(["h2"])
    body = hello[5:]
    split = hello[:3] + len(body[:40]).to_bytes(2, "big") + body[:40]
    split += hello[:3] + len(body[40:]).to_bytes(2, "big") + body[40:]
    assert client_hello_alpn(split) == [b"h2"]
    assert classify_tls(split[:50]) is None
    assert classify_tls(split) is G


@pytest.mark.parametrize(
    "data",
    [b"GET /health HTTP/1.1\r\n\r\n", HTTP2_PREFACE, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x01"],
)
def test_tls_port_closes_what_is_not_tls(data: bytes) -> None:
    assert classify_tls(data) is C


def test_tls_handshake_that_is_not_a_client_hello_goes_to_the_tls_library() -> None:
    server_hello = b"\x16\x03\x03\x00\x06\x02\x00\x00\x02\x03\x03"
    assert classify_tls(server_hello) is H


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_classification_never_fails_and_more_bytes_never_change_it(a: bytes, b: bytes) -> None:
    for classify in (classify_cleartext, classify_tls):
        first = classify(a)
        if first is not None:
            assert classify(a + b) is first


@given(st.sampled_from([HTTP2_PREFACE, b"GET / HTTP/1.1\r\n"]), st.integers(0, 40))
def test_prefixes_are_undecided(data: bytes, cut: int) -> None:
    if cut < len(data):
        assert classify_cleartext(data[:cut]) is None
