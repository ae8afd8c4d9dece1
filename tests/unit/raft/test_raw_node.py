"""RawNode: the Ready/advance contract, bootstrap, restart from storage, and the API errors."""

from __future__ import annotations

import random

import pytest

from server.raft import (
    BootstrapError,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    InvariantError,
    MemoryStorage,
    Message,
    MessageType,
    Peer,
    ProposalDroppedError,
    RawNode,
    ReadState,
    Ready,
    SnapshotMetadata,
    SoftState,
    StateType,
    StepLocalMsgError,
    StepPeerNotFoundError,
)
from server.raft.raftpb import Snapshot

from .helpers import new_storage

MT = MessageType


def new_node(node_id: int = 1, storage: MemoryStorage | None = None, **cfg: object) -> RawNode:
    return RawNode(
        Config(
            id=node_id,
            storage=storage if storage is not None else MemoryStorage(),
            rng=random.Random(node_id),
            **cfg,  # type: ignore[arg-type]
        )
    )


def handle(rn: RawNode, s: MemoryStorage, applied: list[Entry] | None = None) -> Ready:
    """Process one Ready the way an application must: persist, (send), apply, advance."""
    rd = rn.ready()
    if not rd.hard_state.is_empty():
        s.set_hard_state(rd.hard_state)
    if not rd.snapshot.is_empty():
        s.apply_snapshot(rd.snapshot)
    s.append(rd.entries)
    for e in rd.committed_entries:
        if e.type == EntryType.CONF_CHANGE:
            rn.apply_conf_change(ConfChange.unmarshal(e.data))
        if applied is not None:
            applied.append(e)
    rn.advance(rd)
    return rd


def drain(rn: RawNode, s: MemoryStorage, applied: list[Entry] | None = None) -> list[Ready]:
    out = []
    while rn.has_ready():
        out.append(handle(rn, s, applied))
    return out


# -- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_single_node_campaigns_to_term_2() -> None:
    s = MemoryStorage()
    rn = new_node(1, s)
    rn.bootstrap([1])

    rd = handle(rn, s)
    assert rd.hard_state == HardState(term=1, vote=0, commit=1)
    assert [(e.term, e.index, e.type) for e in rd.entries] == [(1, 1, EntryType.CONF_CHANGE)]
    assert rd.committed_entries == rd.entries
    assert ConfChange.unmarshal(rd.entries[0].data) == ConfChange(ConfChangeType.ADD_NODE, 1)
    assert rd.must_sync

    rn.campaign()
    drain(rn, s)

    st = rn.status()
    assert st.raft_state == StateType.LEADER
    assert st.term == 2
    assert st.commit == 2
    assert st.applied == 2
    assert s.hard_state() == HardState(term=2, vote=1, commit=2)


def test_bootstrap_three_nodes_and_elect() -> None:
    nodes = {i: (new_node(i, MemoryStorage()), i) for i in (1, 2, 3)}
    storages = {i: nodes[i][0].raft.raft_log.storage for i in nodes}
    for rn, _ in nodes.values():
        rn.bootstrap([Peer(1, b"one"), Peer(2, b"two"), Peer(3, b"three")])
    inflight: list[Message] = []

    def pump() -> None:
        while True:
            progressed = False
            for i, (rn, _) in nodes.items():
                st = storages[i]
                assert isinstance(st, MemoryStorage)
                while rn.has_ready():
                    rd = handle(rn, st)
                    inflight.extend(rd.messages)
                    progressed = True
            while inflight:
                m = inflight.pop(0)
                nodes[m.to][0].step(m)
                progressed = True
            if not progressed:
                return

    pump()
    nodes[1][0].campaign()
    pump()
    assert [nodes[i][0].status().raft_state for i in (1, 2, 3)] == [
        StateType.LEADER,
        StateType.FOLLOWER,
        StateType.FOLLOWER,
    ]
    assert {nodes[i][0].status().term for i in (1, 2, 3)} == {2}
    first = storages[1].entries(1, 2, 1 << 20)[0]
    assert ConfChange.unmarshal(first.data).context == b"one"


def test_bootstrap_rejects_nonempty_storage_and_no_peers() -> None:
    with pytest.raises(BootstrapError):
        new_node(1).bootstrap([])
    s = MemoryStorage()
    s.append([Entry(term=1, index=1)])
    with pytest.raises(BootstrapError):
        new_node(1, s).bootstrap([1])


# -- the Ready contract --------------------------------------------------------------------------


