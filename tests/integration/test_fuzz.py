"""Fuzzing a live petcd (one server for the module) with hypothesis-generated requests and with raw
malformed HTTP/2 and gRPC frames on its socket.

We test these aspects:
- every generated Range/Put/DeleteRange/Txn (nested txns, compares of every target and result,
  odd enums), Compaction, LeaseGrant/Revoke/TimeToLive/Leases, Watch create/cancel/progress (on
  long-lived streams), Alarm (valid types), Status, MemberList and HashKV request gets a response
  or a clean gRPC status: never UNKNOWN, never a Python exception's text, never a dropped
  connection or a hang; the process stays alive;
- invariants over the whole run: header revisions never go back; revisions are dense (a watcher
  over the whole key space sees every revision from its start to the end, each once); with
  nothing written (read-only requests only) the revision and HashKV stay put; the watch streams
  the fuzzer used are still alive and answer a progress request;
- memory: petcd's RSS across 10 batches of a repetitive workload (puts, ranges, txns, watch
  streams opened and closed, leases granted and revoked, connections opened and closed,
  compaction) stops growing after warm-up;
- raw frames on the client port: garbage instead of the HTTP/2 preface, the preface then garbage,
  a frame header announcing 16 MiB, a gRPC message whose length prefix is larger than its body, a
  length prefix of 4 GiB, a DATA frame on stream 0, a half-sent preface held open, 200 garbage
  connections at once: petcd survives and keeps serving another client throughout.

FUZZ_EXAMPLES (default 300) sets the examples per request family; the counts of inputs tried are
printed (pytest -s) for docs/reliability.md.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.harness.procs import Member

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("FUZZ_RANDOM") is None,
)
TRIED: Counter[str] = Counter()


class Fuzzed:
    def __init__(self, member: Member) -> None:
        self.member = member
        self.target = member.client_url.split("://")[1]
        self.channel = grpc.insecure_channel(self.target, options=[("grpc.max_receive_message_length", -1)])
        self.kv = pb_grpc.KVStub(self.channel)
        self.lease = pb_grpc.LeaseStub(self.channel)
        self.mt = pb_grpc.MaintenanceStub(self.channel)
        self.cluster = pb_grpc.ClusterStub(self.channel)
        self.last_rev = 0

    def alive(self) -> bool:
        return self.member.proc is not None and self.member.proc.poll() is None

    def rss_kib(self) -> int:
        assert self.member.proc is not None
        for line in Path(f"/proc/{self.member.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def call(self, family: str, fn: Any, req: Any) -> Any:
        """One request: a response, or a clean status (returned as the RpcError)."""
        TRIED[family] += 1
        try:
            resp = fn(req, timeout=15)
        except grpc.RpcError as e:
            check_clean(e, family, req, self)
            return e
        rev = int(resp.header.revision) if resp.HasField("header") else 0
        if rev:
            assert rev >= self.last_rev, f"revision went back: {self.last_rev} -> {rev} after {family} {req}"
            self.last_rev = rev
        return resp


def check_clean(e: grpc.RpcError, family: str, req: Any, f: Fuzzed) -> None:
    code, details = e.code(), e.details() or ""
    where = f"{family} {str(req)[:500]!r} -> {code.name} {details!r}"
    assert f.alive(), f"petcd died: {where}\n{f.member.log()[-4000:]}"
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED), where
    for bad in ("Traceback", "<class", "Unexpected ", "Exception"):
        assert bad not in details, where
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
        # a dropped connection shows up as UNAVAILABLE "Socket closed" and the like; etcd's
        # own UNAVAILABLE errors all say "etcdserver: ..."
        assert details.startswith("etcdserver:"), where


@pytest.fixture(scope="module")
def f(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    m = Member.petcd(tmp_path_factory.mktemp("fuzz"))
    m.start()
    fz = Fuzzed(m)
    yield fz
    print(f"\nfuzz inputs tried: {sum(TRIED.values())} {dict(sorted(TRIED.items()))}")
    fz.channel.close()
    alive = fz.alive()
    m.stop()
    assert alive


# -- strategies --------------------------------------------------------------------------------------

keys = st.one_of(
    st.sampled_from([b"a", b"b", b"ab", b"\x00", b"\xff", b"\xff\xff", b"k/1", b"k/2", b""]),
    st.binary(max_size=6),
)
range_ends = st.one_of(st.just(b""), st.just(b"\x00"), keys)
small_ints = st.one_of(st.integers(-3, 60), st.sampled_from([2**31, 2**62, 2**63 - 1, -(2**63)]))
revs = st.one_of(st.integers(-3, 60), st.integers(-(2**63), 2**63 - 1))
enums = st.one_of(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))
lease_ids = st.one_of(st.sampled_from([0, 0, 1, 2, -1, -7, 2**62]), st.integers(-(2**63), 2**63 - 1))
values = st.binary(max_size=64)

range_requests = st.builds(
    pb.RangeRequest,
    key=keys,
    range_end=range_ends,
    limit=small_ints,
    revision=revs,
    sort_order=enums,
    sort_target=enums,
    serializable=st.booleans(),
    keys_only=st.booleans(),
    count_only=st.booleans(),
    min_mod_revision=revs,
    max_mod_revision=revs,
    min_create_revision=revs,
    max_create_revision=revs,
)
put_requests = st.builds(
    pb.PutRequest,
    key=keys,
    value=values,
    lease=st.one_of(st.just(0), lease_ids),
    prev_kv=st.booleans(),
    ignore_value=st.booleans(),
    ignore_lease=st.booleans(),
)
delete_requests = st.builds(pb.DeleteRangeRequest, key=keys, range_end=range_ends, prev_kv=st.booleans())


@st.composite
def compares(draw: st.DrawFn) -> pb.Compare:
    c = pb.Compare(key=draw(keys), range_end=draw(range_ends), result=draw(enums), target=draw(enums))  # type: ignore[arg-type]
    which = draw(st.sampled_from(["version", "create_revision", "mod_revision", "value", "lease", None]))
    if which == "value":
        c.value = draw(values)
    elif which is not None:
        setattr(c, which, draw(revs))
    return c


def request_ops(depth: int) -> st.SearchStrategy[pb.RequestOp]:
    leaves = [
        range_requests.map(lambda r: pb.RequestOp(request_range=r)),
        put_requests.map(lambda r: pb.RequestOp(request_put=r)),
        delete_requests.map(lambda r: pb.RequestOp(request_delete_range=r)),
        st.just(pb.RequestOp()),
    ]
    if depth > 0:
        leaves.append(txn_requests(depth - 1).map(lambda t: pb.RequestOp(request_txn=t)))
    return st.one_of(*leaves)


def txn_requests(depth: int = 3) -> st.SearchStrategy[pb.TxnRequest]:
    ops = st.lists(request_ops(depth), max_size=4)
    return st.builds(pb.TxnRequest, compare=st.lists(compares(), max_size=4), success=ops, failure=ops)


compactions = st.builds(pb.CompactionRequest, revision=revs, physical=st.booleans())
lease_grants = st.builds(
    pb.LeaseGrantRequest, TTL=st.one_of(st.integers(-5, 600), st.integers(-(2**63), 2**63 - 1)), ID=lease_ids
)
alarms = st.builds(
    pb.AlarmRequest,
    action=st.sampled_from([pb.AlarmRequest.GET, pb.AlarmRequest.GET, pb.AlarmRequest.DEACTIVATE]),
    memberID=st.one_of(st.just(0), st.integers(0, 2**64 - 1)),
    alarm=st.sampled_from([pb.NONE, pb.NOSPACE, pb.CORRUPT]),
)

WatchReq = pb.WatchRequest
watch_requests = st.one_of(
    st.builds(
        lambda c: WatchReq(create_request=c),
        st.builds(
            pb.WatchCreateRequest,
            key=keys,
            range_end=range_ends,
            start_revision=st.one_of(st.just(0), revs),
            progress_notify=st.booleans(),
            filters=st.lists(
                st.one_of(st.sampled_from([0, 1]), st.integers(-(2**31), 2**31 - 1)), max_size=3
            ),
            prev_kv=st.booleans(),
            watch_id=st.one_of(st.just(0), st.integers(-3, 20), st.integers(-(2**63), 2**63 - 1)),
            fragment=st.booleans(),
        ),
    ),
    st.builds(lambda i: WatchReq(cancel_request=pb.WatchCancelRequest(watch_id=i)), st.integers(-3, 40)),
    st.just(WatchReq(progress_request=pb.WatchProgressRequest())),
    st.just(WatchReq()),
)


# -- a watch stream driven by the fuzzer ---------------------------------------------------------------


class Stream:
    """A bidi Watch stream fed from a queue; a thread drains the responses."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.q: queue.Queue[pb.WatchRequest | None] = queue.Queue()
        self.responses = 0
        self.error: grpc.RpcError | None = None
        self.progress = threading.Event()
        self.created_ids: set[int] = set()
        self.events: list[tuple[int, int]] = []  # (revision, watch_id)
        self.canceled: list[pb.WatchResponse] = []
        self.sent: list[pb.WatchRequest] = []
        self._call = pb_grpc.WatchStub(channel).Watch(iter(self.q.get, None))
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        try:
            for resp in self._call:
                self.responses += 1
                if resp.created and not resp.canceled:
                    self.created_ids.add(resp.watch_id)
                if resp.canceled and not resp.created:
                    self.canceled.append(resp)
                if resp.watch_id == -1 and not resp.created and not resp.events:
                    self.progress.set()
                for ev in resp.events:
                    self.events.append((int(ev.kv.mod_revision), int(resp.watch_id)))
        except grpc.RpcError as e:
            self.error = e

    def send(self, req: pb.WatchRequest) -> None:
        self.sent.append(req)
        self.q.put(req)

    def close(self) -> None:
        self.q.put(None)
        self._call.cancel()
        self._t.join(5)


