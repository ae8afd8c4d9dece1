"""Faults as values (server/faults/rules.py): what a request may set, scoping and ending."""

from __future__ import annotations

from typing import Any

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.faults.inject import request_ranges
from server.faults.rules import BadFaultError, Faults, FaultSpec, prefix_end


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "a fault is a JSON object"),
        ({}, "unknown fault kind None; known: conflict, latency, error, partition, watch_cut"),
        ({"kind": "meteor"}, "unknown fault kind 'meteor'"),
        ({"kind": "conflict"}, "conflict: a non-empty prefix or key is required"),
        ({"kind": "conflict", "prefix": ""}, "conflict: a non-empty prefix or key is required"),
        ({"kind": "conflict", "prefix": "/a", "key": "/a/b"}, "conflict: give a prefix or a key, not both"),
        ({"kind": "latency", "delay_ms": 5, "key": ""}, "latency: a non-empty prefix or key is required"),
        ({"kind": "conflict", "prefix": 7}, "prefix must be a string, got 7"),
        ({"kind": "conflict", "prefix": "/a", "methods": ["Txn"]}, "conflict: unknown field 'methods'"),
        ({"kind": "conflict", "prefix": "/a", "count": 0}, "count must be an integer >= 1, got 0"),
        ({"kind": "conflict", "prefix": "/a", "count": 1.5}, "count must be an integer >= 1"),
        ({"kind": "conflict", "prefix": "/a", "count": True}, "count must be an integer >= 1"),
        ({"kind": "conflict", "prefix": "/a", "probability": 0}, "probability must be in (0, 1]"),
        ({"kind": "conflict", "prefix": "/a", "probability": 1.5}, "probability must be in (0, 1]"),
        ({"kind": "conflict", "prefix": "/a", "probability": "half"}, "probability must be a number"),
        ({"kind": "conflict", "prefix": "/a", "ttl": -1}, "ttl must be > 0 and at most a day"),
        ({"kind": "conflict", "prefix": "/a", "ttl": 1e9}, "ttl must be > 0 and at most a day"),
        ({"kind": "latency"}, "latency: delay_ms is required"),
        ({"kind": "latency", "delay_ms": 0}, "delay_ms must be > 0"),
        (
            {"kind": "latency", "delay_ms": 10, "methods": ["Watch"]},
            "unknown method 'Watch'; known: Range, Put",
        ),
        ({"kind": "latency", "delay_ms": 10, "methods": []}, "methods must be a non-empty list"),
        ({"kind": "error"}, "error: error is required"),
        (
            {"kind": "error", "error": "disk on fire"},
            "unknown error 'disk on fire'; known: timeout, leader_changed",
        ),
        ({"kind": "error", "error": "timeout", "delay_ms": 5}, "error: unknown field 'delay_ms'"),
        ({"kind": "partition", "prefix": "/a"}, "partition: unknown field 'prefix'"),
        ({"kind": "partition", "peers": "all"}, "peers must be a list of member IDs"),
        ({"kind": "partition", "peers": ["xyz"]}, "peer 'xyz' is not a member ID"),
        ({"kind": "watch_cut"}, "watch_cut: a non-empty prefix or key is required"),
        ({"kind": "watch_cut", "prefix": "/a", "count": 2}, "watch_cut: unknown field 'count'"),
    ],
)
def test_bad_specs(doc: Any, message: str) -> None:
    with pytest.raises(BadFaultError) as e:
        FaultSpec.from_json(doc)
    assert message in str(e.value)


def test_spec_round_trip() -> None:
    spec = FaultSpec.from_json(
        {
            "kind": "error",
            "error": "too_many_requests",
            "prefix": "/r/",
            "methods": "Range",
            "count": 2,
            "ttl": 30,
        }
    )
    assert spec.methods == {"Range"} and spec.count == 2 and spec.ttl == 30.0
    assert spec.to_json() == {
        "kind": "error",
        "prefix": "/r/",
        "methods": ["Range"],
        "count": 2,
        "ttl": 30.0,
        "error": "too_many_requests",
        "code": "RESOURCE_EXHAUSTED",
        "message": "etcdserver: too many requests",
    }
    assert FaultSpec.from_json({"kind": "conflict", "prefix": "/a"}).methods == {"Txn"}
    assert FaultSpec.from_json({"kind": "partition", "peers": ["ff", "A"]}).peers == {0xFF, 0xA}
    assert FaultSpec.from_json({"kind": "latency", "delay_ms": 250}).delay == 0.25