def test_ready_reports_only_changes() -> None:
    s = new_storage((1,))
    rn = new_node(1, s)
    assert not rn.has_ready()

    rn.campaign()
    rd = handle(rn, s)
    assert rd.soft_state == SoftState(lead=0, raft_state=StateType.CANDIDATE)
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert rd.must_sync

    # The self-vote was counted on advance(): now leader with an empty entry to persist.
    rd = handle(rn, s)
    assert rd.soft_state == SoftState(lead=1, raft_state=StateType.LEADER)
    assert rd.hard_state.is_empty()
    assert [e.index for e in rd.entries] == [1]
    assert rd.must_sync

    # Only the commit index changed: no sync needed.
    rd = handle(rn, s)
    assert rd.soft_state is None
    assert rd.hard_state == HardState(term=1, vote=1, commit=1)
    assert not rd.must_sync
    assert [e.index for e in rd.committed_entries] == [1]
    assert not rn.has_ready()


def test_messages_wait_for_persistence_of_their_ready() -> None:
    """A vote response is only handed out in the Ready that persists the vote."""
    s = new_storage((1, 2))
    rn = new_node(1, s)
    rn.step(Message(type=MT.MsgVote, frm=2, to=1, term=5, log_term=0, index=0))
    rd = rn.ready()
    assert rd.hard_state == HardState(term=5, vote=2, commit=0)
    assert [m.type for m in rd.messages] == [MT.MsgVoteResp]
    assert rd.must_sync


def test_ready_twice_without_advance_is_an_error() -> None:
    s = new_storage((1,))
    rn = new_node(1, s)
    rn.campaign()
    rn.ready()
    with pytest.raises(InvariantError):
        rn.ready()


def test_max_committed_size_per_ready_paginates() -> None:
    s = new_storage((1,))
    rn = new_node(1, s, max_size_per_msg=1 << 20, max_committed_size_per_ready=40)
    rn.campaign()
    drain(rn, s)
    for i in range(6):
        rn.propose(b"0123456789" + bytes([i]))
    applied: list[Entry] = []
    readies = drain(rn, s, applied)
    assert [e.data for e in applied if e.data] == [b"0123456789" + bytes([i]) for i in range(6)]
    # Each entry encodes to 19 bytes: at most two fit in the 40-byte budget.
    assert max(len(rd.committed_entries) for rd in readies) == 2


def test_config_applied_skips_already_applied_entries() -> None:
    s = new_storage((1,), entries=[Entry(term=1, index=i) for i in range(1, 6)])
    s.set_hard_state(HardState(term=1, vote=1, commit=5))
    rn = new_node(1, s, applied=3)
    rd = rn.ready()
    assert [e.index for e in rd.committed_entries] == [4, 5]


# -- restart ---------------------------------------------------------------------------------------


def test_restart_from_storage_restores_state() -> None:
    s = MemoryStorage()
    rn = new_node(1, s)
    rn.bootstrap([1])
    drain(rn, s)
    rn.campaign()
    drain(rn, s)
    rn.propose(b"a")
    rn.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 2))
    drain(rn, s)
    # The application snapshots its state at index 3 (before the conf change at 4).
    snap = s.create_snapshot(3, ConfState(voters=(1,)), b"state")
    s.compact(3)

    rn2 = new_node(1, s, applied=snap.metadata.index)
    st = rn2.status()
    assert st.hard_state == HardState(term=2, vote=1, commit=4)
    assert st.raft_state == StateType.FOLLOWER
    assert st.config.learners == frozenset()
    # Only the entry after the snapshot is re-delivered for applying; it re-adds the learner.
    rd = rn2.ready()
    assert [e.index for e in rd.committed_entries] == [4]
    assert rd.entries == ()
    rn2.apply_conf_change(ConfChange.unmarshal(rd.committed_entries[0].data))
    rn2.advance(rd)
    assert rn2.status().config.learners == frozenset({2})


def test_restart_without_applied_redelivers_committed_entries() -> None:
    s = new_storage((1,), entries=[Entry(term=1, index=1, data=b"a"), Entry(term=1, index=2, data=b"b")])
    s.set_hard_state(HardState(term=1, vote=1, commit=2))
    rn = new_node(1, s)
    assert [e.data for e in rn.ready().committed_entries] == [b"a", b"b"]


# -- API errors and controls -----------------------------------------------------------------------


@pytest.mark.parametrize("t", [MT.MsgHup, MT.MsgBeat, MT.MsgCheckQuorum, MT.MsgSnapStatus, MT.MsgUnreachable])
def test_step_rejects_local_messages(t: MessageType) -> None:
    rn = new_node(1, new_storage((1, 2)))
    with pytest.raises(StepLocalMsgError):
        rn.step(Message(type=t, frm=2, to=1))


