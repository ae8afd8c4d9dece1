"""Bad input against a running petcd, side by side with a real etcd v3.6 given the same requests in
the same order: the same gRPC code and message byte for byte (responses compared with the
identity fields of the header, cluster/member ID and term, left out), the server never crashes,
and a request that must not write leaves the revision and HashKV as they were.

We test these aspects:
- request size: puts just under and just over --max-request-bytes (the boundary found on etcd by
  bisection is the same byte on petcd), a txn over it, messages over the gRPC receive limit
  (max-request-bytes + 512 KiB) and 5 MiB;
- huge ranges: 50,000 keys, without and with limit, count_only, keys_only, sorted, filtered by
  revision, the whole key space; HashKV of both stores equal;
- txn nesting from 10 to 1,000 levels (etcd runs up to 128 and refuses deeper with "too many
  operations"; each level spends one of the 128 ops), built as raw bytes since Python's protobuf
  cannot build them; petcd answers as etcd and is still alive, and restarts, afterwards;
- 129-op txns, duplicate keys, empty RequestOps, the empty key in compares and everywhere else;
- binary keys and values: every byte 0x00..0xff as a key, NUL in the middle of keys, invalid
  UTF-8 values, ranges around them;
- negative and huge revisions: Range rev -1, Compact -1 and 0, HashKV -1 and in the future, watch
  start -1 and 2^62;
- leases: TTL -1 and 0, ID -7 (granted as such), revoke/TimeToLive of 0, -1 and unknown IDs,
  puts with unknown/negative leases, TTL too large;
- unknown enum values: sort order/target 99, compare target/result 99, alarm type 99 (petcd
  crashed and could not restart on this one), alarm action 99 (etcd itself panics: petcd must
  survive);
- malformed protobuf sent with a raw gRPC call (truncated, bad varints, lengths past the end,
  stray end-group tags) to every unary method and the Watch stream: etcd answers INTERNAL
  "grpc: error unmarshalling request: ..."; petcd must too, never UNKNOWN with a Python message;
- unknown methods and services: etcd's UNIMPLEMENTED messages;
- a watch stream whose client half-closes its send side keeps delivering events (as etcd);
- at the end both stores hold the same data: same revision, same HashKV.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.framework.differential import Differential
from tests.harness.procs import Member

MAX_REQUEST = 100_000
RECV_LIMIT = MAX_REQUEST + 512 * 1024
FLAGS = (f"--max-request-bytes={MAX_REQUEST}",)
pytestmark = [pytest.mark.integration, pytest.mark.flags(*FLAGS)]
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@dataclass
class Server:
    member: Member
    channel: grpc.Channel

    @property
    def kind(self) -> str:
        return self.member.kind

    @property
    def kv(self) -> Any:
        return pb_grpc.KVStub(self.channel)

    @property
    def lease(self) -> Any:
        return pb_grpc.LeaseStub(self.channel)

    @property
    def mt(self) -> Any:
        return pb_grpc.MaintenanceStub(self.channel)

    @property
    def cluster(self) -> Any:
        return pb_grpc.ClusterStub(self.channel)

    @property
    def watch(self) -> Any:
        return pb_grpc.WatchStub(self.channel)

    def raw(self, method: str) -> Any:
        """A unary call of method sending and returning bytes as they are."""
        return self.channel.unary_unary(method)

    def alive(self) -> bool:
        return self.member.proc is not None and self.member.proc.poll() is None

    def fingerprint(self) -> tuple[int, int]:
        """(revision, HashKV at it): what a request that writes nothing must leave alone."""
        r = self.mt.HashKV(pb.HashKVRequest(), timeout=30)
        return int(r.header.revision), int(r.hash)


def _connect(member: Member) -> Server:
    return Server(member, grpc.insecure_channel(member.client_url.split("://")[1], options=OPTIONS))


def _open(member: Member) -> Server:
    member.start()
    return _connect(member)


@pytest.fixture(scope="module")
def pair(module_pair: Differential) -> Iterator[tuple[Server, Server]]:
    """(petcd, etcd), started with the same flags; the module's tests send both the same requests
    in the same order, so their revisions stay equal."""
    servers = [_connect(m) for m in module_pair]
    yield servers[0], servers[1]
    for s in servers:
        s.channel.close()


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[Server]:
    s = _open(Member.etcd(tmp_path, *FLAGS))
    yield s
    s.channel.close()
    s.member.stop()


@pytest.fixture
def fresh_petcd(tmp_path: Path) -> Iterator[Server]:
    """A petcd of its own, for the requests that have crashed petcd."""
    s = _open(Member.petcd(tmp_path, *FLAGS))
    yield s
    s.channel.close()
    s.member.stop()


# -- outcomes --------------------------------------------------------------------------------------


def strip_header_bytes(data: bytes) -> bytes:
    """A serialized response without its top-level field 1 (the header), for responses too deep
    for Python's protobuf to parse."""
    out = bytearray()
    i = 0
    while i < len(data):
        start = i
        tag, i = _varint(data, i)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _varint(data, i)
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire} at {start}")
        if tag >> 3 != 1:
            out += data[start:i]
    return bytes(out)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(num: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def normalize(msg: Message) -> str:
    """The response as text, with only the revision of its header."""
    m = type(msg)()
    m.CopyFrom(msg)
    if m.DESCRIPTOR.fields_by_name.get("header") is not None and m.HasField("header"):
        rev = m.header.revision  # type: ignore[attr-defined]
        m.header.Clear()  # type: ignore[attr-defined]
        m.header.revision = rev  # type: ignore[attr-defined]
    return str(m)


Outcome = tuple[str, ...]


def outcome(fn: Callable[[], Any], norm: Callable[[Any], str] = normalize) -> Outcome:
    try:
        resp = fn()
    except grpc.RpcError as e:
        return ("error", e.code().name, e.details() or "")
    if isinstance(resp, bytes):
        return ("ok", strip_header_bytes(resp).hex())
    return ("ok", norm(resp))


def both(
    pair: tuple[Server, Server], call: Callable[[Server], Any], norm: Callable[[Any], str] = normalize
) -> tuple[Outcome, Outcome]:
    """(petcd's outcome, etcd's outcome); both must still be alive."""
    petcd, etcd = pair
    got = outcome(lambda: call(petcd), norm), outcome(lambda: call(etcd), norm)
    assert etcd.alive(), f"etcd died: {etcd.member.log()[-3000:]}"
    assert petcd.alive(), f"petcd died: {petcd.member.log()[-5000:]}"
    return got


def assert_like_etcd(
    pair: tuple[Server, Server],
    call: Callable[[Server], Any],
    norm: Callable[[Any], str] = normalize,
    writes: bool = False,
) -> Outcome:
    before = pair[0].fingerprint()
    p, e = both(pair, call, norm)
    assert p == e, f"petcd answered\n  {p}\netcd answered\n  {e}"
    if not writes:
        assert pair[0].fingerprint() == before, "a request that writes nothing changed the store"
    return e


# -- request size -------------------------------------------------------------------------------


def put_of(n: int) -> Callable[[Server], Any]:
    return lambda s: s.kv.Put(pb.PutRequest(key=b"size", value=b"x" * n), timeout=20)


def idle_txn(n: int) -> pb.TxnRequest:
    """A txn carrying a put of n bytes whose compare fails: sized like a write, writes nothing."""
    return pb.TxnRequest(
        compare=[pb.Compare(key=b"never-there", target=pb.Compare.VERSION, version=5)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"size", value=b"x" * n))],
    )


