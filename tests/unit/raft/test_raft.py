"""Behaviour of the raft state machine beyond the core paper rules: PreVote, CheckQuorum,
learners, membership, leadership transfer, ReadIndex, flow control and snapshots."""

from __future__ import annotations

import pytest

from server.raft.raft import Config, ConfigError, ProposalDroppedError, Raft
from server.raft.raftpb import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from server.raft.read_only import ReadOnlyOption, ReadState
from server.raft.status import StateType
from server.raft.storage import MemoryStorage
from server.raft.tracker import ProgressState
from server.raft.util import InvariantError

from .helpers import (
    Network,
    accept_and_reply,
    advance_messages_after_append,
    commit_noop_entry,
    ents,
    new_raft,
    new_storage,
    persist_and_apply,
    read_messages,
)

MT = MessageType
ST = StateType


def prop(data: bytes = b"x") -> Message:
    return Message(type=MT.MsgProp, frm=1, to=1, entries=(Entry(term=0, index=0, data=data),))


def hup(nid: int) -> Message:
    return Message(type=MT.MsgHup, frm=nid, to=nid)


def elect(n: Network, nid: int = 1) -> Raft:
    n.send(hup(nid))
    r = n.raft(nid)
    assert r.state == ST.LEADER
    return r


def leader_with_followers(voters: tuple[int, ...] = (1, 2, 3), **cfg: object) -> tuple[Raft, MemoryStorage]:
    s = new_storage(voters)
    r = new_raft(1, voters, storage=s, **cfg)  # type: ignore[arg-type]
    r.become_candidate()
    r.become_leader()
    commit_noop_entry(r, s)
    return r, s


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": 0}, "none as id"),
        ({"heartbeat_tick": 0}, "heartbeat tick"),
        ({"election_tick": 1}, "election tick"),
        ({"max_inflight_msgs": 0}, "max inflight messages"),
        ({"max_inflight_bytes": 10, "max_size_per_msg": 100}, "max inflight bytes"),
        ({"read_only_option": ReadOnlyOption.LEASE_BASED}, "CheckQuorum"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"id": 1, "storage": MemoryStorage(), "election_tick": 10, "heartbeat_tick": 1}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        Raft(Config(**base))  # type: ignore[arg-type]


# -- PreVote -----------------------------------------------------------------------------------------


def test_prevote_does_not_change_term() -> None:
    r = new_raft(1, (1, 2, 3), pre_vote=True)

    r.step(hup(1))

    assert r.state == ST.PRE_CANDIDATE
    assert r.term == 0
    assert r.vote == NONE
    msgs = sorted(read_messages(r), key=lambda m: m.to)
    assert [(m.type, m.to, m.term) for m in msgs] == [(MT.MsgPreVote, 2, 1), (MT.MsgPreVote, 3, 1)]


def test_prevote_quorum_starts_real_election() -> None:
    r = new_raft(1, (1, 2, 3), pre_vote=True)
    r.step(hup(1))
    read_messages(r)

    r.step(Message(type=MT.MsgPreVoteResp, frm=2, to=1, term=1))

    assert r.state == ST.CANDIDATE
    assert r.term == 1
    assert r.vote == 1
    assert {(m.type, m.term) for m in read_messages(r)} == {(MT.MsgVote, 1)}


def test_prevote_rejection_from_higher_term_makes_follower() -> None:
    r = new_raft(1, (1, 2, 3), pre_vote=True)
    r.step(hup(1))

    r.step(Message(type=MT.MsgPreVoteResp, frm=2, to=1, term=5, reject=True))

    assert r.state == ST.FOLLOWER
    assert r.term == 5


def test_prevote_granted_for_future_term_despite_leader() -> None:
    """Unlike a vote, a pre-vote for a higher term is granted even if we know a leader."""
    r = new_raft(1, (1, 2, 3), pre_vote=True)
    r.become_follower(2, 3)

    r.step(Message(type=MT.MsgPreVote, frm=2, to=1, term=3, log_term=0, index=0))

    assert r.term == 2
    assert r.vote == NONE
    assert r.lead == 3
    [resp] = read_messages(r)
    assert (resp.type, resp.term, resp.reject) == (MT.MsgPreVoteResp, 3, False)


