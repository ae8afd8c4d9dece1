"""The native byte relay of the client port (server/embed/_relay.c), on socket pairs.

We test these aspects:
- bytes go both ways, in order, for small writes and for 32 MiB against a slow reader (what the
  destination cannot take is kept, and the source is not read meanwhile);
- half-close passes through: end-of-file on one side shuts down writing on the other, and the
  other direction keeps flowing; the pair is closed when both directions are done;
- a reset or a closed peer closes the pair; stop() closes every pair and ends the thread;
- many pairs at once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from server.embed._relay import Relay
from tests.framework.wait import wait_until

_open: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    for s in _open:
        s.close()
    _open.clear()


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay()
    r.start()
    yield r
    r.stop()


def pair(relay: Relay, tcp: bool = False) -> tuple[socket.socket, socket.socket]:
    """(client end, backend end) of a relayed pair; the client's connection over TCP or not."""
    if tcp:
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname())
            near, _ = server.accept()
    else:
        client, near = socket.socketpair()
    far, backend = socket.socketpair()
    _open.extend((client, backend))
    relay.add(near.detach(), far.detach())
    client.settimeout(10)
    backend.settimeout(10)
    return client, backend


def read_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, f"end of stream after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def test_bytes_flow_both_ways(relay: Relay) -> None:
    client, backend = pair(relay)
    for i in range(100):
        client.sendall(b"ping %d;" % i)
        assert read_exactly(backend, len(b"ping %d;" % i)) == b"ping %d;" % i
        backend.sendall(b"pong %d;" % i)
        assert read_exactly(client, len(b"pong %d;" % i)) == b"pong %d;" % i
    assert relay.active == 1


def test_large_transfer_to_a_slow_reader(relay: Relay) -> None:
    client, backend = pair(relay)
    data = os.urandom(32 << 20)

    def write() -> None:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write)
    writer.start()
    got = bytearray()
    while chunk := backend.recv(1 << 16):
        got += chunk
        if len(got) < (1 << 20):
            time.sleep(0.001)  # slow at first: the relay must hold, not drop or spin
    writer.join()
    assert got == data


def test_half_close_passes_through(relay: Relay) -> None:
    client, backend = pair(relay)
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert read_exactly(backend, 7) == b"request"
    assert backend.recv(10) == b""  # the client's end of stream reached the backend
    backend.sendall(b"still answering")
    assert read_exactly(client, 15) == b"still answering"
    assert relay.active == 1
    backend.close()
    assert client.recv(10) == b""
    wait_until(lambda: relay.active == 0)


def test_a_reset_closes_the_pair(relay: Relay) -> None:
    client, backend = pair(relay, tcp=True)
    client.sendall(b"x")
    assert read_exactly(backend, 1) == b"x"
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # an RST
    assert backend.recv(10) == b""
    wait_until(lambda: relay.active == 0)


def test_a_gone_client_closes_the_pair_when_answered(relay: Relay) -> None:
    client, backend = pair(relay)
    client.close()
    assert backend.recv(10) == b""  # its end of stream, passed on
    assert relay.active == 1  # the backend may still answer a half-closed client
    backend.sendall(b"answer")  # nobody to take it: the pair goes
    wait_until(lambda: relay.active == 0)


def test_stop_closes_every_pair() -> None:
    relay = Relay()
    relay.start()
    ends = [pair(relay) for _ in range(50)]
    for i, (client, _) in enumerate(ends):
        client.sendall(b"%d" % i)
    for i, (_, backend) in enumerate(ends):
        assert read_exactly(backend, len(b"%d" % i)) == b"%d" % i
    assert relay.active == 50
    relay.stop()
    assert relay.active == 0
    for client, backend in ends:
        assert client.recv(10) == b"" and backend.recv(10) == b""
    a, b = socket.socketpair()
    with pytest.raises(RuntimeError):  # the descriptors are closed all the same
        relay.add(a.detach(), b.detach())
