"""The real etcdctl against a 3-member petcd cluster (and, where the outcome is deterministic, the
same commands against a 3-member etcd v3.6 cluster, compared line by line).

We test these aspects:
- member list: names, peer and client URLs, learner flags, IDs derived as etcd derives them;
- endpoint status --cluster: one leader, one raft term, equal raft/applied indexes;
- a write on one member is read linearizably on every other one; serializable reads are served
  locally and catch up;
- kill -9 of the leader: a new leader is elected, writes continue on the survivors, and the old
  leader, restarted after more than snapshot-catchup-entries writes, catches up from a snapshot;
- member add (a voter; a learner, then promote) / remove with the new member catching up, and
  a removed member's process exiting (a removed follower as well as a removed leader);
- move-leader to a follower;
- membership and move-leader errors ("etcdserver: ..."), also with a member down, as etcd gives
  them;
- endpoint hashkv: equal on every member at the same revision, and equal to etcd's for the same
  writes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.etcdserver.membership import compute_cluster_id, compute_member_id
from tests.framework.wait import wait_until
from tests.harness.cluster import FAST_ELECTIONS, TOKEN, Cluster, ClusterMember

pytestmark = pytest.mark.integration

SNAPSHOTS = ("--snapshot-count=100", "--snapshot-catchup-entries=50")
# what a member logs when it installs a snapshot sent by the leader
SNAPSHOT_APPLIED = {"petcd": "applied snapshot from the leader", "etcd": "applied incoming Raft snapshot"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster("petcd", 3, tmp_path_factory.mktemp("petcd3")) as c:
        yield c


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster("etcd", 3, tmp_path_factory.mktemp("etcd3")) as c:
        yield c


def status_all(c: Cluster) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(c.ctl().ok("endpoint", "status", "--cluster", "-w", "json"))
    return out


def assert_hashkv_equal(c: Cluster) -> int:
    """Every member's `endpoint hashkv` at the same revision is the same; returns the hash."""
    rev, _ = c.wait_converged()
    out = json.loads(c.ctl().ok("endpoint", "hashkv", "--cluster", f"--rev={rev}", "-w", "json"))
    assert len(out) == len(c.running)
    hashes = {e["Endpoint"]: (e["HashKV"]["hash"], e["HashKV"]["hash_revision"]) for e in out}
    assert len(set(hashes.values())) == 1, f"hashkv differs between members at revision {rev}: {hashes}"
    return int(out[0]["HashKV"]["hash"])


# -- the shared cluster: non-destructive checks ---------------------------------------------------


def test_member_list(cluster: Cluster) -> None:
    ids = {m.name: compute_member_id([m.advertise_peer_url], TOKEN) for m in cluster.members}
    for m in cluster.members:
        assert m.member_id == ids[m.name], "member IDs are derived from peer URLs and token as etcd does"
        doc = json.loads(m.ctl().ok("member", "list", "-w", "json"))
        assert doc["header"]["cluster_id"] == compute_cluster_id(list(ids.values()))
        got = {
            x["name"]: (x["ID"], x["peerURLs"], x["clientURLs"], x.get("isLearner", False))
            for x in doc["members"]
        }
        assert got == {
            x.name: (x.member_id, [x.advertise_peer_url], [x.client_url], False) for x in cluster.members
        }
        lines = sorted(m.ctl().ok("member", "list").splitlines())
        assert lines == sorted(
            f"{x.hex_id}, started, {x.name}, {x.advertise_peer_url}, {x.client_url}, false"
            for x in cluster.members
        )


def test_endpoint_status_cluster(cluster: Cluster) -> None:
    cluster.ctl().ok("put", "status-probe", "v")

    def settled() -> list[dict[str, Any]] | None:
        st = status_all(cluster)
        leaders = {s["Status"]["leader"] for s in st}
        terms = {s["Status"]["raftTerm"] for s in st}
        indexes = {(s["Status"]["raftIndex"], s["Status"]["raftAppliedIndex"]) for s in st}
        return st if len(st) == 3 and len(leaders) == len(terms) == len(indexes) == 1 else None

    st = wait_until(settled, 20, what="one leader, one term, equal indexes")
    leader = st[0]["Status"]["leader"]
    assert [s["Status"]["header"]["member_id"] for s in st].count(leader) == 1
    assert {s["Endpoint"] for s in st} == {m.client_url for m in cluster.members}
    assert all(s["Status"]["raftAppliedIndex"] == s["Status"]["raftIndex"] > 3 for s in st)
    assert all(not s["Status"].get("isLearner", False) and not s["Status"].get("errors") for s in st)
    table = cluster.ctl().ok("endpoint", "status", "--cluster")
    assert [ln.split(", ")[8] for ln in table.splitlines()].count("true") == 1  # the IS LEADER column
    health = cluster.ctl().ok("endpoint", "health", "--cluster")
    assert len(re.findall(r"is healthy: successfully committed proposal", health)) == 3