def test_prevote_with_stale_term_is_rejected_with_our_term() -> None:
    r = new_raft(1, (1, 2, 3), pre_vote=True)
    r.become_follower(5, NONE)

    r.step(Message(type=MT.MsgPreVote, frm=2, to=1, term=3))

    [resp] = read_messages(r)
    assert (resp.type, resp.term, resp.reject) == (MT.MsgPreVoteResp, 5, True)


def test_partitioned_node_with_prevote_does_not_disrupt() -> None:
    n = Network(None, None, None, pre_vote=True)
    elect(n, 1)
    n.isolate(3)
    n.send(prop())  # 3 falls behind
    for _ in range(3):
        n.send(hup(3))
    n.recover()
    assert n.raft(3).state == ST.PRE_CANDIDATE
    assert n.raft(3).term == 1

    # Its pre-vote requests are rejected (its log is behind) and nobody changes term.
    n.send(hup(3))
    assert [n.raft(i).term for i in (1, 2, 3)] == [1, 1, 1]
    assert n.raft(1).state == ST.LEADER
    assert n.raft(3).state == ST.FOLLOWER


# -- CheckQuorum -------------------------------------------------------------------------------------


def test_leader_steps_down_without_active_quorum() -> None:
    r, _ = leader_with_followers(check_quorum=True)
    read_messages(r)

    # First check: followers still count as active from the election.
    for _ in range(r.election_timeout):
        r.tick()
    assert r.state == ST.LEADER
    for _ in range(r.election_timeout):
        r.tick()

    assert r.state == ST.FOLLOWER
    assert r.term == 1


def test_leader_stays_with_active_quorum() -> None:
    r, _ = leader_with_followers(check_quorum=True)
    for _ in range(3 * r.election_timeout):
        r.tick()
        for m in read_messages(r):
            if m.type == MT.MsgHeartbeat and m.to == 2:
                r.step(Message(type=MT.MsgHeartbeatResp, frm=2, to=1, term=r.term))
    assert r.state == ST.LEADER


def test_follower_in_lease_ignores_vote_request() -> None:
    r = new_raft(1, (1, 2, 3), check_quorum=True)
    r.become_follower(1, 2)

    r.step(Message(type=MT.MsgVote, frm=3, to=1, term=2, log_term=0, index=0))

    assert r.term == 1
    assert read_messages(r) == []


def test_follower_out_of_lease_grants_vote() -> None:
    r = new_raft(1, (1, 2, 3), check_quorum=True)
    r.become_follower(1, 2)
    r.election_elapsed = r.election_timeout

    r.step(Message(type=MT.MsgVote, frm=3, to=1, term=2, log_term=0, index=0))

    assert r.term == 2
    assert r.vote == 3


def test_transfer_vote_overrides_lease() -> None:
    r = new_raft(1, (1, 2, 3), check_quorum=True)
    r.become_follower(1, 2)

    r.step(Message(type=MT.MsgVote, frm=3, to=1, term=2, context=b"CampaignTransfer"))

    assert r.term == 2
    assert r.vote == 3


def test_stale_heartbeat_gets_term_back_with_checkquorum() -> None:
    """A node that moved to a higher term tells a stale leader, which frees a stuck candidate."""
    r = new_raft(1, (1, 2, 3), check_quorum=True)
    r.become_follower(5, NONE)

    r.step(Message(type=MT.MsgHeartbeat, frm=2, to=1, term=3))

    [resp] = read_messages(r)
    assert (resp.type, resp.to, resp.term) == (MT.MsgAppResp, 2, 5)


def test_stale_heartbeat_ignored_without_checkquorum_or_prevote() -> None:
    r = new_raft(1, (1, 2, 3))
    r.become_follower(5, NONE)
    r.step(Message(type=MT.MsgHeartbeat, frm=2, to=1, term=3))
    assert read_messages(r) == []


# -- learners and membership ----------------------------------------------------------------------


def test_learner_cannot_campaign() -> None:
    r = new_raft(2, (1,), learners=(2,))
    assert r.is_learner
    for _ in range(3 * r.election_timeout):
        r.tick()
    r.step(hup(2))
    assert r.state == ST.FOLLOWER
    assert read_messages(r) == []


