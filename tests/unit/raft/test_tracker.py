"""Inflights (the replication window) and Progress (per-follower flow-control state)."""

from __future__ import annotations

import pytest

from server.raft.tracker import Inflights, Progress, ProgressState
from server.raft.util import InvariantError

PS = ProgressState


# -- Inflights ---------------------------------------------------------------------------------------


def test_inflights_add_until_full() -> None:
    ins = Inflights(10)
    for i in range(5):
        ins.add(i, 100 + i)
    assert ins.count() == 5
    assert ins.bytes() == sum(100 + i for i in range(5))
    assert not ins.full()
    for i in range(5, 10):
        ins.add(i, 100 + i)
    assert ins.full()
    with pytest.raises(InvariantError):
        ins.add(10, 1)


@pytest.mark.parametrize(
    ("free_to", "want_indices"),
    [
        (-1, list(range(10))),
        (0, list(range(1, 10))),
        (4, list(range(5, 10))),
        (8, [9]),
        (9, []),
        (15, []),
    ],
)
def test_inflights_free_le(free_to: int, want_indices: list[int]) -> None:
    ins = Inflights(10)
    for i in range(10):
        ins.add(i, 1)
    ins.free_le(free_to)
    assert ins.indices() == want_indices
    assert ins.bytes() == len(want_indices)
    assert ins.full() == (len(want_indices) == 10)


def test_inflights_wraps_around() -> None:
    ins = Inflights(4)
    for i in range(4):
        ins.add(i, 1)
    ins.free_le(1)
    ins.add(4, 1)
    ins.add(5, 1)
    assert ins.full()
    assert ins.indices() == [2, 3, 4, 5]
    ins.free_le(4)
    assert ins.indices() == [5]


@pytest.mark.parametrize(
    ("size", "max_bytes", "adds", "want_full"),
    [
        (5, 0, [1, 1, 1, 1], False),
        (5, 0, [1, 1, 1, 1, 1], True),
        (10, 100, [50, 49], False),
        (10, 100, [50, 50], True),
        (10, 100, [150], True),
    ],
)
def test_inflights_full(size: int, max_bytes: int, adds: list[int], want_full: bool) -> None:
    ins = Inflights(size, max_bytes)
    for i, b in enumerate(adds):
        ins.add(i, b)
    assert ins.full() == want_full


def test_inflights_reset_and_clone() -> None:
    ins = Inflights(3)
    ins.add(1, 10)
    c = ins.clone()
    ins.reset()
    assert (ins.count(), ins.bytes()) == (0, 0)
    assert (c.count(), c.bytes()) == (1, 10)


# -- Progress ----------------------------------------------------------------------------------------


def progress(state: PS = PS.PROBE, match: int = 0, next_: int = 1, size: int = 256) -> Progress:
    return Progress(match=match, next=next_, inflights=Inflights(size), state=state)


def test_progress_string() -> None:
    pr = progress(PS.SNAPSHOT, match=1, next_=4)
    pr.pending_snapshot = 123
    pr.is_learner = True
    pr.recent_active = False
    pr.inflights.add(123, 1)
    assert str(pr) == "StateSnapshot match=1 next=4 learner paused pendingSnap=123 inactive inflight=1"


@pytest.mark.parametrize(
    ("state", "flow_paused", "want"),
    [
        (PS.PROBE, False, False),
        (PS.PROBE, True, True),
        (PS.REPLICATE, False, False),
        (PS.REPLICATE, True, True),
        (PS.SNAPSHOT, False, True),
        (PS.SNAPSHOT, True, True),
    ],
)
def test_progress_is_paused(state: PS, flow_paused: bool, want: bool) -> None:
    pr = progress(state)
    pr.msg_app_flow_paused = flow_paused
    assert pr.is_paused() == want


def test_progress_resume_on_update_and_decr() -> None:
    pr = progress(next_=2)
    pr.msg_app_flow_paused = True
    pr.maybe_decr_to(1, 1)
    assert not pr.msg_app_flow_paused
    pr.msg_app_flow_paused = True
    pr.maybe_update(2)
    assert not pr.msg_app_flow_paused