def test_write_on_one_member_is_read_linearizably_on_the_others(cluster: Cluster) -> None:
    for w in cluster.members:
        key = f"lin/{w.name}"
        put = json.loads(w.ctl().ok("put", key, f"from-{w.name}", "-w", "json"))
        rev = put["header"]["revision"]
        for r in cluster.members:
            got = json.loads(r.ctl().ok("get", key, "-w", "json"))  # linearizable: no waiting needed
            assert got["header"]["member_id"] == r.member_id
            assert got["header"]["revision"] >= rev
            assert [(kv["mod_revision"], kv["value"]) for kv in got["kvs"]] == [
                (rev, _b64(f"from-{w.name}"))
            ], f"written on {w.name}, read on {r.name}"


def test_serializable_reads_are_served_locally_and_catch_up(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    rev = int(json.loads(leader.ctl().ok("put", "ser/k", "v1", "-w", "json"))["header"]["revision"])
    for r in cluster.members:

        def seen(r: ClusterMember = r) -> dict[str, Any] | None:
            got: dict[str, Any] = json.loads(r.ctl().ok("get", "ser/k", "--consistency=s", "-w", "json"))
            return got if got.get("kvs") and got["kvs"][0]["mod_revision"] == rev else None

        got = wait_until(seen, 10, what=f"serializable read on {r.name} catching up")
        assert got["header"]["member_id"] == r.member_id
        assert r.ctl().ok("get", "ser/k", "--consistency=s", "--print-value-only") == "v1\n"


def test_move_leader_to_a_follower(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    term = leader.status().raftTerm
    target = next(m for m in cluster.members if m is not leader)
    out = cluster.ctl().ok("move-leader", target.hex_id)
    assert out == f"Leadership transferred from {leader.member_id:x} to {target.member_id:x}\n"
    assert cluster.wait_leader() is target
    wait_until(lambda: target.status().raftTerm > term, 10, what="the new leader's term")
    target.ctl().ok("put", "after-move", "v")
    assert leader.ctl().ok("get", "after-move", "--print-value-only") == "v\n"


ERROR_CASES = [
    # (name, etcdctl args with {placeholders}, etcd's error line)
    ("remove an unknown ID", ("member", "remove", "1234abcd"), "Error: etcdserver: member not found"),
    (
        "promote a voter",
        ("member", "promote", "{follower}"),
        "Error: etcdserver: can only promote a learner member",
    ),
    ("promote an unknown ID", ("member", "promote", "1234abcd"), "Error: etcdserver: member not found"),
    (
        "update an unknown ID",
        ("member", "update", "1234abcd", "--peer-urls=http://127.0.0.1:9"),
        "Error: etcdserver: member not found",
    ),
    (
        "add an existing peer URL",
        ("member", "add", "dup", "--peer-urls={follower_peer}"),
        "Error: etcdserver: Peer URLs already exists",
    ),
    (
        "add an existing peer URL as learner",
        ("member", "add", "dup", "--learner", "--peer-urls={follower_peer}"),
        "Error: etcdserver: Peer URLs already exists",
    ),
    ("move-leader to an unknown ID", ("move-leader", "1234abcd"), "Error: etcdserver: bad leader transferee"),
    ("add a learner", ("member", "add", "l1", "--learner", "--peer-urls=http://127.0.0.1:9"), ""),
    (
        "add a second learner",
        ("member", "add", "l2", "--learner", "--peer-urls=http://127.0.0.1:10"),
        "Error: etcdserver: too many learner members in cluster",
    ),
    ("move-leader to the learner", ("move-leader", "{learner}"), "Error: etcdserver: bad leader transferee"),
    (
        "promote a learner that never started",
        ("member", "promote", "{learner}"),
        "Error: etcdserver: can only promote a learner member which is in sync with leader",
    ),
    ("remove the learner", ("member", "remove", "{learner}"), ""),
    ("remove the learner again", ("member", "remove", "{learner}"), "Error: etcdserver: member not found"),
]


def run_error_cases(c: Cluster) -> list[tuple[str, int, str]]:
    c.settle_for_reconfig()
    follower = next(m for m in c.members if m is not c.wait_leader())
    values = {"follower": follower.hex_id, "follower_peer": follower.advertise_peer_url, "learner": ""}
    results = []
    for name, args, _ in ERROR_CASES:
        r = c.ctl()(*(a.format(**values) for a in args))
        if name == "add a learner" and r.rc == 0:
            found = re.search(r"Member\s+([0-9a-f]+) added as learner", r.out)
            assert found, r.out
            values["learner"] = found.group(1)
        results.append((name, r.rc, r.error_line))
    return results


def test_membership_errors_as_etcd(cluster: Cluster, etcd_cluster: Cluster) -> None:
    expected = [(name, 1 if line else 0, line) for name, _, line in ERROR_CASES]
    assert run_error_cases(etcd_cluster) == expected, "the expectations no longer match etcd itself"
    assert_same(run_error_cases(cluster), expected)
    for c in (cluster, etcd_cluster):
        assert len(json.loads(c.ctl().ok("member", "list", "-w", "json"))["members"]) == 3


def test_every_member_hashkv_equal(cluster: Cluster) -> None:
    for i in range(30):
        cluster.members[i % 3].put(f"hash/{i % 7}", f"v{i}")
    cluster.members[1].ctl().ok("del", "hash/3")
    assert_hashkv_equal(cluster)


# -- fresh clusters --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
def test_kill9_leader_new_leader_then_catch_up_from_snapshot(tmp_path: Path, kind: str) -> None:
    with Cluster(kind, 3, tmp_path, extra_flags=(*FAST_ELECTIONS, *SNAPSHOTS)) as c:
        for i in range(10):
            c.members[i % 3].put(f"pre/{i}", "v")
        old = c.wait_leader()
        st = old.status()
        old.kill()
        survivors = c.others(old)
        new = c.wait_leader(among=survivors, timeout=20)
        assert new is not old
        # etcd reports the term of the last applied entry: poll until the new leader applied one
        wait_until(lambda: new.status().raftTerm > st.raftTerm, 10, what="the new leader's term")
        for m in survivors:  # writes continue on every survivor
            assert m.ctl().ok("put", f"after-kill/{m.name}", "v") == "OK\n"
        last = 0
        for i in range(350):
            last = survivors[i % 2].put(f"down/{i:04d}", "x" * 64)
        old.start()
        c.wait_converged(timeout=60)
        got = old.get(f"down/{349:04d}", serializable=True)
        assert [kv.mod_revision for kv in got.kvs] == [last]
        assert SNAPSHOT_APPLIED[kind] in old.log(), "the restarted member did not catch up from a snapshot"
        snaps = [
            int(p.name.split("-")[1].split(".")[0], 16)
            for p in (old.data_dir / "member" / "snap").glob("*.snap")
        ]
        # the snapshot it received (it had applied raftIndex when it was killed)
        assert snaps and max(snaps) > st.raftIndex + 100, (
            f"no snapshot file received in the data dir: {snaps}"
        )
        assert_hashkv_equal(c)


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
def test_member_add_learner_catch_up_and_promote(tmp_path: Path, kind: str) -> None:
    with Cluster(kind, 3, tmp_path) as c:
        for i in range(200):
            c.members[i % 3].put(f"pre/{i:03d}", "x" * 32)
        c.settle_for_reconfig()
        new = c.add_member("m3", learner=True)
        ctl = c.ctl()
        doc = json.loads(ctl.ok("member", "list", "-w", "json"))
        entry = next(x for x in doc["members"] if x["ID"] == new.member_id)
        assert entry == {
            "ID": new.member_id,
            "name": "m3",
            "peerURLs": [new.advertise_peer_url],
            "clientURLs": [new.client_url],
            "isLearner": True,
        }
        assert new.status().isLearner
        wait_until(
            lambda: new.get("pre/199", serializable=True).count == 1, 20, what="the learner catching up"
        )
        r = new.ctl()("get", "pre/199")
        assert r.rc == 1 and r.error_line == "Error: etcdserver: rpc not supported for learner"
        r = new.ctl()("put", "k", "v")
        assert r.rc == 1 and r.error_line == "Error: etcdserver: rpc not supported for learner"

        def promote() -> str | None:
            r = ctl("member", "promote", new.hex_id)
            if r.rc != 0:
                assert (
                    r.error_line
                    == "Error: etcdserver: can only promote a learner member which is in sync with leader"
                )
                return None
            return r.out

        out = wait_until(promote, 20, interval=0.2, what="promote succeeding")
        assert re.fullmatch(rf"Member {new.member_id:16x} promoted in cluster [0-9a-f ]+\n", out)
        assert not any(
            x.get("isLearner") for x in json.loads(ctl.ok("member", "list", "-w", "json"))["members"]
        )
        assert not new.status().isLearner
        assert new.ctl().ok("put", "from-new", "v") == "OK\n"
        assert c.members[0].ctl().ok("get", "from-new", "--print-value-only") == "v\n"
        assert len(status_all(c)) == 4
        assert_hashkv_equal(c)


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
def test_member_add_voter_joins_and_counts_for_quorum(tmp_path: Path, kind: str) -> None:
    with Cluster(kind, 3, tmp_path) as c:
        for i in range(50):
            c.members[i % 3].put(f"pre/{i:02d}", "v")
        c.settle_for_reconfig()
        new = c.add_member("m3")
        assert not new.status().isLearner
        assert new.get("pre/49").count == 1  # linearizable on the new voter
        assert len(status_all(c)) == 4
        c.wait_converged()
        new.kill()  # 4 voters, 3 up: still a quorum
        c.members[0].ctl().ok("put", "three-of-four", "v")
        new.start()
        wait_until(lambda: new.get("three-of-four", serializable=True).count == 1, 20, what="m3 catching up")
        assert_hashkv_equal(c)


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
def test_removed_follower_process_exits(tmp_path: Path, kind: str) -> None:
    with Cluster(kind, 3, tmp_path) as c:
        c.settle_for_reconfig()
        leader = c.wait_leader()
        victim = next(m for m in c.members if m is not leader)
        out = c.remove_member(victim)
        assert re.fullmatch(rf"Member {victim.member_id:16x} removed from cluster [0-9a-f ]+\n", out)
        try:
            rc = victim.wait_exit(10)
        except Exception:
            raise AssertionError(f"the removed member {victim.name} is still running 10 s later") from None
        assert rc == 0
        c.forget(victim)
        assert len(json.loads(c.ctl().ok("member", "list", "-w", "json"))["members"]) == 2
        assert c.ctl().ok("put", "after-remove", "v") == "OK\n"
        assert_hashkv_equal(c)


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
def test_removed_leader_process_exits(tmp_path: Path, kind: str) -> None:
    with Cluster(kind, 3, tmp_path) as c:
        c.settle_for_reconfig()
        leader = c.wait_leader()
        r = c.ctl(leader)("member", "remove", leader.hex_id)
        # a leader stops once it applies its own removal; etcd's configure() can see the stop before
        # the apply result and answer ErrStopped (seen under load), so either answer is etcd's
        if r.rc == 0:
            assert re.fullmatch(rf"Member {leader.member_id:16x} removed from cluster [0-9a-f ]+\n", r.out)
        else:
            assert "Error: etcdserver: server stopped" in r.err, r.err
        assert leader.wait_exit(15) == 0
        c.forget(leader)
        assert c.wait_leader(timeout=20) is not leader
        members = json.loads(c.ctl().ok("member", "list", "-w", "json"))["members"]
        assert leader.member_id not in [m["ID"] for m in members]
        assert c.ctl().ok("put", "after-remove", "v") == "OK\n"
        assert_hashkv_equal(c)


DOWN_ADD_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "add a learner via the leader",
        "leader",
        ("member", "add", "l1", "--learner", "--peer-urls=http://127.0.0.1:9"),
    ),
    (
        "add a learner via the follower",
        "follower",
        ("member", "add", "l1", "--learner", "--peer-urls=http://127.0.0.1:9"),
    ),
    ("add a voter via the leader", "leader", ("member", "add", "v1", "--peer-urls=http://127.0.0.1:10")),
    ("add a voter via the follower", "follower", ("member", "add", "v1", "--peer-urls=http://127.0.0.1:10")),
]
DOWN_REMOVE_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("remove the live follower via the leader", "leader", ("member", "remove", "{follower}")),
    ("remove the live follower via itself", "follower", ("member", "remove", "{follower}")),
    ("remove the down member", "leader", ("member", "remove", "{down}")),
    ("put after that", "follower", ("put", "k", "v")),
]