def test_learner_votes_when_asked() -> None:
    """A learner grants votes: it may have been promoted without having applied it yet."""
    r = new_raft(2, (1,), learners=(2,))
    r.step(Message(type=MT.MsgVote, frm=1, to=2, term=2, log_term=0, index=0))
    [resp] = read_messages(r)
    assert (resp.type, resp.reject) == (MT.MsgVoteResp, False)


def test_learner_does_not_count_for_commit() -> None:
    s = new_storage((1,), learners=(2,))
    r = new_raft(1, (1,), learners=(2,), storage=s)
    r.become_candidate()
    r.become_leader()
    persist_and_apply(r, s)
    r.step(prop())
    persist_and_apply(r, s)
    # Committed by the single voter alone, even though the learner has nothing.
    assert r.raft_log.committed == r.raft_log.last_index()
    assert r.trk.progress[2].match == 0
    # The learner is still replicated to.
    assert any(m.to == 2 and m.type == MT.MsgApp for m in read_messages(r))


def test_promote_learner() -> None:
    r = new_raft(1, (1,), learners=(2,))
    cs = r.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, 2))
    assert cs == ConfState(voters=(1, 2))
    assert not r.trk.progress[2].is_learner


def test_demote_voter_to_learner() -> None:
    r = new_raft(1, (1, 2))
    cs = r.apply_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 2))
    assert cs == ConfState(voters=(1,), learners=(2,))


def test_remove_node_commits_with_smaller_quorum() -> None:
    s = new_storage((1, 2))
    r = new_raft(1, (1, 2), storage=s)
    r.become_candidate()
    r.become_leader()
    persist_and_apply(r, s)
    r.step(prop())
    persist_and_apply(r, s)
    assert r.raft_log.committed == 0  # 2 never acknowledged

    r.apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 2))

    assert r.raft_log.committed == 2


def test_only_one_pending_conf_change() -> None:
    r, _s = leader_with_followers()
    cc = Entry(
        term=0, index=0, type=EntryType.CONF_CHANGE, data=ConfChange(ConfChangeType.ADD_NODE, 4).marshal()
    )

    r.step(Message(type=MT.MsgProp, frm=1, to=1, entries=(cc, cc)))

    tail = r.raft_log.next_unstable_ents()[-2:]
    assert [e.type for e in tail] == [EntryType.CONF_CHANGE, EntryType.NORMAL]
    assert r.pending_conf_index == tail[0].index

    # A second proposal is also refused until the first one is applied.
    r.step(Message(type=MT.MsgProp, frm=1, to=1, entries=(cc,)))
    assert r.raft_log.next_unstable_ents()[-1].type == EntryType.NORMAL


def test_new_leader_blocks_conf_changes_until_tail_applied() -> None:
    s = new_storage((1, 2), entries=ents(1, 1, 1))
    r = new_raft(1, (1, 2), storage=s)
    r.become_candidate()
    r.become_leader()
    assert r.pending_conf_index == 2


def test_cannot_campaign_with_unapplied_conf_change() -> None:
    cc = Entry(
        term=1, index=1, type=EntryType.CONF_CHANGE, data=ConfChange(ConfChangeType.ADD_NODE, 3).marshal()
    )
    s = new_storage((1, 2), entries=[cc])
    r = new_raft(1, (1, 2), storage=s)
    r.load_state(HardState(term=1, commit=1))

    r.step(hup(1))
    assert r.state == ST.FOLLOWER

    r.raft_log.applied_to(1, 0)
    r.step(hup(1))
    assert r.state == ST.CANDIDATE


def test_removed_leader_drops_proposals() -> None:
    r, _ = leader_with_followers()
    r.apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    assert r.state == ST.LEADER
    with pytest.raises(ProposalDroppedError):
        r.step(prop())


def test_step_down_on_removal() -> None:
    r, _ = leader_with_followers(step_down_on_removal=True)
    r.apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    assert r.state == ST.FOLLOWER


# -- proposals -----------------------------------------------------------------------------------------


def test_proposal_without_leader_is_dropped() -> None:
    r = new_raft(1, (1, 2, 3))
    with pytest.raises(ProposalDroppedError):
        r.step(prop())
    r.step(hup(1))
    with pytest.raises(ProposalDroppedError):
        r.step(prop())