# -- the fuzz tests --------------------------------------------------------------------------------


@FUZZ
@given(req=range_requests)
def test_fuzz_range(f: Fuzzed, req: pb.RangeRequest) -> None:
    f.call("range", f.kv.Range, req)


@FUZZ
@given(req=put_requests)
def test_fuzz_put(f: Fuzzed, req: pb.PutRequest) -> None:
    f.call("put", f.kv.Put, req)


@FUZZ
@given(req=delete_requests)
def test_fuzz_delete(f: Fuzzed, req: pb.DeleteRangeRequest) -> None:
    f.call("delete", f.kv.DeleteRange, req)


@FUZZ
@given(req=txn_requests())
def test_fuzz_txn(f: Fuzzed, req: pb.TxnRequest) -> None:
    f.call("txn", f.kv.Txn, req)


@FUZZ
@given(
    req=st.one_of(lease_grants, lease_ids.map(lambda i: ("revoke", i)), lease_ids.map(lambda i: ("ttl", i)))
)
def test_fuzz_leases(f: Fuzzed, req: Any) -> None:
    if isinstance(req, pb.LeaseGrantRequest):
        f.call("lease grant", f.lease.LeaseGrant, req)
    elif req[0] == "revoke":
        f.call("lease revoke", f.lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=req[1]))
    else:
        f.call("lease ttl", f.lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=req[1], keys=True))
    f.call("lease leases", f.lease.LeaseLeases, pb.LeaseLeasesRequest())