def run_with_a_member_down(
    c: Cluster, cases: list[tuple[str, str, tuple[str, ...]]]
) -> list[tuple[str, int, str, str]]:
    c.settle_for_reconfig()
    leader = c.wait_leader()
    follower, down = (m for m in c.members if m is not leader)
    down.kill()
    time.sleep(1.0)  # let the survivors notice
    values = {"follower": follower.hex_id, "down": down.hex_id}
    results = []
    for name, via, args in cases:
        member = leader if via == "leader" else follower
        r = c.ctl(member)(*(a.format(**values) for a in args), "--command-timeout=8s")
        first = " ".join(r.out.split("\n", 1)[0].split())
        out = re.sub(r"\b[0-9a-f]{13,16}\b", "<id>", first)
        results.append((name, r.rc, out, r.error_line))
    return results


def assert_same(got: list[Any], want: list[Any]) -> None:
    """got (petcd) == want (etcd), with every differing step spelled out on failure."""
    diffs = [
        f"  {w[0]}:\n    etcd:  {w[1:]}\n    petcd: {g[1:]}" for g, w in zip(got, want, strict=True) if g != w
    ]
    assert not diffs, "petcd differs from etcd (rc, stdout, error line):\n" + "\n".join(diffs)


def test_member_add_with_a_member_down_errors_as_etcd(tmp_path: Path) -> None:
    """etcd's strict reconfiguration check refuses to add members (learners too) while a voter is
    down: "etcdserver: unhealthy cluster" whichever member is asked."""
    unhealthy = "Error: etcdserver: unhealthy cluster"
    with Cluster("etcd", 3, tmp_path / "etcd") as c:
        want = run_with_a_member_down(c, DOWN_ADD_CASES)
    assert want == [(name, 1, "", unhealthy) for name, _, _ in DOWN_ADD_CASES]
    with Cluster("petcd", 3, tmp_path / "petcd") as c:
        got = run_with_a_member_down(c, DOWN_ADD_CASES)
    assert_same(got, want)


