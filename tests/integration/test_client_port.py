"""One client port for gRPC and HTTP/1.1 (etcd's cmux), petcd next to a real etcd v3.6 started
with the same client URL scheme and certificates.

We test these aspects, for each port mode (http; https; https with --client-cert-auth; petcd
with --grpc-frontends=2 on http and on https):
- HTTP/1.1 on the client port: /health, /livez, /readyz, /version, /metrics, the JSON gateway,
  404s, 405s and CORS preflights answer as etcd's (status, etcd's headers, body modulo IDs);
- gRPC on the same port (the real etcdctl, ALPN h2 on https): put, get, a watch stream, a
  request of 1.5 MiB and a snapshot stream, while HTTP/1.1 requests come and go; Lock and
  Election;
- https: curl offering ALPN h2 and http/1.1 gets etcd's status and body (etcd answers over
  HTTP/2, petcd over HTTP/1.1); a plain HTTP request and an h2c preface are closed;
- --client-cert-auth: without a client certificate the TLS handshake fails on both, for HTTP
  and for gRPC;
- with --listen-client-http-urls (etcd's split mode) the client URLs serve gRPC only, on both.

Bad input on a cleartext client port (test_bad_input_*): garbage, a half-sent HTTP/2 preface,
a TLS ClientHello, slowloris clients, many connections at once: each is closed or answered
like etcd, and meanwhile other clients are served (HTTP and gRPC) and the member stays up.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import pytest
import trustme

from tests.framework.differential import Differential
from tests.harness.etcdctl import Etcdctl
from tests.harness.normalize import Normalizer
from tests.harness.paths import peer, petcd_command
from tests.harness.procs import Member, free_port, wait_ready
from tests.integration.test_http_gateway import COMPARED_HEADERS

pytestmark = pytest.mark.integration

WAIT = 30.0


@dataclass(frozen=True)
class Mode:
    name: str
    scheme: str = "http"
    client_cert_auth: bool = False
    petcd_flags: tuple[str, ...] = ()


MODES = [
    Mode("http"),
    Mode("https", "https"),
    Mode("mtls", "https", client_cert_auth=True),
    Mode("http-frontends", petcd_flags=("--grpc-frontends=2",)),
    Mode("mtls-frontends", "https", client_cert_auth=True, petcd_flags=("--grpc-frontends=2",)),
]


@dataclass
class Certs:
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str


@dataclass
class Node:
    kind: str
    url: str
    proc: subprocess.Popen[bytes]
    certs: Certs | None
    norm: Normalizer = field(default_factory=Normalizer)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def tls_context(self, alpn: tuple[str, ...] = ("http/1.1",), client_cert: bool = True) -> ssl.SSLContext:
        assert self.certs is not None
        ctx = ssl.create_default_context(cafile=self.certs.ca)
        ctx.set_alpn_protocols(list(alpn))
        if client_cert:
            ctx.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        return ctx

    def connection(self) -> http.client.HTTPConnection:
        if self.url.startswith("https"):
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=self.tls_context())
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, dict[str, str], str]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body.encode() if body is not None else None)
            r = conn.getresponse()
            raw = r.read().decode("utf-8", "replace")
            headers = {h: r.headers[h] for h in COMPARED_HEADERS if r.headers[h] is not None}
            return r.status, headers, self.norm(_scrub(raw))
        finally:
            conn.close()

    def ctl_flags(self) -> list[str]:
        if self.certs is None:
            return []
        return [
            f"--cacert={self.certs.ca}",
            f"--cert={self.certs.client_cert}",
            f"--key={self.certs.client_key}",
        ]

    def grpc_channel(self) -> grpc.Channel:
        target = self.url.split("://")[1]
        if self.certs is None:
            return grpc.insecure_channel(target)
        files = (self.certs.ca, self.certs.client_key, self.certs.client_cert)
        ca, key, cert = (Path(f).read_bytes() for f in files)
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.secure_channel(target, creds)


_VOLATILE = [
    (re.compile(r'"(dbSize|dbSizeInUse|raftIndex|raftAppliedIndex)":"\d+"'), r'"\1":"N"'),
    (re.compile(r'"(version|storageVersion|etcdserver|etcdcluster|storage)":"\d+\.\d+\.\d+"'), r'"\1":"V"'),
]


def _scrub(text: str) -> str:
    for pat, rep in _VOLATILE:
        text = pat.sub(rep, text)
    return text


def _certs(tmp: Path, ca: trustme.CA) -> Certs:
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="server")
    client = ca.issue_cert("client", common_name="client")
    paths = {
        "ca": tmp / "ca.pem",
        "cert": tmp / "server.pem",
        "key": tmp / "server-key.pem",
        "client_cert": tmp / "client.pem",
        "client_key": tmp / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    return Certs(**{k: str(v) for k, v in paths.items()})


def _start(kind: str, tmp: Path, mode: Mode, certs: Certs | None) -> Node:
    port, peer_port = free_port(), free_port()
    url = f"{mode.scheme}://127.0.0.1:{port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    exe = petcd_command() if kind == "petcd" else [peer("etcd")]
    flags = [
        "--name=m",
        f"--data-dir={tmp / kind}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=m={peer_url}",
    ]
    if certs is not None:
        flags += [f"--cert-file={certs.cert}", f"--key-file={certs.key}", f"--trusted-ca-file={certs.ca}"]
    if mode.client_cert_auth:
        flags.append("--client-cert-auth")
    if kind == "petcd":
        flags += mode.petcd_flags
    log = tmp / f"{kind}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*exe, *flags], stdout=out, stderr=subprocess.STDOUT)
    node = Node(kind, url, proc, certs)
    wait_ready(url, 30, proc, log, connect=lambda _: node.grpc_channel())
    status, _, body = node.call("POST", "/v3/maintenance/status", "{}")
    assert status == 200, body
    header = json.loads(body)["header"]
    node.norm.name(int(header["member_id"]), "<member-id>").name(int(header["cluster_id"]), "<cluster-id>")
    node.norm.name(url, "<client-url>").name(peer_url, "<peer-url>")
    return node


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module", params=MODES, ids=[m.name for m in MODES])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[tuple[Node, Node, Mode]]:
    mode: Mode = request.param
    tmp = tmp_path_factory.mktemp(f"client-port-{mode.name}")
    certs = _certs(tmp, ca) if mode.scheme == "https" else None
    with ThreadPoolExecutor(2) as ex:
        futures = [ex.submit(_start, kind, tmp, mode, certs) for kind in ("petcd", "etcd")]
    try:
        petcd, etcd = (f.result() for f in futures)
        yield petcd, etcd, mode
    finally:
        for f in futures:
            if f.exception() is None:
                f.result().proc.kill()
                f.result().proc.wait()


def b64(s: str) -> str:
    import base64

    return base64.b64encode(s.encode()).decode()


ROUTES: list[tuple[str, str, str | None]] = [
    ("GET", "/health", None),
    ("GET", "/health?serializable=true", None),
    ("POST", "/health", None),
    ("GET", "/livez", None),
    ("GET", "/livez?verbose", None),
    ("GET", "/readyz/serializable_read", None),
    ("GET", "/readyz/non_learner?verbose=1", None),
    ("GET", "/version", None),
    ("DELETE", "/version", None),
    ("GET", "/nothing", None),
    ("GET", "//health", None),
    ("OPTIONS", "/v3/kv/range", None),
    ("POST", "/v3/kv/put", json.dumps({"key": b64("port/a"), "value": b64("1")})),
    ("POST", "/v3/kv/range", json.dumps({"key": b64("port/a")})),
    ("POST", "/v3beta/kv/range", json.dumps({"key": b64("port/"), "range_end": b64("port0")})),
    ("POST", "/v3/kv/range", '{"key":'),
    ("GET", "/v3/kv/range", None),
    ("POST", "/v3/nothing", "{}"),
    ("POST", "/v3/maintenance/status", "{}"),
    ("POST", "/v3/cluster/member/list", "{}"),
    ("POST", "/v3/lease/keepalive", '{"ID":1}'),
]


def test_http_routes_match_etcd(pair: tuple[Node, Node, Mode]) -> None:
    petcd, etcd, _ = pair
    for method, path, body in ROUTES:
        assert petcd.call(method, path, body) == etcd.call(method, path, body), f"{method} {path} {body}"


def test_metrics_on_the_client_port(pair: tuple[Node, Node, Mode]) -> None:
    for node in pair[:2]:
        status, headers, body = node.call("GET", "/metrics")
        assert status == 200 and "etcd_server_has_leader 1" in body, node.kind
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_grpc_and_http_share_the_port(pair: tuple[Node, Node, Mode], tmp_path: Path) -> None:
    """etcdctl's gRPC (a watch stream held open, a 1.5 MiB request, a snapshot stream) and
    HTTP/1.1 requests on the same port at the same time."""
    for node in pair[:2]:
        ctl, flags = Etcdctl(node.url), node.ctl_flags()
        with subprocess.Popen(
            # from revision 1: the puts below may come before the watch is created
            [ctl.binary, f"--endpoints={node.url}", *flags, "watch", "shared/", "--prefix", "--rev=1"],
            stdout=subprocess.PIPE,
            text=True,
        ) as watch:
            try:
                for i in range(5):
                    assert ctl(*flags, "put", f"shared/{i}", str(i)).out == "OK\n", node.kind
                    assert node.call("GET", "/health")[0] == 200
                big = "x" * (1536 * 1024 - 64)  # just under --max-request-bytes
                assert ctl(*flags, "put", "shared/big", input=big).out == "OK\n", node.kind
                assert watch.stdout is not None
                lines = _read_lines(watch.stdout, 18)
            finally:
                watch.terminate()
        assert lines[:3] == ["PUT", "shared/0", "0"] and lines[15:17] == ["PUT", "shared/big"], node.kind
        assert len(lines[17]) == len(big)
        out = ctl(*flags, "snapshot", "save", str(tmp_path / f"{node.kind}.db"))
        assert out.rc == 0 and (tmp_path / f"{node.kind}.db").stat().st_size > 0, out.err


def _read_lines(pipe: IO[str], n: int) -> list[str]:
    """n lines from a child's stdout, failing after WAIT seconds instead of hanging."""
    got: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in pipe:
            got.put(line)

    threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    try:
        while len(lines) < n:
            lines.append(got.get(timeout=WAIT).strip())
    except queue.Empty:
        raise AssertionError(f"{len(lines)} of {n} lines: {[line[:40] for line in lines]}") from None
    return lines