def test_follower_forwards_proposal() -> None:
    r = new_raft(2, (1, 2, 3))
    r.become_follower(1, 1)
    r.step(Message(type=MT.MsgProp, frm=2, to=2, entries=(Entry(term=0, index=0, data=b"d"),)))
    [m] = read_messages(r)
    assert (m.type, m.to, m.term, m.entries[0].data) == (MT.MsgProp, 1, 0, b"d")


def test_disable_proposal_forwarding() -> None:
    r = new_raft(2, (1, 2, 3), disable_proposal_forwarding=True)
    r.become_follower(1, 1)
    with pytest.raises(ProposalDroppedError):
        r.step(prop())


def test_uncommitted_entries_size_limit() -> None:
    r, s = leader_with_followers(max_uncommitted_entries_size=10)
    r.step(prop(b"0123456789abc"))  # larger than the limit but nothing is uncommitted: accepted
    with pytest.raises(ProposalDroppedError):
        r.step(prop(b"x"))
    # Empty entries never count.
    r.step(prop(b""))
    # Applying the tail frees the budget.
    for m in read_messages(r):
        if m.type == MT.MsgApp:
            r.step(accept_and_reply(m))
    committed = persist_and_apply(r, s)
    r.reduce_uncommitted_size(sum(len(e.data) for e in committed))
    r.step(prop(b"x"))


def test_leader_uncommitted_size_resets_on_new_term() -> None:
    r, _ = leader_with_followers(max_uncommitted_entries_size=10)
    r.step(prop(b"0123456789"))
    assert r.uncommitted_size == 10
    r.become_follower(2, 2)
    assert r.uncommitted_size == 0


# -- replication and flow control ---------------------------------------------------------------


def test_heartbeat_commit_is_capped_at_match() -> None:
    r, _ = leader_with_followers()
    r.step(prop())
    for m in read_messages(r):
        if m.type == MT.MsgApp and m.to == 2:
            r.step(accept_and_reply(m))
    read_messages(r)
    assert r.raft_log.committed == 2

    r.step(Message(type=MT.MsgBeat, frm=1, to=1))

    # 3 has only acknowledged index 1: it must not be told that 2 is committed.
    commits = {m.to: m.commit for m in read_messages(r) if m.type == MT.MsgHeartbeat}
    assert commits == {2: 2, 3: 1}


def test_probe_sends_one_message_until_response() -> None:
    r, _ = leader_with_followers()
    r.trk.progress[2].become_probe()
    read_messages(r)
    for _ in range(3):
        r.step(prop())
    to_2 = [m for m in read_messages(r) if m.to == 2]
    assert len(to_2) == 1
    assert r.trk.progress[2].is_paused()
    # A heartbeat response unpauses the probe.
    r.step(Message(type=MT.MsgHeartbeatResp, frm=2, to=1, term=1))
    assert [m.type for m in read_messages(r) if m.to == 2] == [MT.MsgApp]


def test_replicate_respects_inflight_limit() -> None:
    r, _ = leader_with_followers(max_inflight_msgs=3)
    read_messages(r)
    for _ in range(10):
        r.step(prop())
    to_2 = [m for m in read_messages(r) if m.to == 2]
    assert len(to_2) == 3
    pr = r.trk.progress[2]
    assert pr.state == ProgressState.REPLICATE
    assert pr.inflights.full()
    # Acknowledging the first frees a slot, and the remaining entries go out in one message.
    r.step(accept_and_reply(to_2[0]))
    more = [m for m in read_messages(r) if m.to == 2 and m.entries]
    assert len(more) == 1
    assert [e.index for e in more[0].entries] == list(range(5, 12))


def test_max_size_per_msg_limits_batches() -> None:
    r, _ = leader_with_followers(max_size_per_msg=1)
    r.trk.progress[2].become_probe()
    for _ in range(3):
        r.step(prop(b"abc"))
    read_messages(r)
    r.step(Message(type=MT.MsgHeartbeatResp, frm=2, to=1, term=1))
    [m] = [m for m in read_messages(r) if m.to == 2]
    assert len(m.entries) == 1