def expected_boundary(member_id: int) -> int:
    """The largest n for which etcd proposes idle_txn(n): the InternalRaftRequest (a header with
    the request ID, whose top 16 bits are the member ID's low 16 bits, then the txn) must be at
    most --max-request-bytes. So the boundary depends on the member ID, by a byte or two."""
    request_id = (member_id & 0xFFFF) << 48 | (int(time.time() * 1000) & 0xFF_FFFF_FFFF) << 8
    n = MAX_REQUEST
    while True:
        r = rpb.InternalRaftRequest(header=rpb.RequestHeader(ID=request_id), txn=idle_txn(n))
        if r.ByteSize() <= MAX_REQUEST:
            return n
        n -= 1


def test_sizes_around_max_request_bytes(pair: tuple[Server, Server]) -> None:
    """The largest request each member takes is the byte etcd's rule gives for its member ID; one
    byte more is "request is too large"."""
    for s in pair:
        mid = int(s.mt.Status(pb.StatusRequest(), timeout=5).header.member_id)
        want = expected_boundary(mid)
        before = s.fingerprint()
        lo, hi = MAX_REQUEST - 1000, MAX_REQUEST + 1
        while hi - lo > 1:
            mid_n = (lo + hi) // 2
            o = outcome(lambda s=s, mid_n=mid_n: s.kv.Txn(idle_txn(mid_n), timeout=20))  # type: ignore[misc]
            if o[0] == "ok":
                lo = mid_n
            else:
                assert o == ("error", "INVALID_ARGUMENT", "etcdserver: request is too large"), o
                hi = mid_n
        assert lo == want, f"{s.kind}: largest txn taken carries {lo} bytes, etcd's rule says {want}"
        assert s.fingerprint() == before
    # and the same answers, side by side
    for n in (MAX_REQUEST - 200, MAX_REQUEST + 1, RECV_LIMIT - 200):
        assert_like_etcd(pair, put_of(n), writes=n < MAX_REQUEST)
    big_txn = pb.TxnRequest(
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"t%d" % i, value=b"y" * 1000)) for i in range(101)
        ]
    )
    assert_like_etcd(pair, lambda s: s.kv.Txn(big_txn, timeout=20))