def test_lock_and_election_on_the_port(pair: tuple[Node, Node, Mode]) -> None:
    """v3lock and v3election are served on every port mode (front-ends included)."""
    from server.api.etcdserverpb import rpc_pb2 as pb
    from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
    from server.api.v3electionpb import v3election_pb2 as epb
    from server.api.v3electionpb import v3election_pb2_grpc as epb_grpc
    from server.api.v3lockpb import v3lock_pb2 as lockpb
    from server.api.v3lockpb import v3lock_pb2_grpc as lockpb_grpc

    for node in pair[:2]:
        with node.grpc_channel() as ch:
            lease = pb_grpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
            lock, election = lockpb_grpc.LockStub(ch), epb_grpc.ElectionStub(ch)
            key = lock.Lock(lockpb.LockRequest(name=b"port-lock", lease=lease), timeout=WAIT).key
            assert key == f"port-lock/{lease:x}".encode(), node.kind
            lock.Unlock(lockpb.UnlockRequest(key=key), timeout=WAIT)
            won = election.Campaign(
                epb.CampaignRequest(name=b"port-e", lease=lease, value=b"v"), timeout=WAIT
            )
            observe = election.Observe(epb.LeaderRequest(name=b"port-e"), timeout=WAIT)
            assert next(observe).kv.value == b"v", node.kind
            observe.cancel()
            election.Resign(epb.ResignRequest(leader=won.leader), timeout=WAIT)
            with pytest.raises(grpc.RpcError) as e:
                election.Leader(epb.LeaderRequest(name=b"port-e"), timeout=WAIT)
            assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNKNOWN, "election: no leader")