def test_reject_hint_skips_divergent_term() -> None:
    """The follower's hint lets the leader skip a whole divergent term in one round trip."""
    leader_log = ents(1, 1, 1, 1, 4, 4, 4, 4)
    s = new_storage((1, 2), entries=leader_log)
    r = new_raft(1, (1, 2), storage=s)
    r.load_state(HardState(term=5, commit=3))
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    pr = r.trk.progress[2]
    assert pr.next == 8

    # The follower's log is 1 1 1 2 2 2 2 3 3 (diverging after index 3).
    r.step(Message(type=MT.MsgAppResp, frm=2, to=1, term=6, index=7, reject=True, reject_hint=7, log_term=3))

    # The leader's last entry with term <= 3 is index 3: probe right after it.
    assert pr.next == 4
    [m] = [m for m in read_messages(r) if m.to == 2]
    assert (m.index, m.log_term) == (3, 1)


def test_unreachable_moves_replicate_to_probe() -> None:
    r, _ = leader_with_followers()
    assert r.trk.progress[2].state == ProgressState.REPLICATE
    r.step(Message(type=MT.MsgUnreachable, frm=2, to=1))
    assert r.trk.progress[2].state == ProgressState.PROBE


# -- snapshots -------------------------------------------------------------------------------------


def compacted_leader() -> tuple[Raft, MemoryStorage]:
    s = new_storage((1, 2), entries=ents(1, 1, 1, 1, 1, 1))
    s.create_snapshot(4, ConfState(voters=(1, 2)), b"data")
    s.compact(4)
    r = new_raft(1, (1, 2), storage=s)
    r.load_state(HardState(term=1, commit=5))
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    return r, s


def test_snapshot_sent_when_entries_compacted() -> None:
    r, _ = compacted_leader()
    pr = r.trk.progress[2]
    pr.recent_active = True
    pr.next = 2  # the follower needs entry 2, which is compacted

    r.send_append(2)

    [m] = read_messages(r)
    assert m.type == MT.MsgSnap
    assert m.snapshot is not None and m.snapshot.metadata.index == 4
    assert pr.state == ProgressState.SNAPSHOT
    assert pr.pending_snapshot == 4
    assert pr.is_paused()


def test_snapshot_not_sent_to_inactive_peer() -> None:
    r, _ = compacted_leader()
    pr = r.trk.progress[2]
    pr.recent_active = False
    pr.next = 2
    r.send_append(2)
    assert read_messages(r) == []
    assert pr.state == ProgressState.PROBE


@pytest.mark.parametrize(("failed", "want_next"), [(False, 5), (True, 1)])
def test_snapshot_status_report(failed: bool, want_next: int) -> None:
    r, _ = compacted_leader()
    pr = r.trk.progress[2]
    pr.become_snapshot(4)

    r.step(Message(type=MT.MsgSnapStatus, frm=2, to=1, reject=failed))

    assert pr.state == ProgressState.PROBE
    assert pr.next == want_next
    assert pr.pending_snapshot == 0
    assert pr.msg_app_flow_paused


def test_snapshot_ack_via_app_resp_resumes_replication() -> None:
    r, _ = compacted_leader()
    pr = r.trk.progress[2]
    pr.become_snapshot(4)

    r.step(Message(type=MT.MsgAppResp, frm=2, to=1, term=r.term, index=4))

    assert pr.state == ProgressState.REPLICATE
    assert pr.match == 4


def test_follower_restores_snapshot() -> None:
    snap = Snapshot(metadata=SnapshotMetadata(conf_state=ConfState(voters=(1, 2, 3)), index=11, term=11))
    r = new_raft(1, (1, 2))

    r.step(Message(type=MT.MsgSnap, frm=2, to=1, term=11, snapshot=snap))

    assert r.raft_log.last_index() == 11
    assert r.raft_log.committed == 11
    assert r.trk.voter_nodes() == [1, 2, 3]
    assert r.raft_log.next_unstable_snapshot() == snap
    [m] = read_messages(r)
    assert (m.type, m.index) == (MT.MsgAppResp, 11)
    # Until the snapshot is persisted, the node may not campaign.
    assert not r.promotable()


