"""The gRPC API of a member running in this process (tests/framework's in-process runner): the
services, the interceptor and the server together, in a fraction of a second per member.

We test these aspects:
- headers carry the member's own cluster and member ID (those Status reports) and the term;
- a watch sees puts and deletes in order, with prev_kv when asked, and a cancel ends it;
- leases: grant, keep-alive, time-to-live with keys, revoke deleting the keys (one revision);
- a linearizable read after a write sees it; a serializable read is served locally;
- hasleader=true passes on a member with a leader;
- the member's own state, read on its loop, agrees with what the API answered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from tests.framework.client import Client
from tests.framework.member import InProcessMember, connect


@pytest.fixture
def member(tmp_path: Path) -> Iterator[InProcessMember]:
    with InProcessMember(tmp_path, "--unsafe-no-fsync") as m:
        yield m


@pytest.fixture
def client(member: InProcessMember) -> Iterator[Client]:
    with connect(member) as c:
        yield c


def test_headers_carry_the_members_identity(member: InProcessMember, client: Client) -> None:
    st = client.status()
    put = client.put("k", "v")
    assert (put.header.cluster_id, put.header.member_id) == (st.header.cluster_id, st.header.member_id)
    assert put.header.member_id == member.server.member_id
    assert put.header.raft_term == st.raftTerm >= 1
    assert put.header.revision == 2
    assert st.leader == member.server.member_id


def test_a_watch_sees_changes_in_order(client: Client) -> None:
    client.put("w/a", "0")
    responses: list[pb.WatchResponse] = []
    created = threading.Event()
    enough = threading.Event()
    cancel = threading.Event()

    def requests() -> Iterator[pb.WatchRequest]:
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w/", range_end=b"w0", prev_kv=True))
        cancel.wait(10)
        yield pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=0))

    call = client.watch.Watch(requests(), timeout=20)

    def read() -> None:
        for r in call:
            responses.append(r)
            if r.created:
                created.set()
            if sum(len(x.events) for x in responses) >= 3:
                enough.set()
            if r.canceled:
                return

    reader = threading.Thread(target=read)
    reader.start()
    assert created.wait(10)
    client.put("w/a", "1")
    client.put("w/b", "2")
    client.delete("w/a")
    assert enough.wait(10)
    cancel.set()
    reader.join(10)
    events = [ev for r in responses for ev in r.events]
    assert [(ev.type, ev.kv.key, ev.kv.value, ev.prev_kv.value) for ev in events] == [
        (0, b"w/a", b"1", b"0"),
        (0, b"w/b", b"2", b""),
        (1, b"w/a", b"", b"1"),
    ]
    assert responses[-1].canceled


def test_leases(member: InProcessMember, client: Client) -> None:
    assert client.grant(30, 0x77).ID == 0x77
    client.put("l/1", "v", lease=0x77)
    client.put("l/2", "v", lease=0x77)
    assert client.keep_alive_once(0x77).TTL == 30
    ttl = client.time_to_live(0x77, keys=True)
    assert (ttl.grantedTTL, sorted(ttl.keys)) == (30, [b"l/1", b"l/2"])
    assert 0 < ttl.TTL <= 30
    assert [le.ID for le in client.leases().leases] == [0x77]
    rev = client.get("l/1").header.revision
    revoked = client.revoke(0x77)
    assert revoked.header.revision == rev + 1
    assert client.get("l/", range_end=b"l0").count == 0
    assert client.keep_alive_once(0x77).TTL == 0
    assert client.time_to_live(0x77).TTL == -1
    assert member.call(lambda: member.server.lessor.lookup(0x77)) is None


def test_reads(member: InProcessMember, client: Client) -> None:
    client.put("r", "1")
    assert client.get("r").kvs[0].value == b"1"
    assert client.get("r", serializable=True).kvs[0].value == b"1"
    applied = member.call(lambda: member.server.applied_index)
    assert client.status().raftAppliedIndex == applied


def test_require_leader(client: Client) -> None:
    resp = client.kv.Range(pb.RangeRequest(key=b"k"), metadata=(("hasleader", "true"),), timeout=5)
    assert resp.header.revision == 1