def test_step_rejects_responses_from_unknown_peers() -> None:
    rn = new_node(1, new_storage((1, 2)))
    with pytest.raises(StepPeerNotFoundError):
        rn.step(Message(type=MT.MsgAppResp, frm=3, to=1, term=1))
    rn.step(Message(type=MT.MsgAppResp, frm=2, to=1, term=1))


def test_propose_without_leader_raises() -> None:
    rn = new_node(1, new_storage((1, 2)))
    with pytest.raises(ProposalDroppedError):
        rn.propose(b"x")


def test_conf_change_round_trip_through_log() -> None:
    s = new_storage((1,))
    rn = new_node(1, s)
    rn.campaign()
    drain(rn, s)
    rn.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 2, context=b"member"))
    rd = handle(rn, s)
    [e] = rd.entries
    assert e.type == EntryType.CONF_CHANGE
    assert ConfChange.unmarshal(e.data) == ConfChange(ConfChangeType.ADD_NODE, 2, context=b"member")
    rd = rn.ready()
    [ce] = rd.committed_entries
    cs = rn.apply_conf_change(ConfChange.unmarshal(ce.data))
    rn.advance(rd)
    assert cs == ConfState(voters=(1, 2))
    # The new voter gets an MsgApp.
    assert any(m.to == 2 and m.type == MT.MsgApp for m in rn.ready().messages)


def test_status_progress_is_a_copy_and_leader_only() -> None:
    s = new_storage((1, 2))
    rn = new_node(1, s)
    assert dict(rn.status().progress) == {}
    rn.campaign()
    rn.step(Message(type=MT.MsgVoteResp, frm=2, to=1, term=1))
    drain(rn, s)
    st = rn.status()
    assert st.raft_state == StateType.LEADER
    assert set(st.progress) == {1, 2}
    st.progress[2].match = 99
    assert rn.raft.trk.progress[2].match != 99


def test_report_unreachable_and_snapshot() -> None:
    s = new_storage((1, 2))
    rn = new_node(1, s)
    rn.campaign()
    rn.step(Message(type=MT.MsgVoteResp, frm=2, to=1, term=1))
    drain(rn, s)
    pr = rn.raft.trk.progress[2]
    pr.become_replicate()
    rn.report_unreachable(2)
    assert rn.status().progress[2].state.name == "PROBE"
    pr.become_snapshot(5)
    rn.report_snapshot(2, failed=False)
    assert rn.status().progress[2].state.name == "PROBE"
    assert rn.status().progress[2].next == 6


def test_transfer_leader_and_read_index_through_raw_node() -> None:
    s = new_storage((1,))
    rn = new_node(1, s)
    rn.campaign()
    drain(rn, s)
    rn.read_index(b"r1")
    rd = handle(rn, s)
    assert rd.read_states == (ReadState(index=1, request_ctx=b"r1"),)
    rn.transfer_leader(1)  # to itself: ignored
    assert rn.status().lead_transferee == 0


def test_advance_after_term_change_does_not_mark_overwritten_entries_stable() -> None:
    """Entries handed out in a Ready are only acknowledged as stable if the term did not change
    in between: a newer leader may have replaced them in the unstable log meanwhile."""
    s = new_storage((1, 2, 3))
    rn = new_node(1, s)
    rn.step(
        Message(type=MT.MsgApp, frm=2, to=1, term=1, log_term=0, index=0, entries=(Entry(term=1, index=1),))
    )
    rd = rn.ready()
    # Before advance(), a leader of term 2 overwrites index 1.
    rn.step(
        Message(type=MT.MsgApp, frm=3, to=1, term=2, log_term=0, index=0, entries=(Entry(term=2, index=1),))
    )
    s.append(rd.entries)
    rn.advance(rd)
    assert rn.raft.raft_log.has_next_or_in_progress_unstable_ents()
    rd2 = rn.ready()
    assert [(e.term, e.index) for e in rd2.entries] == [(2, 1)]


def test_snapshot_ready_is_applied_on_advance() -> None:
    s = new_storage((1, 2))
    rn = new_node(1, s)
    snap = Snapshot(
        data=b"s", metadata=SnapshotMetadata(conf_state=ConfState(voters=(1, 2)), index=10, term=3)
    )
    rn.step(Message(type=MT.MsgSnap, frm=2, to=1, term=3, snapshot=snap))
    rd = rn.ready()
    assert rd.snapshot == snap
    assert rd.committed_entries == ()
    s.apply_snapshot(rd.snapshot)
    s.set_hard_state(rd.hard_state)
    rn.advance(rd)
    assert rn.status().applied == 10
    assert not rn.raft.raft_log.has_next_or_in_progress_snapshot()