@FUZZ
@given(req=st.one_of(compactions, alarms, revs.map(lambda r: pb.HashKVRequest(revision=r)), st.booleans()))
def test_fuzz_maintenance(f: Fuzzed, req: Any) -> None:
    if isinstance(req, pb.CompactionRequest):
        f.call("compact", f.kv.Compact, req)
    elif isinstance(req, pb.AlarmRequest):
        f.call("alarm", f.mt.Alarm, req)
        f.call("status", f.mt.Status, pb.StatusRequest())
    elif isinstance(req, pb.HashKVRequest):
        f.call("hashkv", f.mt.HashKV, req)
    else:
        f.call("member list", f.cluster.MemberList, pb.MemberListRequest(linearizable=req))
        f.call("status", f.mt.Status, pb.StatusRequest())


def test_fuzz_watch_streams(f: Fuzzed) -> None:
    """Generated watch requests on 4 long-lived streams, with writes in between; afterwards every
    stream is still open and answers a progress request."""
    streams = [Stream(f.channel) for _ in range(4)]
    try:

        @FUZZ
        @given(
            reqs=st.lists(watch_requests, min_size=1, max_size=6), which=st.integers(0, 3), put=put_requests
        )
        def run(reqs: list[pb.WatchRequest], which: int, put: pb.PutRequest) -> None:
            for r in reqs:
                TRIED["watch"] += 1
                streams[which].send(r)
            f.call("put", f.kv.Put, put)
            assert f.alive()

        run()
        # a progress request may be deferred (as etcd does) while a watcher waits for a future
        # revision; a create with a fresh watch ID is always answered
        for i, s in enumerate(streams):
            s.send(WatchReq(create_request=pb.WatchCreateRequest(key=b"liveness", watch_id=10**9 + i)))
        for i, s in enumerate(streams):
            deadline = time.monotonic() + 10
            while 10**9 + i not in s.created_ids and time.monotonic() < deadline:
                time.sleep(0.05)
            sent = "\n".join(str(r).replace("\n", " ") for r in s.sent[-30:])
            assert 10**9 + i in s.created_ids, (
                f"stream {i} stopped answering (error: {s.error}); sent last:\n{sent}"
            )
            assert s.error is None, s.error
        print(f"watch responses: {sum(s.responses for s in streams)}")
    finally:
        for s in streams:
            s.close()
    assert f.alive()