@pytest.mark.parametrize("n", [RECV_LIMIT + 10, 5 * 1024 * 1024])
def test_over_grpc_receive_limit_is_refused(pair: tuple[Server, Server], n: int) -> None:
    before = pair[0].fingerprint()
    p, e = both(pair, put_of(n))
    assert e[:2] == ("error", "RESOURCE_EXHAUSTED")
    assert p[:2] == e[:2], p
    assert pair[0].fingerprint() == before


def test_over_grpc_receive_limit_message_is_etcds(pair: tuple[Server, Server]) -> None:
    """etcd (grpc-go): "grpc: received message larger than max (N vs. M)"; grpcio's own text
    differs ("SERVER: Received message larger than max ..."): petcd must say what etcd says."""
    p, e = both(pair, put_of(RECV_LIMIT + 10))
    assert e[2].startswith("grpc: received message larger than max (")
    assert p == e


# -- huge ranges -----------------------------------------------------------------------------------

BIG = 50_000


def test_ranges_over_50k_keys(pair: tuple[Server, Server]) -> None:
    for s in pair:
        for start in range(0, BIG, 128):
            ops = [
                pb.RequestOp(request_put=pb.PutRequest(key=b"big/%06d" % i, value=b"v%d" % (i % 97)))
                for i in range(start, min(BIG, start + 128))
            ]
            s.kv.Txn(pb.TxnRequest(success=ops), timeout=30)
    assert pair[0].fingerprint()[0] == pair[1].fingerprint()[0]
    first_rev = pair[0].fingerprint()[0] - BIG // 128
    R = pb.RangeRequest
    big: dict[str, Any] = {"key": b"big/", "range_end": b"big0"}
    requests = {
        "all": R(**big),
        "limit 10": R(**big, limit=10),
        "count_only": R(**big, count_only=True),
        "count_only with limit": R(**big, count_only=True, limit=5),
        "keys_only": R(**big, keys_only=True),
        "limit 49999 keys_only": R(**big, keys_only=True, limit=BIG - 1),
        "limit over the count": R(**big, limit=BIG + 1),
        "descending by key, limit 3": R(**big, limit=3, sort_order=R.DESCEND, sort_target=R.KEY),
        "by value, limit 5": R(**big, limit=5, sort_order=R.ASCEND, sort_target=R.VALUE),
        "by mod revision descending": R(**big, limit=7, sort_order=R.DESCEND, sort_target=R.MOD),
        "min mod revision": R(**big, min_mod_revision=first_rev + 300),
        "max create revision, limit": R(**big, max_create_revision=first_rev + 3, limit=2),
        "whole key space": R(key=b"\x00", range_end=b"\x00"),
        "from a key on": R(key=b"big/049990", range_end=b"\x00"),
        "at an older revision": R(**big, revision=first_rev + 10, count_only=True),
    }
    # sorting by value or revision leaves ties in an order neither etcd nor petcd promises:
    # compare the sorted field only there
    tie_fields = {"by value, limit 5": "value", "by mod revision descending": "mod_revision"}
    for name, req in requests.items():
        norm: Callable[[Any], str] = normalize
        if name in tie_fields:
            norm = lambda r, f=tie_fields[name]: str(  # type: ignore[misc]  # noqa: E731
                (r.count, r.more, [getattr(kv, f) for kv in r.kvs])
            )
        p, e = both(pair, lambda s, req=req: s.kv.Range(req, timeout=60), norm)  # type: ignore[misc]
        assert e[0] == "ok", (name, e)
        assert p == e, f"{name}: petcd and etcd differ"
    # the same data: HashKV over both stores is the same number
    hashes = {s.kind: s.fingerprint() for s in pair}
    assert hashes["petcd"] == hashes["etcd"], hashes


# -- nested txns -------------------------------------------------------------------------------------


def nested_txn(depth: int, leaf: bytes) -> bytes:
    """TxnRequest{success: [RequestOp{request_txn: ... TxnRequest{success: [leaf]}}]}, depth levels
    of TxnRequest; leaf is a serialized RequestOp."""
    t = ld(2, leaf)
    for _ in range(depth - 1):
        t = ld(2, ld(4, t))
    return t


