"""Network faults between the members of a 3-member cluster, through the partitionable peer
proxy (tests/harness/proxy.py). The same tests run against etcd v3.6, which keeps them honest.

We test these aspects:
- the leader partitioned from both followers: the majority elects a new leader and keeps taking
  writes; the old leader steps down (CheckQuorum), its writes and linearizable reads fail while
  its serializable reads still answer (with old data); healed, it rejoins and converges;
- one follower partitioned: writes continue, its linearizable reads fail and its serializable
  reads fall behind; healed, it catches up;
- one link (leader <-> follower) cut: PreVote and CheckQuorum keep the leader and the term;
- a write sent to a member that has no leader is held until one is known (as etcd does), not
  refused on the spot;
- concurrent writers to random members while leaders and followers are partitioned, links cut
  and a member killed: no acknowledged write is lost (every acknowledged key is readable after
  healing, with its revision, on every member), revisions stay dense, hashkv converges.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.framework.wait import wait_until
from tests.harness.cluster import Cluster, ClusterMember
from tests.harness.history import CHANNEL_OPTIONS

pytestmark = pytest.mark.integration

KINDS = ["petcd", "etcd"]


@pytest.fixture(params=KINDS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(request.param, 3, tmp_path, proxied=True) as c:
        yield c


def fails(fn: object, timeout: float = 2.0) -> str:
    """Call fn (a gRPC call taking timeout=); it must fail. Returns the error."""
    try:
        result = fn(timeout)  # type: ignore[operator]
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"
    raise AssertionError(f"expected a failure, got {result}")


def assert_converged(c: Cluster) -> None:
    rev, hashes = c.wait_converged(timeout=60)
    assert len(set(hashes.values())) == 1 and len(hashes) == len(c.running), (rev, hashes)


def test_partitioned_leader_steps_down_and_majority_continues(cluster: Cluster) -> None:
    c = cluster
    old = c.wait_leader()
    term = old.status().raftTerm
    old.put("k", "before")
    majority = c.others(old)
    c.net.isolate(old.name)  # type: ignore[union-attr]

    new = c.wait_leader(among=majority, timeout=20)
    assert new is not old
    # etcd reports the term of the last applied entry: poll until the new leader applied one
    wait_until(lambda: new.status().raftTerm > term, 10, what="the new leader's term")
    for m in majority:
        m.put("k", f"during-{m.name}")
        assert m.ctl().ok("put", f"on/{m.name}", "v") == "OK\n"

    # CheckQuorum: the old leader steps down within an election timeout or so
    st = wait_until(lambda: (s := old.status()).leader == 0 and s, 10, what="the old leader stepping down")
    assert list(st.errors) == ["etcdserver: no leader"]
    fails(lambda t: old.put("k", "lost", timeout=t))
    fails(lambda t: old.get("k", timeout=t))
    assert [kv.value for kv in old.get("k", serializable=True).kvs] == [b"before"]

    c.net.heal()  # type: ignore[union-attr]
    assert c.wait_leader(timeout=20) in majority, "a stale member took the leadership back"
    assert_converged(c)
    assert [kv.value for kv in old.get("k", serializable=True).kvs] == [f"during-{majority[1].name}".encode()]
    assert old.get("on/" + majority[0].name).count == 1


def test_partitioned_follower_falls_behind_then_catches_up(cluster: Cluster) -> None:
    c = cluster
    leader = c.wait_leader()
    term = leader.status().raftTerm
    follower, other = c.others(leader)
    leader.put("f/0", "v")
    wait_until(lambda: follower.get("f/0", serializable=True).count == 1, 10)
    c.net.isolate(follower.name)  # type: ignore[union-attr]
    last = 0
    for i in range(1, 101):
        last = (leader if i % 2 else other).put(f"f/{i}", "v")
    assert c.leader(among=[leader, other]) is leader and leader.status().raftTerm == term
    assert follower.get_prefix("f/", serializable=True).count < 101, "the partitioned follower got the writes"
    fails(lambda t: follower.get("f/100", timeout=t))  # linearizable: needs the leader

    c.net.heal()  # type: ignore[union-attr]
    wait_until(
        lambda: [kv.mod_revision for kv in follower.get("f/100", serializable=True).kvs] == [last],
        20,
        what="the follower catching up",
    )
    assert follower.get_prefix("f/", serializable=True).count == 101
    assert c.wait_leader() is leader and leader.status().raftTerm == term, "healing disrupted the leader"
    assert_converged(c)


def test_cut_link_keeps_the_leader(cluster: Cluster) -> None:
    c = cluster
    leader = c.wait_leader()
    term = leader.status().raftTerm
    cut, bridge = c.others(leader)
    c.net.cut(leader.name, cut.name)  # type: ignore[union-attr]
    time.sleep(2.0)  # four election timeouts: `cut` campaigns (PreVote) and must not win or disturb
    assert c.leader(among=[leader, bridge]) is leader
    assert leader.status().raftTerm == term, "PreVote/CheckQuorum should keep the term"
    for i in range(20):
        (leader if i % 2 else bridge).put(f"cut/{i}", "v")
    c.net.heal()  # type: ignore[union-attr]
    assert_converged(c)
    assert c.wait_leader() is leader and leader.status().raftTerm == term
    assert cut.get_prefix("cut/", serializable=True).count == 20


def test_write_on_a_member_without_leader_is_held_not_refused(cluster: Cluster) -> None:
    """etcd holds a proposal while its member has no leader (raft takes proposals only with a
    leader) and forwards it once one is known, within the request timeout; it does not refuse it
    on the spot. (Whether the held write then succeeds depends on the race between the member
    learning of the leader and its connection to the leader coming back: usually it does.)"""
    c = cluster
    leader = c.wait_leader()
    follower = c.others(leader)[0]
    c.net.isolate(follower.name)  # type: ignore[union-attr]
    wait_until(lambda: follower.status().leader == 0, 10, what="the isolated follower losing its leader")
    healer = threading.Timer(1.0, c.net.heal)  # type: ignore[union-attr]
    healer.start()
    started = time.monotonic()
    try:
        rev = follower.put("held", "v", timeout=10)
    except grpc.RpcError as e:
        elapsed = time.monotonic() - started
        assert elapsed > 1.0, (
            f"the write was refused after {elapsed:.2f}s with {e.code().name}: {e.details()}; "
            "etcd holds it until a leader is known (the partition healed after 1 s)"
        )
        rev = 0
    finally:
        healer.join()
    if rev:
        assert time.monotonic() - started >= 0.9
        assert [kv.mod_revision for kv in leader.get("held").kvs] == [rev]
    assert_converged(c)


# -- concurrent writers ---------------------------------------------------------------------------


class Writers:
    """Threads putting unique keys to random members; acked[key] = revision."""

    def __init__(self, members: list[ClusterMember], n: int = 6, seed: int = 1) -> None:
        self.urls = [m.client_url.split("://", 1)[1] for m in members]
        self.acked: dict[bytes, int] = {}
        self.attempted: set[bytes] = set()
        self.failures = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i, seed), daemon=True) for i in range(n)]

    def run(self, wid: int, seed: int) -> None:
        rng = random.Random(seed * 100 + wid)
        channels = [grpc.insecure_channel(u, options=CHANNEL_OPTIONS) for u in self.urls]
        stubs = [pb_grpc.KVStub(ch) for ch in channels]
        i = 0
        while not self.stop.is_set():
            key = f"w/{wid}/{i:06d}".encode()
            i += 1
            with self.lock:
                self.attempted.add(key)
            try:
                resp = stubs[rng.randrange(len(stubs))].Put(
                    pb.PutRequest(key=key, value=b"v" * 32), timeout=2
                )
            except grpc.RpcError:
                with self.lock:
                    self.failures += 1
                time.sleep(0.02)
                continue
            with self.lock:
                self.acked[key] = resp.header.revision
        for ch in channels:
            ch.close()

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_no_acknowledged_write_lost_under_partitions(cluster: Cluster) -> None:
    c = cluster
    net = c.net
    assert net is not None
    with Writers(c.members) as w:
        time.sleep(1.0)
        leader = c.wait_leader()
        net.isolate(leader.name)
        c.wait_leader(among=c.others(leader), timeout=20)
        time.sleep(1.5)
        net.heal()
        time.sleep(1.0)

        leader = c.wait_leader(timeout=20)
        follower = c.others(leader)[0]
        net.isolate(follower.name)
        time.sleep(2.0)
        net.heal()
        time.sleep(1.0)

        leader = c.wait_leader(timeout=20)
        a, b = c.others(leader)
        net.cut(leader.name, a.name)
        net.cut(a.name, b.name)  # a is cut off from everyone, link by link
        time.sleep(2.0)
        net.heal()
        time.sleep(1.0)

        leader = c.wait_leader(timeout=20)
        victim = c.others(leader)[1]
        victim.kill()
        net.cut(*(m.name for m in c.others(victim)))  # and the survivors lose each other: no quorum
        time.sleep(1.0)
        net.heal()
        victim.start()
        time.sleep(1.0)
    assert len(w.acked) > 200, f"only {len(w.acked)} writes acknowledged ({w.failures} failed)"
    assert_converged(c)
    leader = c.wait_leader()
    resp = leader.get_prefix("w/")
    found = {kv.key: kv.mod_revision for kv in resp.kvs}
    lost = {k: r for k, r in w.acked.items() if found.get(k) != r}
    assert not lost, f"{len(lost)} acknowledged writes lost or changed, e.g. {sorted(lost.items())[:5]}"
    assert set(found) <= w.attempted, "keys nobody wrote"
    assert sorted(found.values()) == list(range(2, resp.header.revision + 1)), "revisions are not dense"
    for m in c.members:  # every member has them all
        local = m.get_prefix("w/", serializable=True)
        assert {kv.key: kv.mod_revision for kv in local.kvs} == found, f"{m.name} differs"