@pytest.mark.parametrize(
    ("state", "match", "next_", "pending", "want_next"),
    [
        (PS.REPLICATE, 1, 5, 0, 2),  # back to just after match
        (PS.SNAPSHOT, 1, 5, 10, 11),  # the snapshot is assumed to have arrived
        (PS.SNAPSHOT, 1, 5, 0, 2),  # a failed snapshot (pending cleared)
    ],
)
def test_progress_become_probe(state: PS, match: int, next_: int, pending: int, want_next: int) -> None:
    pr = progress(state, match, next_)
    pr.pending_snapshot = pending
    pr.become_probe()
    assert (pr.state, pr.match, pr.next) == (PS.PROBE, match, want_next)


def test_progress_become_replicate_and_snapshot() -> None:
    pr = progress(PS.PROBE, 1, 5)
    pr.become_replicate()
    assert (pr.state, pr.match, pr.next) == (PS.REPLICATE, 1, 2)
    pr.inflights.add(3, 1)
    pr.become_snapshot(10)
    assert (pr.state, pr.match, pr.next, pr.pending_snapshot) == (PS.SNAPSHOT, 1, 11, 10)
    assert pr.inflights.count() == 0


@pytest.mark.parametrize(
    ("update", "want_match", "want_next", "want_ok"),
    [
        (1, 3, 5, False),  # older: ignored
        (3, 3, 5, False),  # same: ignored
        (4, 4, 5, True),  # newer, next unchanged
        (5, 5, 6, True),  # next moves past match
        (7, 7, 8, True),
    ],
)
def test_progress_update(update: int, want_match: int, want_next: int, want_ok: bool) -> None:
    pr = progress(PS.PROBE, 3, 5)
    assert pr.maybe_update(update) == want_ok
    assert (pr.match, pr.next) == (want_match, want_next)


@pytest.mark.parametrize(
    ("state", "match", "next_", "rejected", "hint", "want_ok", "want_next"),
    [
        # Replicate: a rejection at or below match is stale.
        (PS.REPLICATE, 5, 10, 5, 5, False, 10),
        (PS.REPLICATE, 5, 10, 4, 4, False, 10),
        # Replicate: otherwise restart right after match.
        (PS.REPLICATE, 5, 10, 9, 9, True, 6),
        # Probe: only a rejection of the latest probe (next-1) counts.
        (PS.PROBE, 0, 0, 0, 0, False, 0),
        (PS.PROBE, 0, 10, 5, 5, False, 10),
        # Probe: move to min(rejected, hint+1), but never at or below match.
        (PS.PROBE, 0, 10, 9, 9, True, 9),
        (PS.PROBE, 0, 2, 1, 1, True, 1),
        (PS.PROBE, 0, 1, 0, 0, True, 1),
        (PS.PROBE, 0, 10, 9, 2, True, 3),
        (PS.PROBE, 0, 10, 9, 0, True, 1),
    ],
)
def test_progress_maybe_decr(
    state: PS, match: int, next_: int, rejected: int, hint: int, want_ok: bool, want_next: int
) -> None:
    pr = progress(state, match, next_)
    assert pr.maybe_decr_to(rejected, hint) == want_ok
    assert pr.match == match
    assert pr.next == want_next


def test_progress_sent_entries_pauses_probe_and_fills_window() -> None:
    probe = progress(PS.PROBE, 0, 1)
    probe.sent_entries(0, 0)
    assert not probe.is_paused()  # empty probes do not pause
    probe.sent_entries(2, 10)
    assert probe.is_paused()
    assert probe.next == 1  # a probe does not advance next optimistically

    rep = progress(PS.REPLICATE, 0, 1, size=2)
    rep.sent_entries(3, 30)
    assert (rep.next, rep.inflights.indices()) == (4, [3])
    rep.sent_entries(1, 10)
    assert rep.is_paused()
    with pytest.raises(InvariantError):
        progress(PS.SNAPSHOT).sent_entries(1, 1)


def test_progress_can_bump_commit() -> None:
    pr = progress(PS.REPLICATE, 3, 6)
    pr.sent_commit_to(3)
    assert pr.can_bump_commit(4)
    assert not pr.can_bump_commit(3)
    pr.sent_commit_to(5)
    assert not pr.can_bump_commit(6)  # nothing beyond sent_commit is in flight