# -- invariants -----------------------------------------------------------------------------------------


def _revoke_all_leases(f: Fuzzed) -> None:
    for ls in f.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10).leases:
        try:
            f.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=ls.ID), timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e


def _fingerprint(f: Fuzzed) -> tuple[int, int]:
    r = f.mt.HashKV(pb.HashKVRequest(), timeout=30)
    return int(r.header.revision), int(r.hash)


def test_revisions_dense_under_fuzzed_writes(f: Fuzzed) -> None:
    """A watcher over the whole key space, started before a fuzzed write load, sees every revision
    from its start to the end, once each (a revision holds all the events of one txn)."""
    _revoke_all_leases(f)
    start = _fingerprint(f)[0] + 1
    watcher = Stream(f.channel)
    watcher.send(
        WatchReq(create_request=pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00", start_revision=start))
    )
    plain_puts = st.builds(pb.PutRequest, key=keys, value=values, prev_kv=st.booleans())
    ops = st.one_of(plain_puts, plain_puts, put_requests, delete_requests, txn_requests(2), compactions)

    @FUZZ
    @given(op=ops)
    def run(op: Any) -> None:
        fn = {
            pb.PutRequest: f.kv.Put,
            pb.DeleteRangeRequest: f.kv.DeleteRange,
            pb.TxnRequest: f.kv.Txn,
            pb.CompactionRequest: f.kv.Compact,
        }[type(op)]
        f.call(f"dense {type(op).__name__}", fn, op)

    try:
        run()
        _revoke_all_leases(f)
        end = _fingerprint(f)[0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len({r for r, _ in watcher.events}) < end - start + 1:
            time.sleep(0.1)
        assert watcher.error is None and not watcher.canceled, (watcher.error, watcher.canceled)
        seen = sorted({r for r, _ in watcher.events})
        assert seen == list(range(start, end + 1)), (
            f"revisions {start}..{end}: missing {sorted(set(range(start, end + 1)) - set(seen))[:10]}, "
            f"extra {sorted(set(seen) - set(range(start, end + 1)))[:10]}"
        )
        print(f"dense: revisions {start}..{end} all seen")
    finally:
        watcher.close()


def test_hashkv_stable_without_writes(f: Fuzzed) -> None:
    """Only requests that write nothing: the revision and HashKV stay as they were."""
    _revoke_all_leases(f)
    before = _fingerprint(f)
    reads = st.one_of(
        range_requests,
        lease_ids.map(lambda i: pb.LeaseTimeToLiveRequest(ID=i, keys=True)),
        revs.map(lambda r: pb.HashKVRequest(revision=r)),
        st.just(pb.StatusRequest()),
        st.booleans().map(lambda b: pb.MemberListRequest(linearizable=b)),
        # txns whose every op is a range
        st.builds(
            pb.TxnRequest,
            compare=st.lists(compares(), max_size=3),
            success=st.lists(range_requests.map(lambda r: pb.RequestOp(request_range=r)), max_size=3),
            failure=st.lists(range_requests.map(lambda r: pb.RequestOp(request_range=r)), max_size=3),
        ),
    )
    fns = {
        pb.RangeRequest: f.kv.Range,
        pb.LeaseTimeToLiveRequest: f.lease.LeaseTimeToLive,
        pb.HashKVRequest: f.mt.HashKV,
        pb.StatusRequest: f.mt.Status,
        pb.MemberListRequest: f.cluster.MemberList,
        pb.TxnRequest: f.kv.Txn,
    }

    @FUZZ
    @given(req=reads)
    def run(req: Any) -> None:
        f.call(f"read-only {type(req).__name__}", fns[type(req)], req)

    run()
    assert _fingerprint(f) == before


def test_rss_does_not_grow_without_bound(f: Fuzzed) -> None:
    """10 batches of the same mixed work; after 3 batches of warm-up, RSS grows by less than 16 MiB
    over the remaining 7 (a leak of a stream, a connection or a lease per iteration would show)."""
    rng = random.Random(3)
    samples = []
    for _batch in range(10):
        for i in range(150):
            k = b"rss/%d" % rng.randrange(20)
            f.kv.Put(pb.PutRequest(key=k, value=os.urandom(100)), timeout=10)
            f.kv.Range(pb.RangeRequest(key=b"rss/", range_end=b"rss0"), timeout=10)
            f.kv.Txn(
                pb.TxnRequest(
                    compare=[
                        pb.Compare(key=k, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)
                    ],
                    success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"t"))],
                ),
                timeout=10,
            )
            if i % 5 == 0:
                lid = f.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10).ID
                f.kv.Put(pb.PutRequest(key=b"rss/leased", lease=lid), timeout=10)
                f.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lid), timeout=10)
                s = Stream(f.channel)
                s.send(WatchReq(create_request=pb.WatchCreateRequest(key=b"rss/", range_end=b"rss0")))
                s.close()
            if i % 25 == 0:
                with grpc.insecure_channel(f.target) as ch:
                    pb_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=10)
        rev = f.kv.Range(pb.RangeRequest(key=b"rss/"), timeout=10).header.revision
        f.kv.Compact(pb.CompactionRequest(revision=rev, physical=True), timeout=30)
        TRIED["rss loop"] += 150 * 3 + 30 * 4 + 6
        samples.append(f.rss_kib())
    print(f"RSS per batch (MiB): {[round(s / 1024, 1) for s in samples]}")
    growth = samples[-1] - samples[2]
    assert growth < 16 * 1024, f"RSS grew {growth / 1024:.1f} MiB after warm-up: {samples}"


