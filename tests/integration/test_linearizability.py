"""Linearizability under faults: concurrent clients against a 3-member cluster while members are
killed (-9) and restarted, partitioned and cut off through the peer proxy and leadership is moved;
the recorded history is checked with porcupine (tools/peers/porcupine, .peers/bin/porcupine-check)
against a register per key.

We test these aspects:
- the checker itself: it accepts linearizable histories (including writes of unknown outcome)
  and reports crafted violations (stale reads, values from nowhere, wrong mod revisions, a CAS
  against an overwritten value, an acknowledged write that vanished), so this file can fail;
- petcd under faults: zero linearizability violations, header revisions never going back in
  real time, and every member's hashkv equal at the end (the same run against etcd v3.6 keeps the
  workload and the checker honest).

LIN_SECONDS (default 25) sets how long the workload runs; the history and porcupine's
visualization are kept in the test's tmp_path (history.json, history.html).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster, ClusterMember
from tests.harness.history import History, Nemesis, Op, Workload, run_checker

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("LIN_SECONDS", "25"))


# -- the checker ---------------------------------------------------------------------------------


def put(c: int, call: int, ret: int | None, key: str, value: str, rev: int = 0) -> Op:
    return Op(c, call, ret, "put", key, value=value, rev=rev, status="ok" if ret is not None else "unknown")


def get(c: int, call: int, ret: int, key: str, value: str | None, mod_rev: int = 0, rev: int = 0) -> Op:
    return Op(
        c, call, ret, "get", key, rev=rev or mod_rev, read_found=value is not None,
        read_value=value or "", read_mod_rev=mod_rev,
    )  # fmt: skip


def cas(c: int, call: int, ret: int, key: str, expected: str | None, value: str, ok: bool, rev: int) -> Op:
    return Op(
        c, call, ret, "cas", key, value=value, expected=expected, expected_absent=expected is None,
        succeeded=ok, rev=rev,
    )  # fmt: skip


def cas_failed(
    c: int, call: int, ret: int, key: str, expected: str, value: str, read: str, mod_rev: int
) -> Op:
    """A CAS whose comparison failed, with what its else branch read."""
    op = cas(c, call, ret, key, expected, value, False, mod_rev)
    op.read_found, op.read_value, op.read_mod_rev = True, read, mod_rev
    return op


def history(*ops: Op) -> History:
    h = History()
    for o in ops:
        h.record(o)
    return h


LEGAL = {
    "sequential": [put(0, 0, 10, "x", "a", 2), get(1, 20, 30, "x", "a", 2), put(0, 40, 50, "x", "b", 3)],
    "concurrent read sees either": [
        put(0, 0, 10, "x", "a", 2),
        put(0, 20, 40, "x", "b", 3),
        get(1, 25, 35, "x", "a", 2),
        get(2, 30, 50, "x", "b", 3),
    ],
    "unknown write observed later": [put(0, 0, None, "x", "a"), get(1, 50, 60, "x", "a", 2)],
    "unknown write never observed": [
        put(0, 0, 10, "x", "a", 2),
        put(1, 15, None, "x", "lost?"),
        get(2, 50, 60, "x", "a", 2),
    ],
    "cas chain": [
        cas(0, 0, 10, "x", None, "a", True, 2),
        cas(1, 20, 30, "x", "a", "b", True, 3),
        cas_failed(2, 40, 50, "x", "a", "c", read="b", mod_rev=3),
    ],
    "keys are independent": [
        put(0, 0, 10, "x", "a", 2),
        put(1, 0, 10, "y", "b", 3),
        get(2, 20, 30, "y", "b", 3),
    ],
}

ILLEGAL = {
    "stale read": [put(0, 0, 10, "x", "a", 2), put(0, 20, 30, "x", "b", 3), get(1, 40, 50, "x", "a", 2)],
    "value from nowhere": [put(0, 0, 10, "x", "a", 2), get(1, 20, 30, "x", "zz", 2)],
    "wrong mod revision": [put(0, 0, 10, "x", "a", 2), get(1, 20, 30, "x", "a", 5)],
    "revisions going back": [put(0, 0, 10, "x", "a", 5), put(0, 20, 30, "x", "b", 4)],
    "cas against an overwritten value": [
        put(0, 0, 10, "x", "a", 2),
        put(0, 20, 30, "x", "b", 3),
        cas(1, 40, 50, "x", "a", "c", True, 4),
    ],
    "acknowledged write vanished": [
        put(0, 0, 10, "x", "a", 2),
        get(1, 20, 30, "x", "a", 2),
        get(1, 40, 50, "x", None),
    ],
    "failed cas that should have succeeded": [
        put(0, 0, 10, "x", "a", 2),
        cas_failed(1, 20, 30, "x", "a", "c", read="a", mod_rev=2),
    ],
}


@pytest.mark.parametrize("name", sorted(LEGAL))
def test_checker_accepts_linearizable_history(name: str) -> None:
    result = history(*LEGAL[name]).check()
    assert result.ok, result.output


@pytest.mark.parametrize("name", sorted(ILLEGAL))
def test_checker_reports_violation(name: str, tmp_path: Path) -> None:
    html = tmp_path / "violation.html"
    result = history(*ILLEGAL[name]).check(html=html)
    assert result.illegal, result.output
    assert 'key "x"' in result.output and "not linearizable" in result.output
    assert html.stat().st_size > 1000


def test_checker_rejects_malformed_history() -> None:
    result = run_checker(
        {"ops": [{"client": 0, "call": 1, "return": 2, "op": "frob", "key": "x", "status": "ok"}]}
    )
    assert result.rc == 3, result.output


def test_revision_order_check_reports_revisions_going_back_across_keys() -> None:
    h = history(put(0, 0, 10, "x", "a", 5), get(1, 20, 30, "y", None, rev=4))
    assert [(a.key, b.key) for a, b in h.revision_order_violations()] == [("x", "y")]
    assert not history(
        put(0, 0, 10, "x", "a", 5), get(1, 5, 30, "y", None, rev=4)
    ).revision_order_violations()


# -- petcd under faults ----------------------------------------------------------------------------


# each run injects every one of these once, in a random order, then random ones until time is up
FAULTS = [
    "kill-leader",
    "isolate-leader",
    "kill-follower",
    "isolate-follower",
    "cut-leader-link",
    "move-leader",
    "kill-all",
]


def inject(c: Cluster, fault: str, rng: random.Random) -> None:
    net = c.net
    assert net is not None
    leader = c.wait_leader(timeout=20)
    follower = rng.choice(c.others(leader))
    victims: list[ClusterMember] = []
    if fault == "kill-leader":
        victims = [leader]
    elif fault == "kill-follower":
        victims = [follower]
    elif fault == "kill-all":
        victims = list(c.members)
    if victims:
        for m in victims:
            m.kill()
        time.sleep(rng.uniform(0.5, 2.0))
        for m in victims:
            m.spawn()
        for m in victims:
            m.wait_ready(30)
    elif fault == "move-leader":
        c.ctl()("move-leader", follower.hex_id)  # may race with an election: either is fine
    else:
        if fault == "isolate-leader":
            net.isolate(leader.name)
        elif fault == "isolate-follower":
            net.isolate(follower.name)
        else:
            net.cut(leader.name, follower.name)
        time.sleep(rng.uniform(1.5, 3.0))
        net.heal()


@pytest.mark.parametrize("kind", ["petcd", "etcd"])
def test_linearizable_under_faults(tmp_path: Path, kind: str) -> None:
    seed = int(os.environ.get("LIN_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    with Cluster(kind, 3, tmp_path / "cluster", proxied=True) as c:
        h = History()
        nemesis = Nemesis(h)
        workload = Workload(h, [m.client_url for m in c.members], keys=4, clients=8, seed=seed).start()
        try:
            deadline = time.monotonic() + SECONDS
            faults = list(FAULTS)
            rng.shuffle(faults)
            time.sleep(1.0)
            while faults or time.monotonic() < deadline:
                fault = faults.pop(0) if faults else rng.choice(FAULTS)
                with nemesis.window(fault):
                    inject(c, fault, rng)
                time.sleep(1.0)
        finally:
            workload.stop()
            assert c.net is not None
            c.net.heal()
            for m in c.members:
                if not m.running:
                    m.start()
        rev, _ = c.wait_converged(timeout=60)
        # every member's final state, read linearizably, is part of the history too
        for m in c.members:
            for key in workload.keys:
                call = h.now()
                resp = m.get(key)
                op = Op(10_000, call, h.now(), "get", key, rev=resp.header.revision, member=m.client_url)
                Workload._set_read(op, resp.kvs)
                h.record(op)
        hashkv = json.loads(c.ctl().ok("endpoint", "hashkv", "--cluster", f"--rev={rev}", "-w", "json"))
        assert len({e["HashKV"]["hash"] for e in hashkv}) == 1, f"hashkv differs at revision {rev}: {hashkv}"
    h.dump(tmp_path / "history.json")
    summary = f"seed={seed} (LIN_SEED reproduces the fault order) counts={h.counts()}\n" + "\n".join(
        nemesis.log
    )
    result = h.check(html=tmp_path / "history.html")
    assert result.ok, f"{result.output}\n{summary}\nhistory: {tmp_path / 'history.html'}"
    bad = h.revision_order_violations()
    assert not bad, f"{len(bad)} responses with a revision lower than an earlier response's, e.g. {bad[:3]}"
    counts = h.counts()
    assert counts.get("put:ok", 0) > 300 and counts.get("get:ok", 0) > 300, summary
    assert counts.get("cas:succeeded", 0) > 30, summary
    assert len(nemesis.log) >= len(FAULTS), summary