RANGE_LEAF = ld(1, ld(1, b"nested/none"))  # RequestOp{request_range: {key: nested/none}}


@pytest.mark.parametrize("depth", [10, 49, 50, 100, 128, 129, 1000])
def test_deeply_nested_txn(fresh_etcd: Server, fresh_petcd: Server, depth: int) -> None:
    """etcd runs a txn nested up to 128 levels (each level spends one of --max-txn-ops) and refuses
    deeper ones with "too many operations in txn request". A read-only txn nested 50 levels used
    to stop petcd at apply (and again at every restart: the entry is in its WAL); deeper ones came
    back as UNKNOWN "Unexpected <class 'google.protobuf.message.DecodeError'>..."."""
    etcd = fresh_etcd
    data = nested_txn(depth, RANGE_LEAF)
    before = fresh_petcd.fingerprint()
    e = outcome(lambda: etcd.raw("/etcdserverpb.KV/Txn")(data, timeout=20))
    p = outcome(lambda: fresh_petcd.raw("/etcdserverpb.KV/Txn")(data, timeout=20))
    expected_ok = depth <= 128
    assert (e[0] == "ok") == expected_ok, e
    if not expected_ok:
        assert e == ("error", "INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
    time.sleep(0.5)
    alive = fresh_petcd.alive()
    log = fresh_petcd.member.log()[-3000:]
    assert alive, f"petcd died on a txn nested {depth} levels:\n{log}"
    assert p == e, f"petcd answered {p[:3]}"
    assert fresh_petcd.fingerprint() == before
    fresh_petcd.member.stop()
    fresh_petcd.member.start(timeout=20)  # what it logged must not stop it from starting again
    assert fresh_petcd.fingerprint() == before


def test_nested_txn_with_puts_like_etcd(pair: tuple[Server, Server]) -> None:
    """A put 40 levels down: applied once, the same response as etcd's."""
    leaf = ld(2, ld(1, b"nested/put") + ld(2, b"deep"))  # RequestOp{request_put: {key, value}}
    data = nested_txn(40, leaf)
    outs = []
    for s in pair:
        outs.append(outcome(lambda s=s: s.raw("/etcdserverpb.KV/Txn")(data, timeout=20)))  # type: ignore[misc]
        r = s.kv.Range(pb.RangeRequest(key=b"nested/put"), timeout=10)
        assert [(kv.value, kv.version) for kv in r.kvs] == [(b"deep", 1)], s.kind
        s.kv.DeleteRange(pb.DeleteRangeRequest(key=b"nested/put"), timeout=10)
    assert outs[0][0] == "ok"
    assert outs[1] == outs[0]


# -- validation, side by side ----------------------------------------------------------------------

Op = pb.RequestOp
C = pb.Compare


def _txn(
    *ops: pb.RequestOp, compare: tuple[pb.Compare, ...] = (), failure: tuple[pb.RequestOp, ...] = ()
) -> Any:
    return pb.TxnRequest(compare=list(compare), success=list(ops), failure=list(failure))


def _lease_norm(resp: Any) -> str:
    """Lease grants with ID 0 get a random ID, and TTLs count down: keep the shape only."""
    m = type(resp)()
    m.CopyFrom(resp)
    if isinstance(m, pb.LeaseGrantResponse) and m.ID > 0:
        m.ID = 1
    if isinstance(m, pb.LeaseTimeToLiveResponse) and m.TTL > 0:
        m.TTL = 1
    return normalize(m)


BYTE_KEYS = [bytes([b]) for b in range(256)]

# name -> (call, writes)
CASES: dict[str, tuple[Callable[[Server], Any], bool]] = {
    # negative and odd revisions
    "range rev -1": (lambda s: s.kv.Range(pb.RangeRequest(key=b"big/000001", revision=-1)), False),
    "range future rev": (lambda s: s.kv.Range(pb.RangeRequest(key=b"a", revision=2**62)), False),
    "range limit -1": (
        lambda s: s.kv.Range(pb.RangeRequest(key=b"big/04999", range_end=b"big0", limit=-1)),
        False,
    ),
    "range negative min/max revisions": (
        lambda s: s.kv.Range(
            pb.RangeRequest(key=b"big/04999", range_end=b"big0", min_mod_revision=-5, max_create_revision=-1)
        ),
        False,
    ),
    "range end before key": (lambda s: s.kv.Range(pb.RangeRequest(key=b"z", range_end=b"a")), False),
    "compact -1": (lambda s: s.kv.Compact(pb.CompactionRequest(revision=-1)), False),
    "compact future": (lambda s: s.kv.Compact(pb.CompactionRequest(revision=2**62)), False),
    "hashkv -1": (lambda s: s.mt.HashKV(pb.HashKVRequest(revision=-1)), False),
    "hashkv future": (lambda s: s.mt.HashKV(pb.HashKVRequest(revision=2**62)), False),
    # unknown enum values
    "sort order 99": (lambda s: s.kv.Range(pb.RangeRequest(key=b"a", sort_order=99)), False),  # type: ignore[arg-type]
    "sort target 99": (lambda s: s.kv.Range(pb.RangeRequest(key=b"a", sort_target=99)), False),  # type: ignore[arg-type]
    "sort order -1": (lambda s: s.kv.Range(pb.RangeRequest(key=b"a", sort_order=-1)), False),  # type: ignore[arg-type]
    "compare target 99": (lambda s: s.kv.Txn(_txn(compare=(C(key=b"a", target=99),))), False),  # type: ignore[arg-type]
    "compare result 99": (
        lambda s: s.kv.Txn(_txn(compare=(C(key=b"a", result=99, target=C.VERSION, version=1),))),  # type: ignore[arg-type]
        False,
    ),
    "compare result 99 on an existing key": (
        lambda s: s.kv.Txn(_txn(compare=(C(key=b"big/000001", result=99, target=C.MOD, mod_revision=1),))),  # type: ignore[arg-type]
        False,
    ),
    # keys
    "compare with the empty key": (
        lambda s: s.kv.Txn(_txn(compare=(C(key=b"", target=C.VERSION, version=0),))),
        False,
    ),
    "range of the empty key": (lambda s: s.kv.Range(pb.RangeRequest(key=b"")), False),
    "put of the empty key": (lambda s: s.kv.Put(pb.PutRequest(key=b"", value=b"v")), False),
    "delete of the empty key": (lambda s: s.kv.DeleteRange(pb.DeleteRangeRequest(key=b"")), False),
    "delete with range end before key": (
        lambda s: s.kv.DeleteRange(pb.DeleteRangeRequest(key=b"z", range_end=b"a")),
        False,
    ),
    "put in a txn of the empty key": (
        lambda s: s.kv.Txn(_txn(Op(request_put=pb.PutRequest(key=b"")))),
        False,
    ),
    "every byte as a key (first half)": (
        lambda s: s.kv.Txn(
            _txn(*[Op(request_put=pb.PutRequest(key=k, value=b"\xff" + k)) for k in BYTE_KEYS[:128]])
        ),
        True,
    ),
    "every byte as a key (second half)": (
        lambda s: s.kv.Txn(
            _txn(*[Op(request_put=pb.PutRequest(key=k, value=b"\xc3\x28" + k)) for k in BYTE_KEYS[128:]])
        ),
        True,
    ),
    "range over single-byte keys": (
        lambda s: s.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x02")),
        False,
    ),
    "range from 0xff": (
        lambda s: s.kv.Range(pb.RangeRequest(key=b"\xff", range_end=b"\x00", keys_only=True)),
        False,
    ),
    "NUL inside a key, invalid UTF-8 value": (
        lambda s: s.kv.Put(pb.PutRequest(key=b"nul\x00mid", value=b"\xfe\xff\x00\xed\xa0\x80", prev_kv=True)),
        True,
    ),
    "range between NUL keys": (
        lambda s: s.kv.Range(pb.RangeRequest(key=b"nul\x00", range_end=b"nul\x01")),
        False,
    ),
    "compare on a NUL key": (
        lambda s: s.kv.Txn(
            _txn(
                Op(request_range=pb.RangeRequest(key=b"nul\x00mid")),
                compare=(C(key=b"nul\x00mid", target=C.VALUE, value=b"\xfe\xff\x00\xed\xa0\x80"),),
            )
        ),
        False,
    ),
    "delete the NUL key with prev_kv": (
        lambda s: s.kv.DeleteRange(pb.DeleteRangeRequest(key=b"nul\x00mid", prev_kv=True)),
        True,
    ),
    # txn shapes
    "empty txn": (lambda s: s.kv.Txn(pb.TxnRequest()), False),
    "empty RequestOp": (lambda s: s.kv.Txn(_txn(Op())), False),
    "empty RequestOp in failure": (lambda s: s.kv.Txn(_txn(failure=(Op(),))), False),
    "129 ops": (
        lambda s: s.kv.Txn(_txn(*[Op(request_put=pb.PutRequest(key=b"k%d" % i)) for i in range(129)])),
        False,
    ),
    "129 compares": (
        lambda s: s.kv.Txn(_txn(compare=tuple(C(key=b"k%d" % i, target=C.VERSION) for i in range(129)))),
        False,
    ),
    "128 ranges": (
        lambda s: s.kv.Txn(
            _txn(*[Op(request_range=pb.RangeRequest(key=b"big/%06d" % i)) for i in range(128)])
        ),
        False,
    ),
    "duplicate put keys": (
        lambda s: s.kv.Txn(
            _txn(Op(request_put=pb.PutRequest(key=b"d")), Op(request_put=pb.PutRequest(key=b"d")))
        ),
        False,
    ),
    "put and delete overlapping": (
        lambda s: s.kv.Txn(
            _txn(
                Op(request_put=pb.PutRequest(key=b"d1")),
                Op(request_delete_range=pb.DeleteRangeRequest(key=b"d", range_end=b"e")),
            )
        ),
        False,
    ),
    "put ignore_value without a key": (
        lambda s: s.kv.Put(pb.PutRequest(key=b"absent", ignore_value=True)),
        False,
    ),
    "put ignore_lease with a lease": (
        lambda s: s.kv.Put(pb.PutRequest(key=b"x", ignore_lease=True, lease=5)),
        False,
    ),
    # leases
    "lease revoke 0": (lambda s: s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=0)), False),
    "lease revoke -1": (lambda s: s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=-1)), False),
    "lease ttl 0": (lambda s: s.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=0, keys=True)), False),
    "lease ttl -1": (lambda s: s.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=-1)), False),
    "put with lease -7 (unknown)": (lambda s: s.kv.Put(pb.PutRequest(key=b"leased", lease=-7)), False),
    "put with a huge lease": (lambda s: s.kv.Put(pb.PutRequest(key=b"leased", lease=2**62)), False),
    "grant TTL too large": (lambda s: s.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2**62)), False),
    "grant TTL -1": (lambda s: s.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=-1)), False),
    "grant TTL 0": (lambda s: s.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=0)), False),
    "grant ID -7": (lambda s: s.lease.LeaseGrant(pb.LeaseGrantRequest(ID=-7, TTL=100)), False),
    "grant ID -7 again": (lambda s: s.lease.LeaseGrant(pb.LeaseGrantRequest(ID=-7, TTL=100)), False),
    "put with lease -7": (lambda s: s.kv.Put(pb.PutRequest(key=b"leased", lease=-7)), True),
    "ttl of lease -7 with keys": (
        lambda s: s.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=-7, keys=True)),
        False,
    ),
    "revoke -7": (lambda s: s.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=-7)), True),
    "leased key gone": (lambda s: s.kv.Range(pb.RangeRequest(key=b"leased")), False),
    # maintenance and cluster
    "alarm get with junk member": (
        lambda s: s.mt.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET, memberID=2**63 - 1, alarm=99)),  # type: ignore[arg-type]
        False,
    ),
    "alarm deactivate of nothing": (
        lambda s: s.mt.Alarm(
            pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=12345, alarm=pb.NOSPACE)
        ),
        False,
    ),
    "member remove 0": (lambda s: s.cluster.MemberRemove(pb.MemberRemoveRequest(ID=0)), False),
    "member update unknown": (
        lambda s: s.cluster.MemberUpdate(pb.MemberUpdateRequest(ID=12345, peerURLs=["http://127.0.0.1:1"])),
        False,
    ),
    "member add bad URL": (
        lambda s: s.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=["::not a url"])),
        False,
    ),
    "member add no URL": (lambda s: s.cluster.MemberAdd(pb.MemberAddRequest()), False),
    "member promote unknown": (lambda s: s.cluster.MemberPromote(pb.MemberPromoteRequest(ID=12345)), False),
    "move leader to nobody": (lambda s: s.mt.MoveLeader(pb.MoveLeaderRequest(targetID=12345)), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_like_etcd(pair: tuple[Server, Server], name: str) -> None:
    call, writes = CASES[name]
    assert_like_etcd(pair, lambda s: call(s), norm=_lease_norm, writes=writes)


def test_watch_odd_requests_like_etcd(pair: tuple[Server, Server]) -> None:
    """Negative and huge start revisions, empty and inverted ranges, unknown filters, negative and
    duplicate watch IDs, cancels of unknown IDs, empty requests, progress requests."""
    W, Cr = pb.WatchRequest, pb.WatchCreateRequest
    reqs = [
        W(create_request=Cr(key=b"a", start_revision=-1)),
        W(create_request=Cr(key=b"", start_revision=0)),
        W(create_request=Cr(key=b"b", watch_id=-5)),
        W(create_request=Cr(key=b"b", filters=[99])),  # type: ignore[list-item]
        W(create_request=Cr(key=b"b", watch_id=7)),
        W(create_request=Cr(key=b"b", watch_id=7)),
        W(cancel_request=pb.WatchCancelRequest(watch_id=12345)),
        W(cancel_request=pb.WatchCancelRequest(watch_id=-1)),
        W(progress_request=pb.WatchProgressRequest()),
        W(),
        W(create_request=Cr(key=b"z", range_end=b"a")),
        W(create_request=Cr(key=b"c", start_revision=2**62)),
        W(create_request=Cr(key=b"\xff\x00", range_end=b"\x00", prev_kv=True, fragment=True)),
    ]

    def run(s: Server) -> list[str]:
        done = threading.Event()

        def gen() -> Iterator[pb.WatchRequest]:
            for r in reqs:
                yield r
                time.sleep(0.1)
            done.wait(10)

        got: list[str] = []
        try:
            for resp in s.watch.Watch(gen(), timeout=3):
                got.append(normalize(resp))
        except grpc.RpcError as e:
            got.append(e.code().name)
        finally:
            done.set()
        return got

    before = pair[0].fingerprint()
    p, e = run(pair[0]), run(pair[1])
    assert pair[0].alive()
    assert p == e
    assert pair[0].fingerprint() == before


def test_watch_survives_client_half_close(pair: tuple[Server, Server]) -> None:
    """A client that has sent all its requests (half-closed its side) still gets its events: etcd's
    watch server ends a stream only when the client cancels it or goes away."""
    for s in pair:
        created = threading.Event()
        events: list[bytes] = []
        ended: list[str] = []

        def reader(
            s: Server = s,
            created: threading.Event = created,
            events: list[bytes] = events,
            ended: list[str] = ended,
        ) -> None:
            reqs = iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"halfclose"))])
            try:
                for resp in s.watch.Watch(reqs, timeout=4):
                    if resp.created:
                        created.set()
                    events.extend(ev.kv.value for ev in resp.events)
                ended.append("OK")
            except grpc.RpcError as e:
                ended.append(e.code().name)

        t = threading.Thread(target=reader)
        t.start()
        assert created.wait(3), s.kind
        time.sleep(0.3)
        s.kv.Put(pb.PutRequest(key=b"halfclose", value=b"after half-close"), timeout=5)
        t.join(10)
        assert events == [b"after half-close"], f"{s.kind}: events {events}, stream ended with {ended}"


