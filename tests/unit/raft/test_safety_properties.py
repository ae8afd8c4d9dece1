"""Randomized schedules over the simulated network must never violate Raft's safety
properties, and once the network heals a leader must emerge and new proposals must commit."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .network import SafetyViolation, SimNetwork

N = 3


@dataclass(frozen=True)
class Faults:
    """How hostile the environment is: per-step probabilities of each kind of fault."""

    drop: float
    duplicate: float
    reorder: float
    partition: float
    crash: float
    compact: float


faults = st.builds(
    Faults,
    drop=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.1),
    reorder=st.floats(0, 0.5),
    partition=st.floats(0, 0.03),
    crash=st.floats(0, 0.03),
    compact=st.floats(0, 0.3),
)


def random_step(net: SimNetwork, rnd: random.Random, f: Faults) -> None:
    """One scheduling decision; rnd is driven by hypothesis (or seeded), so runs replay exactly."""
    ids = net.ids
    r = rnd.random()
    if r < 0.15:
        net.tick(rnd.choice(ids))
    elif r < 0.35:
        net.process_ready(rnd.choice(ids))
    elif r < 0.75:
        if not net.in_flight:
            return
        k = rnd.randrange(len(net.in_flight)) if rnd.random() < f.reorder else 0
        x = rnd.random()
        if x < f.drop:
            net.drop(k)
        elif x < f.drop + f.duplicate:
            net.duplicate(k)
        else:
            net.deliver(k)
    elif r < 0.85:
        lead = [nid for nid in ids if net.is_leader(nid)]
        net.propose(lead[0] if lead and rnd.random() < 0.8 else rnd.choice(ids))
    else:
        rare: list[tuple[float, Callable[[], None]]] = [
            (f.partition, lambda: net.partition(set(rnd.sample(ids, rnd.randint(1, len(ids) // 2))))),
            (0.05, net.heal),
            (f.crash, lambda: net.crash(rnd.choice(ids))),
            (0.1, lambda: net.restart(rnd.choice(ids))),
            (f.compact, lambda: net.compact(rnd.choice(ids))),
        ]
        x = rnd.random()
        for p, action in rare:
            if x < p:
                action()
                return
            x -= p
        for _ in range(rnd.randint(1, 3)):
            net.tick(rnd.choice(ids))


def heal_and_check_liveness(net: SimNetwork) -> None:
    net.heal()
    for nid in net.ids:
        net.restart(nid)
    et = int(net.options["election_tick"])  # type: ignore[call-overload]
    net.run_until(lambda: net.leader() is not None, max_ticks=40 * et)
    lead = net.leader()
    assert lead is not None
    data = None
    for _ in range(5):
        data = net.propose(lead)
        if data is not None:
            break
        net.run_until(lambda: net.leader() is not None, max_ticks=40 * et)
        lead = net.leader()
        assert lead is not None
    assert data is not None
    net.run_until(lambda: net.applied_everywhere(data), max_ticks=40 * et)


@pytest.mark.parametrize(
    ("pre_vote", "check_quorum"), [(False, False), (True, False), (False, True), (True, True)]
)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(f=faults, seed=st.integers(0, 2**32 - 1))
def test_random_schedules_are_safe_and_live(pre_vote: bool, check_quorum: bool, f: Faults, seed: int) -> None:
    # Hypothesis picks the fault profile and the seed of the scheduler; a failing case replays
    # exactly from those two values.
    rnd = random.Random(seed)
    net = SimNetwork(N, seed=seed, pre_vote=pre_vote, check_quorum=check_quorum, election_tick=5)
    net.settle()
    for _round in range(2):
        for _ in range(400):
            random_step(net, rnd, f)
            net.check_safety()
        heal_and_check_liveness(net)


@pytest.mark.parametrize("seed", range(8))
def test_long_random_runs_five_nodes(seed: int) -> None:
    """Longer seeded runs on five nodes with a hostile network and periodic healing."""
    rnd = random.Random(seed)
    f = Faults(drop=0.2, duplicate=0.05, reorder=0.3, partition=0.03, crash=0.03, compact=0.3)
    net = SimNetwork(5, seed=seed, pre_vote=seed % 2 == 0, check_quorum=seed % 3 == 0, election_tick=5)
    net.settle()
    for _round in range(4):
        for _ in range(800):
            random_step(net, rnd, f)
            net.check_safety()
        heal_and_check_liveness(net)


def test_checker_detects_divergent_applies() -> None:
    """The harness itself must be able to fail: conflicting applied entries are reported."""
    net = SimNetwork(3)
    net.settle()
    net._record_commit(1, 100, (1, "aa"))
    with pytest.raises(SafetyViolation):
        net._record_commit(2, 100, (1, "bb"))


def test_checker_detects_two_leaders_in_a_term() -> None:
    net = SimNetwork(3)
    net.settle()
    rn1, rn2 = net.nodes[1].rn, net.nodes[2].rn
    assert rn1 is not None and rn2 is not None
    for r in (rn1.raft, rn2.raft):
        r.become_candidate()
        r.become_leader()
        r.term = 7
    with pytest.raises(SafetyViolation, match="election safety"):
        net.check_safety()