def _curl(node: Node, path: str) -> tuple[str, str, str]:
    """(status, HTTP version, body) as curl sees them, offering ALPN h2 and http/1.1."""
    assert node.certs is not None
    out = subprocess.run(
        [
            "curl", "-sS", "--cacert", node.certs.ca, "--cert", node.certs.client_cert,
            "--key", node.certs.client_key, "-w", "\n%{http_code} %{http_version}", f"{node.url}{path}",
        ],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    body, _, tail = out.rpartition("\n")
    status, version = tail.split()
    return status, version, node.norm(_scrub(body))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_over_tls_gets_etcds_answers(pair: tuple[Node, Node, Mode]) -> None:
    petcd, etcd, mode = pair
    if mode.scheme != "https":
        pytest.skip("TLS only")
    for path in ("/health", "/version", "/livez?verbose", "/nothing"):
        ours, theirs = _curl(petcd, path), _curl(etcd, path)
        assert (ours[0], ours[2]) == (theirs[0], theirs[2]), path
        assert (ours[1], theirs[1]) == ("1.1", "2"), "petcd answers HTTP/1.1, etcd HTTP/2"


def _raw(port: int, data: bytes, wait: float = 5.0, context: ssl.SSLContext | None = None) -> bytes:
    """What a client sending data gets before the server closes (or wait passes: b"<open>")."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            return out + b"<open>"
        except ConnectionResetError:
            return out + b"<reset>"
        return out


def test_plain_http_and_h2c_on_a_tls_port(pair: tuple[Node, Node, Mode]) -> None:
    petcd, etcd, mode = pair
    if mode.scheme != "https":
        pytest.skip("TLS only")
    for data in (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        assert _raw(petcd.port, data) == _raw(etcd.port, data) == b"", data


def test_without_a_client_certificate_the_handshake_fails(pair: tuple[Node, Node, Mode]) -> None:
    petcd, etcd, mode = pair
    if not mode.client_cert_auth:
        pytest.skip("--client-cert-auth only")
    for node in (petcd, etcd):
        ctx = node.tls_context(client_cert=False)
        conn = http.client.HTTPSConnection("127.0.0.1", node.port, timeout=10, context=ctx)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            conn.request("GET", "/health")
            conn.getresponse().read()
        conn.close()
        assert node.certs is not None
        r = Etcdctl(node.url)(
            f"--cacert={node.certs.ca}", "--dial-timeout=2s", "--command-timeout=3s", "get", "k"
        )
        assert r.rc != 0, node.kind


@pytest.mark.parametrize("extra", [(), ("--grpc-frontends=2",)], ids=["member", "frontends"])
def test_with_client_http_urls_the_client_port_serves_grpc_only(
    tmp_path: Path, extra: tuple[str, ...]
) -> None:
    """etcd's split mode (--listen-client-http-urls): HTTP there, gRPC only on the client URLs
    (an HTTP/1.1 request gets HTTP/2 frames, no HTTP answer)."""
    for kind in ("petcd", "etcd"):
        http_url = f"http://127.0.0.1:{free_port()}"
        flags = (f"--listen-client-http-urls={http_url}", *(extra if kind == "petcd" else ()))
        with Member(kind, tmp_path / kind, extra=flags) as m:
            assert not _raw(m.client_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/")
            conn = http.client.HTTPConnection(http_url.removeprefix("http://"), timeout=WAIT)
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200, kind
            conn.close()
            assert Etcdctl(m.client_url)("put", "split", "yes").out == "OK\n", kind


# -- bad input on a cleartext client port -----------------------------------------------------


@pytest.fixture(scope="module")
def plain_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    with Differential.start(tmp_path_factory.mktemp("client-port-bad-input")) as (p, e):
        yield p.client_port, e.client_port


def _served(port: int) -> None:
    """Another client is served meanwhile, over HTTP/1.1 and over gRPC."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
    ctl = Etcdctl(f"http://127.0.0.1:{port}")
    assert ctl("put", "served", "yes", timeout=20).out == "OK\n"


GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"\r\n\r\n",
    b"GET /health\r\n\r\n",
    b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    b"\x00" * 64 + b"\n",
    b"x" * 5000,
]