def test_alarm_of_unknown_type(fresh_etcd: Server, fresh_petcd: Server) -> None:
    """etcd takes ACTIVATE of alarm type 99 and lists it; petcd stopped at apply (ValueError
    naming the enum in a log line) and, restarted, answered every Status with UNKNOWN."""
    etcd = fresh_etcd
    outs = {}
    for s in (etcd, fresh_petcd):
        mid = int(s.mt.Status(pb.StatusRequest(), timeout=5).header.member_id)
        act = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=mid, alarm=99)  # type: ignore[arg-type]
        get = pb.AlarmRequest(action=pb.AlarmRequest.GET)

        def alarms(resp: Any, mid: int = mid) -> str:
            return str(sorted((a.alarm, a.memberID == mid) for a in resp.alarms))

        a = outcome(lambda s=s, act=act: s.mt.Alarm(act, timeout=10), alarms)  # type: ignore[misc]
        time.sleep(0.5)
        assert s.alive(), f"{s.kind} died on an alarm of type 99:\n{s.member.log()[-3000:]}"
        g = outcome(lambda s=s, get=get: s.mt.Alarm(get, timeout=10), alarms)  # type: ignore[misc]
        st = outcome(lambda s=s: s.mt.Status(pb.StatusRequest(), timeout=5), lambda r: "status")  # type: ignore[misc]
        deact = pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=mid, alarm=99)  # type: ignore[arg-type]
        d = outcome(lambda s=s, deact=deact: s.mt.Alarm(deact, timeout=10), alarms)  # type: ignore[misc]
        outs[s.kind] = (a, g, st, d)
    assert outs["petcd"] == outs["etcd"]
    fresh_petcd.member.stop()
    fresh_petcd.member.start(timeout=20)