def test_stale_snapshot_is_ignored() -> None:
    s = new_storage((1, 2), entries=ents(1, 1, 1, 1))
    r = new_raft(1, (1, 2), storage=s)
    r.load_state(HardState(term=1, commit=3))
    snap = Snapshot(metadata=SnapshotMetadata(conf_state=ConfState(voters=(1, 2)), index=2, term=1))
    r.become_follower(1, 2)

    r.step(Message(type=MT.MsgSnap, frm=2, to=1, term=1, snapshot=snap))

    assert r.raft_log.next_unstable_snapshot() is None
    [m] = read_messages(r)
    assert (m.type, m.index) == (MT.MsgAppResp, 3)


def test_snapshot_matching_log_fast_forwards_commit() -> None:
    s = new_storage((1, 2), entries=ents(1, 1, 1, 1))
    r = new_raft(1, (1, 2), storage=s)
    r.load_state(HardState(term=1, commit=1))
    snap = Snapshot(metadata=SnapshotMetadata(conf_state=ConfState(voters=(1, 2)), index=2, term=1))

    assert not r.restore(snap)
    assert r.raft_log.committed == 2
    assert r.raft_log.last_index() == 3


def test_snapshot_without_us_is_ignored() -> None:
    r = new_raft(1, (1, 2))
    snap = Snapshot(metadata=SnapshotMetadata(conf_state=ConfState(voters=(2, 3)), index=11, term=11))
    assert not r.restore(snap)
    assert r.raft_log.last_index() == 0


# -- leadership transfer ---------------------------------------------------------------------------


def test_transfer_to_up_to_date_follower() -> None:
    n = Network(None, None, None)
    elect(n, 1)

    n.send(Message(type=MT.MsgTransferLeader, frm=2, to=1))

    assert n.raft(2).state == ST.LEADER
    assert n.raft(1).state == ST.FOLLOWER
    assert n.raft(1).lead == 2


def test_transfer_to_lagging_follower_waits_for_catch_up() -> None:
    n = Network(None, None, None)
    elect(n, 1)
    n.cut(1, 3)
    n.send(prop())
    n.recover()
    lead = n.raft(1)
    assert lead.trk.progress[3].match < lead.raft_log.last_index()

    n.ignore(MT.MsgApp)
    n.send(Message(type=MT.MsgTransferLeader, frm=3, to=1))
    assert lead.lead_transferee == 3
    assert lead.state == ST.LEADER
    with pytest.raises(ProposalDroppedError):
        lead.step(prop())

    n.recover()
    lead.send_append(3)
    n.send(*read_messages(lead))
    assert n.raft(3).state == ST.LEADER


def test_transfer_aborts_after_election_timeout() -> None:
    n = Network(None, None, None)
    lead = elect(n, 1)
    n.isolate(3)
    n.send(Message(type=MT.MsgTransferLeader, frm=3, to=1))
    assert lead.lead_transferee == 3
    for _ in range(lead.election_timeout):
        lead.tick()
    assert lead.lead_transferee == NONE
    lead.step(prop())


@pytest.mark.parametrize("transferee", [1, 4])
def test_transfer_to_self_or_learner_is_ignored(transferee: int) -> None:
    s = new_storage((1, 2, 3), learners=(4,))
    r = new_raft(1, (1, 2, 3), learners=(4,), storage=s)
    r.become_candidate()
    r.become_leader()
    r.step(Message(type=MT.MsgTransferLeader, frm=transferee, to=1))
    assert r.lead_transferee == NONE
    assert r.state == ST.LEADER


def test_timeout_now_ignored_by_learner() -> None:
    r = new_raft(2, (1,), learners=(2,))
    r.become_follower(1, 1)
    r.step(Message(type=MT.MsgTimeoutNow, frm=1, to=2, term=1))
    assert r.state == ST.FOLLOWER


# -- ReadIndex -------------------------------------------------------------------------------------


def read_index_msg(ctx: bytes, frm: int = NONE) -> Message:
    return Message(type=MT.MsgReadIndex, frm=frm, entries=(Entry(term=0, index=0, data=ctx),))


