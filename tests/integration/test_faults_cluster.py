"""Partitions and leader loss of a 3-member petcd cluster, set through the members' fault
surfaces (the partition is in petcd's peer transport: no proxy in between), with the same
outcomes as the proxy-cut network of tests/integration/test_cluster_faults.py:

- leader loss: the leader cut off, the others elect a new one and keep taking writes; the old
  one steps down (CheckQuorum), refuses writes and linearizable reads; healed, it follows;
- a follower cut off falls behind and catches up once healed, without disturbing the leader;
- a partition with a ttl heals by itself; dropped messages are counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from petcd_harness.faults import Faults
from petcd_harness.raft_cluster import Cluster
from petcd_harness.wait import wait_until
from tests.harness.procs import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, Faults]]:
    c = Cluster("petcd", 3, tmp_path)
    urls = []
    for m in c.members:
        port = free_port()
        m.extra = (*m.extra, f"--listen-faults-urls=http://127.0.0.1:{port}")
        urls.append(f"http://127.0.0.1:{port}")
    with c:
        yield c, Faults(urls)


def fails(fn: object, timeout: float = 2.0) -> str:
    try:
        result = fn(timeout)  # type: ignore[operator]
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"
    raise AssertionError(f"expected a failure, got {result}")


def test_leader_loss_then_heal(cluster: tuple[Cluster, Faults]) -> None:
    c, faults = cluster
    old = c.wait_leader()
    old.put("k", "before")
    majority = c.others(old)
    assert faults.leader().info()["name"] == old.name
    with faults.leader_loss() as loss:
        new = c.wait_leader(among=majority, timeout=20)
        assert new is not old
        for m in majority:
            m.put("k", f"during-{m.name}")
        st = wait_until(
            lambda: (s := old.status()).leader == 0 and s, 10, what="the old leader stepping down"
        )
        assert list(st.errors) == ["etcdserver: no leader"]
        fails(lambda t: old.put("k", "lost", timeout=t))
        fails(lambda t: old.get("k", timeout=t))
        assert [kv.value for kv in old.get("k", serializable=True).kvs] == [b"before"]
        assert loss.injected > 0  # messages dropped
    # clear() healed and waited until the old leader follows
    assert c.wait_leader(timeout=20) in majority
    _, hashes = c.wait_converged(timeout=60)
    assert len(set(hashes.values())) == 1
    assert [kv.value for kv in old.get("k").kvs] == [f"during-{majority[1].name}".encode()]


def test_partitioned_follower_catches_up(cluster: tuple[Cluster, Faults]) -> None:
    c, faults = cluster
    leader = c.wait_leader()
    term = leader.status().raftTerm
    follower, other = c.others(leader)
    with faults.partition(follower.name):
        last = 0
        for i in range(50):
            last = (leader if i % 2 else other).put(f"f/{i}", "v")
        assert c.leader(among=[leader, other]) is leader and leader.status().raftTerm == term
        assert follower.get_prefix("f/", serializable=True).count == 0
        fails(lambda t: follower.get("f/49", timeout=t))
    wait_until(
        lambda: [kv.mod_revision for kv in follower.get("f/49", serializable=True).kvs] == [last],
        20,
        what="the follower catching up",
    )
    assert c.wait_leader() is leader and leader.status().raftTerm == term, "healing disrupted the leader"


def test_partition_heals_after_its_ttl(cluster: tuple[Cluster, Faults]) -> None:
    c, faults = cluster
    leader = c.wait_leader()
    follower = c.others(leader)[0]
    f = faults.partition(follower.name, peers=[leader.name], ttl=1.0)
    wait_until(lambda: not f.active, 20, what="the partition expiring")
    leader.put("after", "v")
    wait_until(
        lambda: follower.get("after", serializable=True).count == 1, 20, what="the follower hearing again"
    )
    assert f.states()[0]["ended"] == "expired"