def test_alarm_of_unknown_action_does_not_crash(fresh_petcd: Server) -> None:
    """etcd v3.6.16 panics on AlarmRequest action 99 (nil pointer in its alarm handler); petcd must
    answer something clean and keep serving."""
    before = fresh_petcd.fingerprint()
    o = outcome(lambda: fresh_petcd.mt.Alarm(pb.AlarmRequest(action=99, alarm=99), timeout=10))  # type: ignore[arg-type]
    assert o[0] == "ok" or o[1] not in ("UNKNOWN", "UNAVAILABLE"), o
    time.sleep(0.3)
    assert fresh_petcd.alive()
    assert fresh_petcd.fingerprint() == before


# -- malformed protobuf -------------------------------------------------------------------------------

_GOOD_PUT = pb.PutRequest(key=b"key", value=b"value" * 10).SerializeToString()
MALFORMED = {
    "truncated": _GOOD_PUT[:-3],
    "varint of 11 bytes": b"\x08" + b"\xff" * 10 + b"\x01",
    "length past the end": b"\x0a\x7f" + b"abc",
    "stray end-group": b"\x0c",
    "unterminated group": b"\x0b",
    "random": bytes(random.Random(1).randrange(256) for _ in range(16)),
}
UNARY = [
    f"/etcdserverpb.{svc.name}/{m.name}"
    for svc in pb.DESCRIPTOR.services_by_name.values()
    if svc.name in ("KV", "Lease", "Cluster", "Maintenance")
    for m in svc.methods
    if not m.client_streaming and not m.server_streaming
]
UNMARSHAL = "grpc: error unmarshalling request: "