# -- raw frames on the socket ---------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name, no Huffman (names and values < 127)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def headers_block(authority: str, path: str) -> bytes:
    return b"".join(
        _hpack_literal(k, v)
        for k, v in [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    )


def grpc_call_frames(authority: str, path: str, message: bytes, declared: int | None = None) -> bytes:
    n = len(message) if declared is None else declared
    body = b"\x00" + struct.pack(">I", n) + message
    return (
        PREFACE
        + frame(0x4, 0, 0, b"")  # SETTINGS
        + frame(0x1, 0x4, 1, headers_block(authority, path))  # HEADERS, END_HEADERS
        + frame(0x0, 0x1, 1, body)  # DATA, END_STREAM
    )


def exchange(target: str, data: bytes, wait: float = 5.0, hold_open: bool = False) -> tuple[str, set[int]]:
    """Send data; read until the server closes, says GOAWAY/RST_STREAM or ends stream 1, or wait
    passes. Returns (how it ended, frame types seen)."""
    host, port = target.rsplit(":", 1)
    types: set[int] = set()
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        buf = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return "reset", types
            if not chunk:
                return "closed", types
            buf += chunk
            while len(buf) >= 9:
                n = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + n:
                    break
                ftype, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                types.add(ftype)
                buf = buf[9 + n :]
                if ftype == 0x7 or (ftype == 0x3 and stream == 1):
                    return "goaway" if ftype == 0x7 else "rst", types
                if ftype == 0x1 and stream == 1 and flags & 0x1:
                    return "trailers", types
        return ("held" if hold_open else "timeout"), types


def _serving(f: Fuzzed) -> None:
    with grpc.insecure_channel(f.target) as ch:
        pb_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"raw"), timeout=5)
    assert f.alive()


