"""Majority and joint quorums: committed index and vote results, against brute-force oracles."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.raft.quorum import JointConfig, MajorityConfig, VoteResult

VR = VoteResult


def acked(m: dict[int, int]) -> Callable[[int], int | None]:
    return m.get


@pytest.mark.parametrize(
    ("voters", "acks", "want"),
    [
        ((), {}, (1 << 64) - 1),  # an empty config never constrains
        ((1,), {}, 0),
        ((1,), {1: 12}, 12),
        ((1, 2), {1: 12}, 0),
        ((1, 2), {1: 12, 2: 5}, 5),
        ((1, 2, 3), {1: 12, 2: 5}, 5),
        ((1, 2, 3), {1: 12, 2: 5, 3: 4}, 5),
        ((1, 2, 3), {1: 12}, 0),
        ((1, 2, 3, 4), {1: 12, 2: 5, 3: 4}, 4),
        ((1, 2, 3, 4, 5), {1: 10, 2: 9, 3: 8, 4: 7, 5: 6}, 8),
        ((1, 2, 3), {1: 12, 2: 5, 99: 100}, 5),  # non-voters are ignored
    ],
)
def test_majority_committed_index(voters: tuple[int, ...], acks: dict[int, int], want: int) -> None:
    assert MajorityConfig.of(voters).committed_index(acked(acks)) == want


@pytest.mark.parametrize(
    ("voters", "votes", "want"),
    [
        ((), {}, VR.WON),
        ((1,), {}, VR.PENDING),
        ((1,), {1: False}, VR.LOST),
        ((1,), {1: True}, VR.WON),
        ((1, 2), {1: True}, VR.PENDING),
        ((1, 2), {1: True, 2: False}, VR.LOST),
        ((1, 2, 3), {1: True}, VR.PENDING),
        ((1, 2, 3), {1: True, 2: False}, VR.PENDING),
        ((1, 2, 3), {1: True, 2: True}, VR.WON),
        ((1, 2, 3), {1: False, 2: False}, VR.LOST),
        ((1, 2, 3, 4), {1: True, 2: True}, VR.PENDING),
        ((1, 2, 3, 4), {1: True, 2: True, 3: True}, VR.WON),
        ((1, 2, 3, 4), {1: False, 2: False}, VR.LOST),
    ],
)
def test_majority_vote_result(voters: tuple[int, ...], votes: dict[int, bool], want: VoteResult) -> None:
    assert MajorityConfig.of(voters).vote_result(votes) == want


@pytest.mark.parametrize(
    ("incoming", "outgoing", "votes", "want"),
    [
        ((1, 2, 3), (), {1: True, 2: True}, VR.WON),
        ((1, 2, 3), (3, 4, 5), {1: True, 2: True}, VR.PENDING),
        ((1, 2, 3), (3, 4, 5), {1: True, 2: True, 3: True}, VR.PENDING),
        ((1, 2, 3), (3, 4, 5), {1: True, 2: True, 3: True, 4: True}, VR.WON),
        ((1, 2, 3), (3, 4, 5), {1: True, 2: True, 4: False, 5: False}, VR.LOST),
        ((1, 2, 3), (3, 4, 5), {1: False, 2: False, 4: True, 5: True}, VR.LOST),
    ],
)
def test_joint_vote_result(
    incoming: tuple[int, ...], outgoing: tuple[int, ...], votes: dict[int, bool], want: VoteResult
) -> None:
    assert JointConfig(MajorityConfig.of(incoming), MajorityConfig.of(outgoing)).vote_result(votes) == want


def test_joint_committed_index_is_minimum_of_halves() -> None:
    c = JointConfig(MajorityConfig.of((1, 2, 3)), MajorityConfig.of((3, 4, 5)))
    acks = {1: 10, 2: 10, 3: 7, 4: 5, 5: 4}
    assert c.committed_index(acked(acks)) == 5
    assert JointConfig(MajorityConfig.of((1, 2, 3))).committed_index(acked(acks)) == 10


def test_describe() -> None:
    c = MajorityConfig.of((1, 2, 3))
    out = c.describe(acked({1: 5, 2: 7}))
    assert "(id=1)" in out and "(id=3)" in out
    assert out.splitlines()[3].startswith("?")
    assert str(c) == "(1 2 3)"
    assert str(JointConfig(c, MajorityConfig.of((4,)))) == "(1 2 3)&&(4)"


ids = st.lists(st.integers(1, 9), min_size=0, max_size=7, unique=True)


def oracle_committed(voters: list[int], acks: dict[int, int]) -> int:
    if not voters:
        return (1 << 64) - 1
    best = 0
    for idx in {acks.get(v, 0) for v in voters}:
        if sum(1 for v in voters if acks.get(v, 0) >= idx) > len(voters) // 2:
            best = max(best, idx)
    return best


@settings(max_examples=200, deadline=None)
@given(voters=ids, acks=st.dictionaries(st.integers(1, 9), st.integers(0, 20)))
def test_committed_index_matches_oracle(voters: list[int], acks: dict[int, int]) -> None:
    assert MajorityConfig.of(voters).committed_index(acked(acks)) == oracle_committed(voters, acks)


@settings(max_examples=200, deadline=None)
@given(voters=ids, votes=st.dictionaries(st.integers(1, 9), st.booleans()))
def test_vote_result_matches_oracle(voters: list[int], votes: dict[int, bool]) -> None:
    q = len(voters) // 2 + 1
    yes = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    want = VR.WON if not voters or yes >= q else (VR.PENDING if yes + missing >= q else VR.LOST)
    assert MajorityConfig.of(voters).vote_result(votes) == want