def test_read_index_safe_needs_quorum_ack() -> None:
    r, _ = leader_with_followers()
    read_messages(r)

    r.step(read_index_msg(b"ctx"))
    beats = [m for m in read_messages(r) if m.type == MT.MsgHeartbeat]
    assert {m.to for m in beats} == {2, 3}
    assert all(m.context == b"ctx" for m in beats)
    assert r.read_states == []

    r.step(Message(type=MT.MsgHeartbeatResp, frm=2, to=1, term=1, context=b"ctx"))

    assert r.read_states == [ReadState(index=1, request_ctx=b"ctx")]


def test_read_index_lease_based_answers_immediately() -> None:
    r, _ = leader_with_followers(check_quorum=True, read_only_option=ReadOnlyOption.LEASE_BASED)
    r.step(read_index_msg(b"ctx"))
    assert r.read_states == [ReadState(index=1, request_ctx=b"ctx")]


def test_read_index_held_until_commit_in_term() -> None:
    r = new_raft(1, (1, 2, 3))
    r.become_candidate()
    r.become_leader()
    read_messages(r)

    r.step(read_index_msg(b"ctx"))
    assert [m for m in read_messages(r) if m.type == MT.MsgHeartbeat] == []
    assert len(r.pending_read_index_messages) == 1

    r.step(Message(type=MT.MsgAppResp, frm=2, to=1, term=1, index=1))
    assert r.raft_log.committed == 1
    assert r.pending_read_index_messages == []
    assert any(m.type == MT.MsgHeartbeat and m.context == b"ctx" for m in read_messages(r))


def test_read_index_from_follower_is_answered_by_message() -> None:
    r, _ = leader_with_followers()
    r.step(read_index_msg(b"ctx", frm=2))
    r.step(Message(type=MT.MsgHeartbeatResp, frm=3, to=1, term=1, context=b"ctx"))
    resp = [m for m in read_messages(r) if m.type == MT.MsgReadIndexResp]
    assert [(m.to, m.index, m.entries[0].data) for m in resp] == [(2, 1, b"ctx")]

    f = new_raft(2, (1, 2, 3))
    f.become_follower(1, 1)
    f.step(resp[0])
    assert f.read_states == [ReadState(index=1, request_ctx=b"ctx")]


def test_read_index_quorum_ack_confirms_earlier_requests() -> None:
    r, _ = leader_with_followers()
    for ctx in (b"a", b"b", b"c"):
        r.step(read_index_msg(ctx))
    # An ack for the newest context releases the older ones too.
    r.step(Message(type=MT.MsgHeartbeatResp, frm=2, to=1, term=1, context=b"c"))
    assert [rs.request_ctx for rs in r.read_states] == [b"a", b"b", b"c"]


def test_follower_forwards_read_index_or_drops_without_leader() -> None:
    r = new_raft(2, (1, 2, 3))
    r.step(read_index_msg(b"ctx"))
    assert read_messages(r) == []
    r.become_follower(1, 1)
    r.step(read_index_msg(b"ctx"))
    [m] = read_messages(r)
    assert (m.type, m.to, m.frm, m.term) == (MT.MsgReadIndex, 1, 2, 0)


# -- invariants ------------------------------------------------------------------------------------


def test_invalid_transitions_raise() -> None:
    r, _ = leader_with_followers()
    with pytest.raises(InvariantError):
        r.become_candidate()
    f = new_raft(1, (1, 2, 3))
    with pytest.raises(InvariantError):
        f.become_leader()


def test_message_term_stamping() -> None:
    r = new_raft(1, (1, 2, 3))
    with pytest.raises(InvariantError):
        r.send(Message(type=MT.MsgVote, to=2))
    with pytest.raises(InvariantError):
        r.send(Message(type=MT.MsgApp, to=2, term=3))
    with pytest.raises(InvariantError):
        r.send(Message(type=MT.MsgHeartbeat, to=1))


def test_vote_responses_wait_for_persistence() -> None:
    r = new_raft(1, (1, 2, 3))
    r.step(Message(type=MT.MsgVote, frm=2, to=1, term=1))
    assert r.msgs == []
    assert [m.type for m in r.msgs_after_append] == [MT.MsgVoteResp]
    advance_messages_after_append(r)
    assert [m.type for m in r.msgs] == [MT.MsgVoteResp]