@pytest.mark.parametrize("data", GARBAGE, ids=lambda d: repr(d[:24]))
def test_bad_input_garbage_is_closed_like_etcd(plain_pair: tuple[int, int], data: bytes) -> None:
    petcd, etcd = plain_pair
    closed = {b"", b"<reset>"}  # no answer, then a FIN (or an RST when etcd left bytes unread)
    assert _raw(petcd, data) in closed and _raw(etcd, data) in closed
    _served(petcd)


# requests cmux hands to the HTTP server, which refuses them with a 400 (or 431)
MALFORMED_HTTP = [
    b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    b"GET /health HTTP/1.1\r\n\r\n",
    b"G\x00T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
]


@pytest.mark.parametrize("data", MALFORMED_HTTP, ids=lambda d: repr(d[:24]))
def test_bad_input_malformed_http_gets_a_400_like_etcd(plain_pair: tuple[int, int], data: bytes) -> None:
    petcd, etcd = plain_pair
    ours, theirs = _raw(petcd, data), _raw(etcd, data)
    assert theirs.startswith(b"HTTP/1.1 400 Bad Request")
    assert re.match(rb"HTTP/1\.[01] 400 Bad Request\r\n", ours), ours
    _served(petcd)


def test_bad_input_tls_to_a_cleartext_port_is_closed(plain_pair: tuple[int, int]) -> None:
    petcd, _ = plain_pair
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", petcd), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
    ):
        ctx.wrap_socket(raw).do_handshake()
    _served(petcd)