@pytest.mark.parametrize(
    ("prefix", "end"), [(b"/a/", b"/a0"), (b"a\xff", b"b"), (b"\xff\xff", b""), (b"", b"")]
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def faults_at(clock: list[float], rolls: list[float] | None = None) -> Faults:
    it = iter(rolls or [])
    return Faults(clock=lambda: clock[0], rng=lambda: next(it))


def spec(**doc: Any) -> FaultSpec:
    return FaultSpec.from_json(doc)


RANGE_ALL = pb.RangeRequest(key=b"/r/configmaps/", range_end=b"/r/configmaps0")
RANGE_FROM = pb.RangeRequest(key=b"/r/", range_end=b"\x00")
PUT_ONE = pb.PutRequest(key=b"/r/configmaps/ns1/a")
TXN = pb.TxnRequest(
    compare=[pb.Compare(key=b"/r/pods/ns1/p", target=pb.Compare.MOD, mod_revision=5)],
    success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/r/pods/ns1/p"))],
    failure=[
        pb.RequestOp(request_txn=pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/x"))]))
    ],
)


@pytest.mark.parametrize(
    ("prefix", "method", "req", "hit"),
    [
        ("/r/configmaps/ns1/", "Put", PUT_ONE, True),
        ("/r/configmaps/ns2/", "Put", PUT_ONE, False),
        # a list of every namespace meets a namespace's prefix
        ("/r/configmaps/ns1/", "Range", RANGE_ALL, True),
        ("/r/secrets/", "Range", RANGE_ALL, False),
        ("/r/zzz/", "Range", RANGE_FROM, True),
        ("/q/", "Range", RANGE_FROM, False),
        ("/r/pods/", "Txn", TXN, True),
        ("/x", "Txn", TXN, True),  # a key of a nested txn
        ("/r/configmaps/", "Txn", TXN, False),
        ("", "Compact", pb.CompactionRequest(revision=3), True),
        ("/r/", "Compact", pb.CompactionRequest(revision=3), False),
    ],
)
def test_matching_by_prefix(prefix: str, method: str, req: Any, hit: bool) -> None:
    f = faults_at([0.0])
    fault = f.add(spec(kind="latency", delay_ms=1, prefix=prefix))
    assert (f.matching(method, request_ranges(method, req)) == [fault]) is hit


@pytest.mark.parametrize(
    ("key", "method", "req", "hit"),
    [
        ("/r/configmaps/ns1/a", "Put", PUT_ONE, True),
        ("/r/configmaps/ns1/", "Put", PUT_ONE, False),  # a key is not a prefix
        ("/r/configmaps/ns1/a", "Range", RANGE_ALL, True),
        ("/r/configmaps/ns1/ab", "Range", pb.RangeRequest(key=b"/r/configmaps/ns1/a"), False),
    ],
)
def test_matching_one_key(key: str, method: str, req: Any, hit: bool) -> None:
    f = faults_at([0.0])
    fault = f.add(spec(kind="error", error="timeout", key=key))
    assert fault.spec.to_json()["key"] == key
    assert (f.matching(method, request_ranges(method, req)) == [fault]) is hit


def test_matching_by_method() -> None:
    f = faults_at([0.0])
    fault = f.add(spec(kind="error", error="timeout", methods=["Txn", "Put"]))
    assert f.matching("Put", request_ranges("Put", PUT_ONE)) == [fault]
    assert f.matching("Range", request_ranges("Range", RANGE_ALL)) == []


def test_count_claims_and_refunds() -> None:
    f = faults_at([0.0])
    fault = f.add(spec(kind="conflict", prefix="/a", count=2))
    assert f.claim(fault) and f.claim(fault)
    assert not f.claim(fault)  # two in flight: the count is spoken for
    f.refund(fault)
    assert f.claim(fault)
    f.done(fault)
    f.done(fault)
    assert fault.injected == 2 and fault.ended == "count reached"
    assert f.kv == [] and f.injected["conflict"] == 2
    assert not f.claim(fault)
    assert fault.to_json(0.0)["remaining"] == 0


def test_probability_and_expiry() -> None:
    clock = [100.0]
    f = faults_at(clock, rolls=[0.1, 0.9, 0.2])
    fault = f.add(spec(kind="error", error="timeout", probability=0.5, ttl=10))
    assert fault.to_json(clock[0])["expires_in"] == 10.0
    assert f.claim(fault)
    assert not f.claim(fault)
    clock[0] = 105.0
    assert f.claim(fault)
    clock[0] = 110.0
    assert not f.claim(fault)
    assert fault.ended == "expired" and f.kv == []


def test_listed_until_cleared() -> None:
    clock = [0.0]
    f = faults_at(clock)
    a = f.add(spec(kind="latency", delay_ms=5, ttl=1))
    b = f.add(spec(kind="partition"))
    changes: list[int] = []
    f.on_change = lambda: changes.append(len(f.partitions))
    clock[0] = 2.0
    assert [x.id for x in f.listing()] == [a.id, b.id]
    assert a.ended == "expired" and not b.ended
    assert f.remove(b.id) is b and b.ended == "cleared" and changes == [0]
    assert f.get(b.id) is None
    assert f.clear() == 1 and f.listing() == []
