"""Range and Txn semantics over MVCC (etcd's etcdserver/txn tests), on the state machine.

We test these aspects:
- compares: each target and result against present and absent keys (an absent key compares as
  the zero KeyValue, but never equal on VALUE), and over ranges (every key must match);
- nested txns take the branch their own compares choose; their responses have an empty header;
- a txn's ops see the writes of the ops before them; the response revision is the new one
  (or the current one when nothing was written);
- refusals before anything is written: a range at a future or compacted revision, a put with
  ignore_value on an absent key or with an unknown lease (etcd's checkPut order);
- ranges: limit and more, count_only, keys_only, sort by every target, revision filters.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.etcdserver import txn
from server.etcdserver.errors import KeyNotFoundError
from server.lease.lessor import LeaseNotFoundError
from server.mvcc.kv import CompactedError, FutureRevError
from tests.framework.state_machine import StateMachine

C = pb.Compare


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[StateMachine]:
    s = StateMachine(tmp_path)
    s.ok(lease_grant=pb.LeaseGrantRequest(ID=9, TTL=60))
    s.ok(put=pb.PutRequest(key=b"a", value=b"1"))  # rev 2
    s.ok(put=pb.PutRequest(key=b"a", value=b"2", lease=9))  # rev 3: version 2
    s.ok(put=pb.PutRequest(key=b"b", value=b"x"))  # rev 4
    yield s
    s.close()


def run(sm: StateMachine, **kw: Any) -> pb.TxnResponse:
    return txn.txn(sm.kv, sm.lessor, pb.TxnRequest(**kw))


def get(key: bytes, **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **kw))


def put(key: bytes, value: bytes = b"v", **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


@pytest.mark.parametrize(
    ("compare", "ok"),
    [
        (C(key=b"a", target=C.VALUE, result=C.EQUAL, value=b"2"), True),
        (C(key=b"a", target=C.VALUE, result=C.GREATER, value=b"1"), True),
        (C(key=b"a", target=C.VERSION, result=C.EQUAL, version=2), True),
        (C(key=b"a", target=C.CREATE, result=C.EQUAL, create_revision=2), True),
        (C(key=b"a", target=C.MOD, result=C.LESS, mod_revision=4), True),
        (C(key=b"a", target=C.MOD, result=C.NOT_EQUAL, mod_revision=3), False),
        (C(key=b"a", target=C.LEASE, result=C.EQUAL, lease=9), True),
        # an absent key is the zero KeyValue...
        (C(key=b"zz", target=C.VERSION, result=C.EQUAL, version=0), True),
        (C(key=b"zz", target=C.CREATE, result=C.EQUAL, create_revision=0), True),
        (C(key=b"zz", target=C.LEASE, result=C.EQUAL, lease=0), True),
        # ...but never equal on VALUE, not even to b""
        (C(key=b"zz", target=C.VALUE, result=C.EQUAL, value=b""), False),
        (C(key=b"zz", target=C.VALUE, result=C.NOT_EQUAL, value=b"x"), False),
        # a range: every key must match
        (C(key=b"a", range_end=b"c", target=C.VERSION, result=C.GREATER, version=0), True),
        (C(key=b"a", range_end=b"c", target=C.VERSION, result=C.EQUAL, version=2), False),
    ],
)
def test_compares(sm: StateMachine, compare: pb.Compare, ok: bool) -> None:
    assert run(sm, compare=[compare]).succeeded is ok


def test_nested_txns_take_their_own_branches(sm: StateMachine) -> None:
    inner = pb.TxnRequest(
        compare=[C(key=b"b", target=C.VALUE, result=C.EQUAL, value=b"nope")],
        success=[put(b"inner-then")],
        failure=[put(b"inner-else"), get(b"inner-else")],
    )
    resp = run(
        sm,
        compare=[C(key=b"a", target=C.VERSION, result=C.EQUAL, version=2)],
        success=[pb.RequestOp(request_txn=inner)],
    )
    assert resp.succeeded
    sub = resp.responses[0].response_txn
    assert not sub.succeeded
    assert sub.HasField("header") and sub.header.revision == 0
    assert [kv.key for kv in sub.responses[1].response_range.kvs] == [b"inner-else"]
    assert sm.ok(range=pb.RangeRequest(key=b"inner-then")).count == 0


def test_ops_see_earlier_writes_and_the_revision_is_the_new_one(sm: StateMachine) -> None:
    resp = run(
        sm,
        success=[
            put(b"n", b"1"),
            get(b"n"),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"b")),
            get(b"b"),
        ],
    )
    assert resp.header.revision == 5
    assert [kv.value for kv in resp.responses[1].response_range.kvs] == [b"1"]
    assert resp.responses[2].response_delete_range.deleted == 1
    assert resp.responses[3].response_range.count == 0
    assert run(sm, success=[get(b"n")]).header.revision == 5, "read-only: the current revision"


@pytest.mark.parametrize(
    ("op", "error"),
    [
        (get(b"a", revision=100), FutureRevError),
        (put(b"absent", ignore_value=True), KeyNotFoundError),
        (put(b"k", lease=404), LeaseNotFoundError),
        # etcd's checkPut: the key before the lease
        (put(b"absent", ignore_value=True, lease=404), KeyNotFoundError),
    ],
)
def test_refusals_write_nothing(sm: StateMachine, op: pb.RequestOp, error: type[Exception]) -> None:
    rev = sm.kv.rev()
    with pytest.raises(error):
        run(sm, success=[put(b"first"), op])
    assert sm.kv.rev() == rev


def test_a_range_below_the_compaction_is_refused(sm: StateMachine) -> None:
    job = sm.ok(compaction=pb.CompactionRequest(revision=3))
    assert job is not None
    with pytest.raises(CompactedError):
        run(sm, success=[put(b"first"), get(b"a", revision=2)])
    assert run(sm, success=[get(b"a", revision=3)]).responses[0].response_range.count == 1


@pytest.mark.parametrize(
    ("request_", "keys", "more", "count"),
    [
        (pb.RangeRequest(key=b"a", range_end=b"z", limit=1), [b"a"], True, 2),
        (pb.RangeRequest(key=b"a", range_end=b"z", limit=2), [b"a", b"b"], False, 2),
        (pb.RangeRequest(key=b"a", range_end=b"z", count_only=True), [], False, 2),
        (
            pb.RangeRequest(key=b"\x00", range_end=b"\x00", sort_order=pb.RangeRequest.DESCEND),
            [b"b", b"a"],
            False,
            2,
        ),
        (
            pb.RangeRequest(
                key=b"a",
                range_end=b"z",
                sort_target=pb.RangeRequest.VALUE,
                sort_order=pb.RangeRequest.DESCEND,
            ),
            [b"b", b"a"],
            False,
            2,
        ),
        (pb.RangeRequest(key=b"a", range_end=b"z", sort_target=pb.RangeRequest.MOD), [b"a", b"b"], False, 2),
        (pb.RangeRequest(key=b"a", range_end=b"z", min_mod_revision=4), [b"b"], False, 2),
        (pb.RangeRequest(key=b"a", range_end=b"z", max_create_revision=2), [b"a"], False, 2),
        (pb.RangeRequest(key=b"a", revision=2), [b"a"], False, 1),
    ],
)
def test_ranges(
    sm: StateMachine, request_: pb.RangeRequest, keys: list[bytes], more: bool, count: int
) -> None:
    resp = txn.range_(sm.kv.read(), request_)
    assert ([kv.key for kv in resp.kvs], resp.more, resp.count) == (keys, more, count)
    assert resp.header.revision == 4


def test_keys_only_and_old_values(sm: StateMachine) -> None:
    (kv,) = txn.range_(sm.kv.read(), pb.RangeRequest(key=b"a", keys_only=True)).kvs
    assert (kv.key, kv.value, kv.version) == (b"a", b"", 2)
    (old,) = txn.range_(sm.kv.read(), pb.RangeRequest(key=b"a", revision=2)).kvs
    assert (old.value, old.version, old.lease) == (b"1", 1, 0)