def test_member_remove_with_a_member_down_errors_as_etcd(tmp_path: Path) -> None:
    """With one of three voters down, removing a live one would leave no quorum: etcd refuses
    ("unhealthy cluster"), whether asked by the leader or by the member to be removed; removing
    the down member is fine and the cluster keeps working."""
    with Cluster("etcd", 3, tmp_path / "etcd") as c:
        want = run_with_a_member_down(c, DOWN_REMOVE_CASES)
    assert want == [
        ("remove the live follower via the leader", 1, "", "Error: etcdserver: unhealthy cluster"),
        ("remove the live follower via itself", 1, "", "Error: etcdserver: unhealthy cluster"),
        ("remove the down member", 0, "Member <id> removed from cluster <id>", ""),
        ("put after that", 0, "OK", ""),
    ]
    with Cluster("petcd", 3, tmp_path / "petcd") as c:
        got = run_with_a_member_down(c, DOWN_REMOVE_CASES)
    assert_same(got, want)


def test_hashkv_same_on_every_member_and_as_etcd(tmp_path: Path) -> None:
    hashes = {}
    for kind in ("petcd", "etcd"):
        with Cluster(kind, 3, tmp_path / kind) as c:
            ms = c.members
            for i in range(40):
                if i % 10 == 0:
                    ms[i % 3].ctl().ok("put", f"h/{i % 9}", f"value-{i}")
                else:
                    ms[i % 3].put(f"h/{i % 9}", f"value-{i}")
            ms[1].ctl().ok("del", "h/4")
            ms[2].ctl().ok("del", "h/7")
            txn = 'value("h/1") = "value-37"\n\nput h/1 swapped\n\nput h/1 not-swapped\n\n'
            assert ms[0].ctl().ok("txn", input=txn).startswith("SUCCESS")
            rev, _ = c.wait_converged()
            at = {r: c.hashes(r) for r in (10, 25, rev)}
            for r, per_member in at.items():
                assert len(set(per_member.values())) == 1, (
                    f"{kind}: hashkv differs at revision {r}: {per_member}"
                )
            hashes[kind] = (rev, {r: next(iter(v.values())) for r, v in at.items()})
            assert_hashkv_equal(c)
    assert hashes["petcd"] == hashes["etcd"]


def _b64(s: str) -> str:
    import base64

    return base64.b64encode(s.encode()).decode()