def test_malformed_protobuf_gets_etcds_error(pair: tuple[Server, Server]) -> None:
    """etcd answers INTERNAL "grpc: error unmarshalling request: <Go's decoder message>"; petcd must
    answer INTERNAL with the same prefix (the decoder's own words cannot be Go's), never UNKNOWN
    with a Python exception."""
    petcd, etcd = pair
    before = petcd.fingerprint()
    wrong = []
    tried = 0
    for method in UNARY:
        for name, data in MALFORMED.items():
            e = outcome(lambda m=method, d=data: etcd.raw(m)(d, timeout=10))  # type: ignore[misc]
            p = outcome(lambda m=method, d=data: petcd.raw(m)(d, timeout=10))  # type: ignore[misc]
            tried += 1
            if e[0] != "error" or not e[2].startswith(UNMARSHAL):
                continue  # etcd's decoder took it (unknown fields); not a malformed message for Go
            if p[:2] != ("error", "INTERNAL") or not p[2].startswith(UNMARSHAL):
                wrong.append(f"{method} {name}: petcd {p[1:]}, etcd {e[1:]}")
    assert petcd.alive() and etcd.alive()
    assert petcd.fingerprint() == before
    print(f"{tried} malformed requests")
    assert not wrong, f"{len(wrong)} of {tried}, e.g.:\n" + "\n".join(wrong[:8])


