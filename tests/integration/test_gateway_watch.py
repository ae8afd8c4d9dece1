"""The JSON gateway's /v3/watch, petcd next to a real etcd v3.6: the same request bodies, the
same writes, and the JSON lines each answers compared after normalizing IDs.

We test these aspects:
- a body of create requests (as curl -d and the etcd3gw client send it): `created`, then one
  line per response, int64 as strings, bytes as base64, zero values left out; prefix ranges,
  prev_kv, filters, explicit watch IDs, a cancel in the same body;
- a body streamed with Expect: 100-continue (curl -T): requests taken as they arrive, while
  responses stream (create, then cancel and progress requests later);
- a start revision below the compaction: created, then canceled with compact_revision;
- responses above --max-request-bytes + 512 KiB for a watch asking for fragments: one line
  per fragment, `fragment: true` on all but the last;
- the stream ends only when the client goes away, and the server forgets its watchers;
- bad bodies (not JSON, not a watch request, empty): no answer at all while the client waits,
  as etcd's gateway waits for the first gRPC response before it writes anything.

(etcd's Go server holds a streamed request body's responses back until the body ends when the
client did not ask for 100-continue; petcd streams them at once. Clients send whole bodies.)
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.framework.differential import Differential
from tests.harness.procs import Member

pytestmark = pytest.mark.integration

# a 64 KiB request limit: watch responses above 64 KiB + 512 KiB of gRPC overhead are fragmented
FLAGS = ("--max-request-bytes=65536", "--unsafe-no-fsync")
QUIET = 1.0  # how long "no answer" is waited for
WAIT = 30.0


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Server:
    def __init__(self, m: Member) -> None:
        self.m = m
        header = json.loads(self.post("/v3/maintenance/status", {}))["header"]
        self.ids = {header["cluster_id"]: "<cluster>", header["member_id"]: "<member>"}

    def post(self, path: str, body: Any) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.m.client_port, timeout=WAIT)
        try:
            conn.request("POST", path, body=json.dumps(body).encode())
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def put(self, key: str, value: str) -> None:
        self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def norm(self, line: str) -> str:
        for old, new in self.ids.items():
            line = line.replace(f'"{old}"', f'"{new}"')
        return re.sub(r'"raft_term":"\d+"', '"raft_term":"T"', line)

    def watch(self, body: bytes | None = None, *, expect_continue: bool = False) -> Watch:
        return Watch(self, body, expect_continue)


class Watch:
    """One POST /v3/watch: the body sent whole (body) or chunk by chunk (send), the answer's
    status, content type and lines read by a thread."""

    def __init__(self, server: Server, body: bytes | None, expect_continue: bool) -> None:
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.m.client_port), timeout=WAIT)
        head = f"POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1:{server.m.client_port}\r\n"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n\r\n"
            self.sock.sendall(head.encode() + body)
        else:
            head += "Expect: 100-continue\r\n" if expect_continue else ""
            self.sock.sendall(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            r = http.client.HTTPResponse(self.sock)
            r.begin()
            while r.status == 100:  # 100 Continue, then the answer
                r = http.client.HTTPResponse(self.sock)
                r.begin()
            self.lines.put(f"{r.status} {r.getheader('Content-Type')}")
            while line := r.readline():
                self.lines.put(self.server.norm(line.decode().rstrip("\n")))
            self.lines.put("<end>")
        except OSError:
            self.lines.put("<closed>")

    def send(self, request: Any) -> None:
        data = json.dumps(request).encode()
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def next(self, timeout: float = WAIT) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return "<nothing>"

    def take(self, n: int) -> list[str]:
        return [self.next() for _ in range(n)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # the reader's file keeps the socket open
        self.sock.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with Differential.start(tmp_path_factory.mktemp("gateway-watch"), *FLAGS) as (p, e):
        yield Server(p), Server(e)


def both(servers: tuple[Server, Server], scenario: Any) -> list[str]:
    ours, theirs = scenario(servers[0]), scenario(servers[1])
    assert ours == theirs
    return ours


def body(*requests: Any) -> bytes:
    return "\n".join(json.dumps(r) for r in requests).encode()


def test_create_events_and_cancel_in_one_body(servers: tuple[Server, Server]) -> None:
    def scenario(s: Server) -> list[str]:
        w = s.watch(
            body(
                {"create_request": {"key": b64("gw/a")}},
                {
                    "create_request": {
                        "key": b64("gw/"),
                        "range_end": b64("gw0"),
                        "prev_kv": True,
                        "watch_id": 7,
                    }
                },
                {"create_request": {"key": b64("gw/"), "range_end": b64("gw0"), "filters": ["NOPUT"]}},
                {"create_request": {"key": b64("gw/c"), "watch_id": 9}},
                {"cancel_request": {"watch_id": 9}},
            )
        )
        out = w.take(6)
        s.put("gw/a", "1")
        s.put("gw/a", "2")
        s.post("/v3/kv/deleterange", {"key": b64("gw/a")})
        # each watcher's events in order; etcd interleaves watchers in Go's random map order
        out += _by_watch(w.take(7))
        out.append(w.next(QUIET))
        w.close()
        return out

    got = both(servers, scenario)
    assert got[0] == "200 application/json" and '"created":true' in got[1], got


def test_streamed_body_with_100_continue(servers: tuple[Server, Server]) -> None:
    def scenario(s: Server) -> list[str]:
        w = s.watch(expect_continue=True)
        w.send({"create_request": {"key": b64("dup/x"), "watch_id": 3}})
        out = w.take(2)
        w.send({"create_request": {"key": b64("dup/y"), "watch_id": 3}})  # a duplicate ID
        out.append(w.next())
        w.send({"progress_request": {}})
        out.append(w.next())
        w.send({"cancel_request": {"watch_id": 3}})
        out.append(w.next())
        s.put("dup/x", "after the cancel")
        out.append(w.next(QUIET))
        w.close()
        return out

    both(servers, scenario)


def test_compacted_start_revision(servers: tuple[Server, Server]) -> None:
    def scenario(s: Server) -> list[str]:
        for i in range(3):
            s.put("compacted", str(i))
        rev = int(json.loads(s.post("/v3/kv/range", {"key": b64("compacted")}))["header"]["revision"])
        s.post("/v3/kv/compaction", {"revision": rev})
        w = s.watch(body({"create_request": {"key": b64("compacted"), "start_revision": rev - 2}}))
        out = w.take(3)
        w.close()
        return out

    got = both(servers, scenario)
    assert '"compact_revision"' in got[2] and '"canceled":true' in got[2], got


def test_fragments(servers: tuple[Server, Server]) -> None:
    value = "v" * 10 * 1024

    def scenario(s: Server) -> list[str]:
        first = int(json.loads(s.post("/v3/kv/range", {"key": b64("frag/")}))["header"]["revision"]) + 1
        for i in range(0, 70, 5):
            ops = [
                {"request_put": {"key": b64(f"frag/{j:03}"), "value": b64(value)}} for j in range(i, i + 5)
            ]
            s.post("/v3/kv/txn", {"success": ops})
        w = s.watch(
            body(
                {
                    "create_request": {
                        "key": b64("frag/"),
                        "range_end": b64("frag0"),
                        "start_revision": first,
                        "fragment": True,
                    }
                }
            )
        )
        lines = w.take(4)
        w.close()
        return [lines[0], lines[1]] + [_shape(line) for line in lines[2:]]

    got = both(servers, scenario)
    assert got[2:] == ["fragment events=57", "events=13"], got


def _by_watch(lines: list[str]) -> list[str]:
    def watch_id(line: str) -> int:
        return int(json.loads(line)["result"].get("watch_id", 0))

    return sorted(lines, key=watch_id)  # stable: each watcher's lines keep their order


def _shape(line: str) -> str:
    result = json.loads(line)["result"]
    return ("fragment " if result.get("fragment") else "") + f"events={len(result.get('events', []))}"


@pytest.mark.parametrize(
    "data", [b"", b"xyz", b"[]", b'{"create_request":', b"{}", b'{"cancel_request":{"watch_id":5}}']
)
def test_bad_bodies_get_no_answer(servers: tuple[Server, Server], data: bytes) -> None:
    for s in servers:
        w = s.watch(data)
        assert w.next(QUIET) == "<nothing>", s.m.kind
        w.close()


def test_a_closed_client_ends_the_stream(servers: tuple[Server, Server]) -> None:
    """The watchers of a gateway stream go away with its client: a member with none left."""
    petcd, _ = servers
    watches = [petcd.watch(body({"create_request": {"key": b64(f"gone/{i}")}})) for i in range(20)]
    for w in watches:
        assert '"created":true' in w.take(2)[1]
        w.close()
    metrics = http.client.HTTPConnection("127.0.0.1", petcd.m.client_port, timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while True:
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        watching = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.M)
        assert watching is not None
        if float(watching.group(1)) == 0:
            break
        assert time.monotonic() < deadline, watching.group(0)
        time.sleep(0.05)
    metrics.close()