RANGE_MSG = pb.RangeRequest(key=b"raw").SerializeToString()

# etcd (grpc-go) answers the first with an error status and closes the connection on the second;
# grpcio's core leaves the stream (resp. the connection) open without an answer until the client
# goes away. Neither costs more than an idle stream, and other clients are served meanwhile.
SILENT_LIKE_GRPCIO = {"length prefix larger than the body", "DATA on stream 0"}


@pytest.mark.parametrize(
    "name",
    [
        "garbage",
        "preface then garbage",
        "frame of 16 MiB announced",
        "length prefix larger than the body",
        "length prefix of 4 GiB",
        "DATA on stream 0",
        "HEADERS with broken HPACK",
        "gRPC message of random bytes",
    ],
)
def test_raw_frames(f: Fuzzed, name: str) -> None:
    rng = random.Random(name)
    a = f.target
    data = {
        "garbage": bytes(rng.randrange(256) for _ in range(4096)),
        "preface then garbage": PREFACE + bytes(rng.randrange(256) for _ in range(4096)),
        "frame of 16 MiB announced": PREFACE
        + frame(0x4, 0, 0, b"")
        + frame(0x0, 0, 1, b"x" * 100, length=2**24 - 1),
        "length prefix larger than the body": grpc_call_frames(
            a, "/etcdserverpb.KV/Range", RANGE_MSG, declared=1000
        ),
        "length prefix of 4 GiB": grpc_call_frames(
            a, "/etcdserverpb.KV/Range", RANGE_MSG, declared=2**32 - 1
        ),
        "DATA on stream 0": PREFACE + frame(0x4, 0, 0, b"") + frame(0x0, 0x1, 0, b"\x00\x00\x00\x00\x00"),
        "HEADERS with broken HPACK": PREFACE
        + frame(0x4, 0, 0, b"")
        + frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\x7f"),
        "gRPC message of random bytes": grpc_call_frames(
            a, "/etcdserverpb.KV/Put", bytes(rng.randrange(256) for _ in range(64))
        ),
    }[name]
    TRIED["raw frames"] += 1
    how, types = exchange(a, data)
    print(f"{name}: {how}, frame types {sorted(types)}")
    if name not in SILENT_LIKE_GRPCIO:
        assert how != "timeout", f"{name}: no answer and no close in 5 s (frames {types})"
    _serving(f)


def test_raw_connections_held_and_flooded(f: Fuzzed) -> None:
    """Half a preface held open on 50 sockets and 200 connections of garbage at once: other
    clients are served meanwhile and afterwards."""
    host, port = f.target.rsplit(":", 1)
    held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(50)]
    try:
        for s in held:
            s.sendall(PREFACE[:10])
        _serving(f)
        threads = [
            threading.Thread(target=exchange, args=(f.target, os.urandom(512), 3.0)) for _ in range(200)
        ]
        for t in threads:
            t.start()
        _serving(f)
        for t in threads:
            t.join(20)
        TRIED["raw frames"] += 250
    finally:
        for s in held:
            s.close()
    _serving(f)