def test_malformed_watch_request_gets_etcds_error(pair: tuple[Server, Server]) -> None:
    outs: list[tuple[str, ...]] = []
    for s in pair:
        call: Any = s.channel.stream_stream("/etcdserverpb.Watch/Watch")
        try:
            list(call(iter([b"\xff\xff\xff"]), timeout=5))
            outs.append(("ok",))
        except grpc.RpcError as e:
            outs.append((e.code().name, (e.details() or "").split(":")[0]))
        assert s.alive()
    # etcd: INTERNAL "grpc: failed to unmarshal the received message: unexpected EOF"
    assert outs[0] == ("INTERNAL", "grpc")
    assert outs[1] == outs[0]


@pytest.mark.parametrize("method", ["/etcdserverpb.KV/Nope", "/nope.X/Y", "/etcdserverpb.KV/"])
def test_unknown_method_like_etcd(pair: tuple[Server, Server], method: str) -> None:
    p, e = both(pair, lambda s: s.raw(method)(b"", timeout=5))
    assert e[:2] == ("error", "UNIMPLEMENTED")
    assert p == e


def test_range_stream_probe_like_kube_apiserver(pair: tuple[Server, Server]) -> None:
    """kube-apiserver >= 1.37 calls KV/RangeStream (server streaming) under a require-leader
    context and falls back to paginated ranges only on UNIMPLEMENTED."""
    req = pb.RangeRequest(key=b"a", range_end=b"b").SerializeToString()

    def probe(s: Server) -> Any:
        call: Any = s.channel.unary_stream("/etcdserverpb.KV/RangeStream")
        return list(call(req, timeout=5, metadata=(("hasleader", "true"),)))

    p, e = both(pair, probe)
    assert p == e
    assert e[:2] == ("error", "UNIMPLEMENTED")


# -- at the end --------------------------------------------------------------------------------------


def test_same_data_as_etcd_at_the_end(pair: tuple[Server, Server]) -> None:
    """Everything above wrote the same things into both: the same revision and HashKV."""
    petcd, etcd = pair
    assert petcd.alive() and etcd.alive()
    assert petcd.fingerprint() == etcd.fingerprint()
