"""confchange: single-step changes, joint configurations and restoring from a ConfState."""

from __future__ import annotations

import pytest

from server.raft.confchange import Changer, ConfChangeError, describe_changes, restore
from server.raft.raftpb import ConfChange, ConfChangeType, ConfState
from server.raft.tracker import ProgressTracker

CT = ConfChangeType


def v(i: int) -> ConfChange:
    return ConfChange(CT.ADD_NODE, i)


def lrn(i: int) -> ConfChange:
    return ConfChange(CT.ADD_LEARNER_NODE, i)


def r(i: int) -> ConfChange:
    return ConfChange(CT.REMOVE_NODE, i)


def tracker_from(cs: ConfState, last_index: int = 10) -> ProgressTracker:
    trk = ProgressTracker(256)
    trk.config, trk.progress = restore(Changer(trk, last_index), cs)
    return trk


def apply_simple(trk: ProgressTracker, *ccs: ConfChange, last_index: int = 10) -> ProgressTracker:
    out = ProgressTracker(256)
    out.config, out.progress = Changer(trk, last_index).simple(list(ccs))
    return out


@pytest.mark.parametrize(
    ("start", "changes", "want"),
    [
        (ConfState(), [v(1)], ConfState(voters=(1,))),
        (ConfState(voters=(1,)), [v(2)], ConfState(voters=(1, 2))),
        (ConfState(voters=(1,)), [lrn(2)], ConfState(voters=(1,), learners=(2,))),
        # Promote a learner.
        (ConfState(voters=(1,), learners=(2,)), [v(2)], ConfState(voters=(1, 2))),
        # Demote a voter.
        (ConfState(voters=(1, 2)), [lrn(2)], ConfState(voters=(1,), learners=(2,))),
        (ConfState(voters=(1, 2)), [r(2)], ConfState(voters=(1,))),
        (ConfState(voters=(1,), learners=(2,)), [r(2)], ConfState(voters=(1,))),
        # Removing an unknown node, adding an existing voter, node 0, updates: no-ops.
        (ConfState(voters=(1,)), [r(5)], ConfState(voters=(1,))),
        (ConfState(voters=(1,)), [v(1)], ConfState(voters=(1,))),
        (ConfState(voters=(1,)), [v(0)], ConfState(voters=(1,))),
        (ConfState(voters=(1,)), [ConfChange(CT.UPDATE_NODE, 1)], ConfState(voters=(1,))),
        # Several learners at once are fine (the voters change by at most one).
        (ConfState(voters=(1,)), [lrn(2), lrn(3), v(4)], ConfState(voters=(1, 4), learners=(2, 3))),
    ],
)
def test_simple(start: ConfState, changes: list[ConfChange], want: ConfState) -> None:
    assert apply_simple(tracker_from(start), *changes).conf_state() == want


@pytest.mark.parametrize(
    ("start", "changes", "message"),
    [
        (ConfState(voters=(1,)), [r(1)], "removed all voters"),
        (ConfState(voters=(1,)), [v(2), v(3)], "more than one voter changed"),
        (ConfState(voters=(1, 2)), [r(1), r(2)], "removed all voters"),
        (ConfState(voters=(1, 2, 3)), [r(1), v(4)], "more than one voter changed"),
    ],
)
def test_simple_errors(start: ConfState, changes: list[ConfChange], message: str) -> None:
    with pytest.raises(ConfChangeError, match=message):
        Changer(tracker_from(start), 10).simple(changes)


def test_new_progress_starts_at_last_index_and_active() -> None:
    trk = apply_simple(tracker_from(ConfState(voters=(1,))), v(2), last_index=7)
    pr = trk.progress[2]
    assert (pr.match, pr.next, pr.recent_active, pr.is_learner) == (0, 7, True, False)


def test_changer_does_not_mutate_input() -> None:
    trk = tracker_from(ConfState(voters=(1, 2)))
    before = (trk.config, {i: str(p) for i, p in trk.progress.items()})
    Changer(trk, 10).simple([lrn(2)])
    assert (trk.config, {i: str(p) for i, p in trk.progress.items()}) == before


def test_promotion_keeps_progress() -> None:
    trk = tracker_from(ConfState(voters=(1,), learners=(2,)))
    trk.progress[2].match = 5
    promoted = apply_simple(trk, v(2))
    assert promoted.progress[2].match == 5
    assert not promoted.progress[2].is_learner


def test_joint_enter_and_leave() -> None:
    trk = tracker_from(ConfState(voters=(1, 2, 3)))
    cfg, prs = Changer(trk, 10).enter_joint(False, [r(3), v(4), lrn(2)])
    joint = ProgressTracker(256)
    joint.config, joint.progress = cfg, prs
    assert joint.conf_state() == ConfState(
        voters=(1, 4), voters_outgoing=(1, 2, 3), learners_next=(2,), learners=()
    )
    assert 3 in prs  # still an outgoing voter
    with pytest.raises(ConfChangeError, match="already joint"):
        Changer(joint, 10).enter_joint(False, [])
    with pytest.raises(ConfChangeError, match="simple config change in joint"):
        Changer(joint, 10).simple([v(5)])

    cfg, prs = Changer(joint, 10).leave_joint()
    assert cfg.conf_state() == ConfState(voters=(1, 4), learners=(2,))
    assert 3 not in prs
    assert prs[2].is_learner


def test_leave_non_joint_fails() -> None:
    with pytest.raises(ConfChangeError):
        Changer(tracker_from(ConfState(voters=(1,))), 10).leave_joint()


@pytest.mark.parametrize(
    "cs",
    [
        ConfState(voters=(1, 2, 3)),
        ConfState(voters=(1, 2, 3), learners=(4, 5)),
        ConfState(voters=(1, 2, 3), learners=(5,), voters_outgoing=(1, 2, 4, 6), learners_next=(4,)),
        ConfState(voters=(1,), voters_outgoing=(2,), auto_leave=True),
    ],
)
def test_restore_round_trips(cs: ConfState) -> None:
    assert tracker_from(cs).conf_state() == cs


def test_describe_changes() -> None:
    assert describe_changes([v(1), r(2)]) == "ADD_NODE(1) REMOVE_NODE(2)"