def test_bad_input_stalled_clients_block_nobody(plain_pair: tuple[int, int]) -> None:
    """Connections that never finish their first bytes (half a preface, half a request line, a
    silent one) and slowloris clients that trickle a request byte by byte: other clients are
    served meanwhile, and each stalled client is served or closed in the end."""
    for port in plain_pair:
        stalled = []
        for first in (b"PRI * HTTP/2.0\r\n", b"GET /hea", b"", b"\x16\x03\x01\x00"):
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(first)
                stalled.append(s)
        answers: list[bytes] = []
        loris = [threading.Thread(target=_slowloris, args=(port, answers)) for _ in range(20)]
        for t in loris:
            t.start()
        _served(port)
        for t in loris:
            t.join(60)
        assert len(answers) == 20 and all(a.startswith(b"HTTP/1.1 200 OK") for a in answers), port
        for s in stalled:
            s.close()
        _served(port)


def _slowloris(port: int, answers: list[bytes]) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for i in range(len(request)):
            s.sendall(request[i : i + 1])
            time.sleep(0.02)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        answers.append(out)


def test_bad_input_many_connections_at_once(plain_pair: tuple[int, int]) -> None:
    petcd, _ = plain_pair

    def health(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", petcd, timeout=30)
        conn.request("GET", "/health")
        status = conn.getresponse().status
        conn.close()
        return status

    with ThreadPoolExecutor(50) as ex:
        assert set(ex.map(health, range(500))) == {200}
    _served(petcd)
