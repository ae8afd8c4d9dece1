"""The rules of the Raft paper (Ongaro & Ousterhout, §5.1-5.4), one test per rule.

Each test is laid out as init (build the state), act (feed messages or ticks), check.
"""

from __future__ import annotations

import pytest

from server.raft.raft import Raft
from server.raft.raftpb import NONE, Entry, HardState, Message, MessageType
from server.raft.status import StateType

from .helpers import (
    BlackHole,
    Network,
    accept_and_reply,
    advance_messages_after_append,
    commit_noop_entry,
    ents,
    new_raft,
    new_storage,
    read_messages,
)

MT = MessageType
ST = StateType


def make_state(r: Raft, state: StateType) -> None:
    if state == ST.FOLLOWER:
        r.become_follower(1, 2)
    elif state == ST.CANDIDATE:
        r.become_candidate()
    elif state == ST.LEADER:
        r.become_candidate()
        r.become_leader()


def sort_msgs(msgs: list[Message]) -> list[Message]:
    return sorted(msgs, key=lambda m: (m.to, m.type, m.index))


# -- §5.1: terms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [ST.FOLLOWER, ST.CANDIDATE, ST.LEADER])
def test_update_term_from_message(state: StateType) -> None:
    """A server seeing a larger term adopts it and reverts to follower."""
    r = new_raft(1, (1, 2, 3))
    make_state(r, state)

    r.step(Message(type=MT.MsgApp, frm=2, to=1, term=2))

    assert r.term == 2
    assert r.state == ST.FOLLOWER
    assert r.lead == 2


@pytest.mark.parametrize("msg_type", [MT.MsgApp, MT.MsgHeartbeat, MT.MsgVote, MT.MsgAppResp])
def test_reject_stale_term_message(msg_type: MessageType) -> None:
    """A request with a stale term is ignored (no state change, no response)."""
    r = new_raft(1, (1, 2, 3))
    r.load_state(HardState(term=2))
    r.become_follower(2, NONE)

    r.step(Message(type=msg_type, frm=2, to=1, term=1, index=5, log_term=1))

    assert r.term == 2
    assert r.state == ST.FOLLOWER
    assert r.lead == NONE
    assert read_messages(r) == []


def test_start_as_follower() -> None:
    """Servers start up as followers."""
    r = new_raft(1, (1, 2, 3))
    assert r.state == ST.FOLLOWER
    assert r.term == 0


def test_leader_bcast_beat() -> None:
    """A leader sends heartbeats to every follower each heartbeat interval."""
    r = new_raft(1, (1, 2, 3), heartbeat=2)
    r.become_candidate()
    r.become_leader()
    read_messages(r)

    r.tick()
    assert read_messages(r) == []
    r.tick()

    msgs = sort_msgs(read_messages(r))
    assert msgs == [
        Message(type=MT.MsgHeartbeat, frm=1, to=2, term=1),
        Message(type=MT.MsgHeartbeat, frm=1, to=3, term=1),
    ]


# -- §5.2: leader election -----------------------------------------------------------------------


@pytest.mark.parametrize("state", [ST.FOLLOWER, ST.CANDIDATE])
def test_nonleader_start_election(state: StateType) -> None:
    """Without hearing from a leader for an election timeout, a node starts a new election:
    it increments its term, votes for itself and asks every other voter for its vote."""
    et = 10
    r = new_raft(1, (1, 2, 3), election=et)
    make_state(r, state)

    for _ in range(2 * et - 1):
        r.tick()
    advance_messages_after_append(r)

    assert r.term == 2
    assert r.state == ST.CANDIDATE
    assert r.vote == 1
    assert r.trk.votes[1] is True
    assert sort_msgs(read_messages(r)) == [
        Message(type=MT.MsgVote, frm=1, to=2, term=2, log_term=0, index=0),
        Message(type=MT.MsgVote, frm=1, to=3, term=2, log_term=0, index=0),
    ]


@pytest.mark.parametrize(
    ("size", "votes", "want"),
    [
        (1, {}, ST.LEADER),
        (3, {2: True, 3: True}, ST.LEADER),
        (3, {2: True}, ST.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, ST.LEADER),
        (5, {2: True, 3: True, 4: True}, ST.LEADER),
        (5, {2: True, 3: True}, ST.LEADER),
        # A majority rejected: back to follower.
        (3, {2: False, 3: False}, ST.FOLLOWER),
        (5, {2: False, 3: False, 4: False, 5: False}, ST.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, ST.FOLLOWER),
        # Undecided: still a candidate.
        (3, {}, ST.CANDIDATE),
        (5, {2: True}, ST.CANDIDATE),
        (5, {2: False, 3: False}, ST.CANDIDATE),
        (5, {}, ST.CANDIDATE),
    ],
)
def test_leader_election_in_one_round_rpc(size: int, votes: dict[int, bool], want: StateType) -> None:
    """A candidate wins with votes from a majority, loses with rejections from a majority."""
    r = new_raft(1, tuple(range(1, size + 1)))

    r.step(Message(type=MT.MsgHup, frm=1, to=1))
    advance_messages_after_append(r)
    for voter, granted in votes.items():
        r.step(Message(type=MT.MsgVoteResp, frm=voter, to=1, term=r.term, reject=not granted))

    assert r.state == want
    assert r.term == 1


@pytest.mark.parametrize(
    ("vote", "candidate", "want_reject"),
    [
        (NONE, 2, False),
        (NONE, 3, False),
        (2, 2, False),
        (3, 3, False),
        (2, 3, True),
        (3, 2, True),
    ],
)
def test_follower_vote(vote: int, candidate: int, want_reject: bool) -> None:
    """Each server votes for at most one candidate per term, first come first served."""
    r = new_raft(1, (1, 2, 3))
    r.load_state(HardState(term=1, vote=vote))

    r.step(Message(type=MT.MsgVote, frm=candidate, to=1, term=1))

    assert r.msgs_after_append == [
        Message(type=MT.MsgVoteResp, frm=1, to=candidate, term=1, reject=want_reject)
    ]


@pytest.mark.parametrize("term", [1, 2])
def test_candidate_fallback(term: int) -> None:
    """A candidate receiving an AppendEntries from a leader of at least its term steps down."""
    r = new_raft(1, (1, 2, 3))
    r.step(Message(type=MT.MsgHup, frm=1, to=1))
    assert r.state == ST.CANDIDATE

    r.step(Message(type=MT.MsgApp, frm=2, to=1, term=term))

    assert r.state == ST.FOLLOWER
    assert r.term == term
    assert r.lead == 2


@pytest.mark.parametrize("state", [ST.FOLLOWER, ST.CANDIDATE])
def test_election_timeout_randomized(state: StateType) -> None:
    """Election timeouts are drawn from [et, 2*et) and every value in that range occurs."""
    et = 10
    r = new_raft(1, (1, 2, 3), election=et, seed=7)
    seen: set[int] = set()
    for _ in range(50 * et):
        if state == ST.FOLLOWER:
            r.become_follower(r.term + 1, 2)
        else:
            r.become_candidate()
        read_messages(r)
        ticks = 0
        while not read_messages(r):
            r.tick()
            ticks += 1
        seen.add(ticks)
    assert seen == set(range(et, 2 * et))


@pytest.mark.parametrize("state", [ST.FOLLOWER, ST.CANDIDATE])
def test_election_timeouts_rarely_conflict(state: StateType) -> None:
    """Randomized timeouts make it unlikely that several nodes time out in the same tick."""
    et, size = 10, 5
    ids = tuple(range(1, size + 1))
    rs = [new_raft(i, ids, election=et, seed=100 + i) for i in ids]
    conflicts = 0
    rounds = 300
    for _ in range(rounds):
        for r in rs:
            if state == ST.FOLLOWER:
                r.become_follower(r.term + 1, NONE)
            else:
                r.become_candidate()
            read_messages(r)
        timed_out = 0
        while timed_out == 0:
            for r in rs:
                r.tick()
                if read_messages(r):
                    timed_out += 1
        if timed_out > 1:
            conflicts += 1
    assert conflicts / rounds <= 0.3


def test_election_timeout_is_deterministic_for_a_seed() -> None:
    """The jitter comes only from the injected rng: equal seeds give equal timeouts."""
    a = [new_raft(1, (1, 2, 3), seed=42) for _ in range(2)]
    for _ in range(20):
        for r in a:
            r.become_follower(r.term + 1, NONE)
        assert a[0].randomized_election_timeout == a[1].randomized_election_timeout


# -- §5.3: log replication -----------------------------------------------------------------------


def test_leader_start_replication() -> None:
    """The leader appends a proposal to its log and sends AppendEntries to every follower."""
    s = new_storage((1, 2, 3))
    r = new_raft(1, storage=s)
    r.become_candidate()
    r.become_leader()
    commit_noop_entry(r, s)
    li = r.raft_log.last_index()

    r.step(Message(type=MT.MsgProp, frm=1, to=1, entries=(Entry(term=0, index=0, data=b"some data"),)))

    assert r.raft_log.last_index() == li + 1
    assert r.raft_log.committed == li
    want_ents = (Entry(term=1, index=li + 1, data=b"some data"),)
    assert sort_msgs(read_messages(r)) == [
        Message(type=MT.MsgApp, frm=1, to=2, term=1, index=li, log_term=1, entries=want_ents, commit=li),
        Message(type=MT.MsgApp, frm=1, to=3, term=1, index=li, log_term=1, entries=want_ents, commit=li),
    ]
    assert r.raft_log.next_unstable_ents() == list(want_ents)


def test_leader_commit_entry() -> None:
    """Once replicated on a majority, an entry is committed and the commit index is sent out."""
    s = new_storage((1, 2, 3))
    r = new_raft(1, storage=s)
    r.become_candidate()
    r.become_leader()
    commit_noop_entry(r, s)
    li = r.raft_log.last_index()
    r.step(Message(type=MT.MsgProp, frm=1, to=1, entries=(Entry(term=0, index=0, data=b"some data"),)))

    for m in read_messages(r):
        r.step(accept_and_reply(m))

    assert r.raft_log.committed == li + 1
    assert r.raft_log.next_committed_ents(True) == [Entry(term=1, index=li + 1, data=b"some data")]
    msgs = sort_msgs(read_messages(r))
    assert [(m.to, m.type, m.commit) for m in msgs] == [(2, MT.MsgApp, li + 1), (3, MT.MsgApp, li + 1)]


@pytest.mark.parametrize(
    ("size", "acceptors", "want_committed"),
    [
        (1, set(), True),
        (3, set(), False),
        (3, {2}, True),
        (3, {2, 3}, True),
        (5, set(), False),
        (5, {2}, False),
        (5, {2, 3}, True),
        (5, {2, 3, 4}, True),
        (5, {2, 3, 4, 5}, True),
    ],
)
def test_leader_acknowledge_commit(size: int, acceptors: set[int], want_committed: bool) -> None:
    """An entry is committed once the leader (counting itself) has it on a majority."""
    ids = tuple(range(1, size + 1))
    s = new_storage(ids)
    r = new_raft(1, storage=s)
    r.become_candidate()
    r.become_leader()
    commit_noop_entry(r, s)
    li = r.raft_log.last_index()
    r.step(Message(type=MT.MsgProp, frm=1, to=1, entries=(Entry(term=0, index=0, data=b"some data"),)))

    for m in read_messages(r):
        if m.to in acceptors:
            r.step(accept_and_reply(m))

    assert (r.raft_log.committed > li) == want_committed


@pytest.mark.parametrize(
    "log",
    [
        [],
        ents(1, 2),
        ents(1, 1, 2),
        ents(1, 1),
    ],
)
def test_leader_commit_preceding_entries(log: list[Entry]) -> None:
    """Committing an entry of the current term also commits all entries before it."""
    s = new_storage((1, 2, 3), entries=log)
    r = new_raft(1, storage=s)
    r.load_state(HardState(term=2))
    r.become_candidate()
    r.become_leader()

    r.step(Message(type=MT.MsgProp, frm=1, to=1, entries=(Entry(term=0, index=0, data=b"some data"),)))
    for m in read_messages(r):
        r.step(accept_and_reply(m))

    li = len(log)
    assert r.raft_log.next_committed_ents(True) == [
        *log,
        Entry(term=3, index=li + 1),
        Entry(term=3, index=li + 2, data=b"some data"),
    ]


@pytest.mark.parametrize(
    ("entries", "commit"),
    [
        ([Entry(term=1, index=1, data=b"some data")], 1),
        ([Entry(term=1, index=1, data=b"some data"), Entry(term=1, index=2, data=b"some data2")], 2),
        ([Entry(term=1, index=1, data=b"some data2"), Entry(term=1, index=2, data=b"some data")], 2),
        ([Entry(term=1, index=1, data=b"some data"), Entry(term=1, index=2, data=b"some data2")], 1),
    ],
)
def test_follower_commit_entry(entries: list[Entry], commit: int) -> None:
    """A follower commits (and hands out for applying) entries up to the leader's commit index."""
    r = new_raft(1, (1, 2, 3))
    r.become_follower(1, 2)

    r.step(Message(type=MT.MsgApp, frm=2, to=1, term=1, entries=tuple(entries), commit=commit))

    assert r.raft_log.committed == commit
    assert r.raft_log.next_committed_ents(True) == entries[:commit]


@pytest.mark.parametrize(
    ("log_term", "index", "want_index", "want_reject", "want_hint", "want_log_term"),
    [
        # Matches the entry at the given index: accepted.
        (0, 0, 1, False, 0, 0),
        (1, 1, 1, False, 0, 0),
        (2, 2, 2, False, 0, 0),
        # Term mismatch at an existing index: rejected, hint at the last entry with a smaller term.
        (1, 2, 2, True, 1, 1),
        # Index beyond the log: rejected, hint at our last entry.
        (3, 3, 3, True, 2, 2),
    ],
)
def test_follower_check_msg_app(
    log_term: int, index: int, want_index: int, want_reject: bool, want_hint: int, want_log_term: int
) -> None:
    """A follower rejects an AppendEntries whose preceding entry it does not have."""
    s = new_storage((1, 2, 3), entries=ents(1, 1, 2))
    r = new_raft(1, storage=s)
    r.load_state(HardState(commit=1))
    r.become_follower(2, 2)

    r.step(Message(type=MT.MsgApp, frm=2, to=1, term=2, log_term=log_term, index=index))

    assert read_messages(r) == [
        Message(
            type=MT.MsgAppResp,
            frm=1,
            to=2,
            term=2,
            index=want_index,
            reject=want_reject,
            reject_hint=want_hint,
            log_term=want_log_term,
        )
    ]


@pytest.mark.parametrize(
    ("index", "log_term", "new", "want_log", "want_unstable"),
    [
        (2, 2, ents(3, 3), ents(1, 1, 2, 3), ents(3, 3)),
        # A conflicting entry and everything after it is replaced.
        (1, 1, ents(2, 3, 4), ents(1, 1, 3, 4), ents(2, 3, 4)),
        # Entries already present are left alone.
        (0, 0, ents(1, 1), ents(1, 1, 2), []),
        (0, 0, ents(1, 3), ents(1, 3), ents(1, 3)),
    ],
)
def test_follower_append_entries(
    index: int, log_term: int, new: list[Entry], want_log: list[Entry], want_unstable: list[Entry]
) -> None:
    """A follower appends new entries, deleting a conflicting suffix of its log first."""
    s = new_storage((1, 2, 3), entries=ents(1, 1, 2))
    r = new_raft(1, storage=s)
    r.become_follower(2, 2)

    r.step(Message(type=MT.MsgApp, frm=2, to=1, term=2, log_term=log_term, index=index, entries=tuple(new)))

    assert r.raft_log.all_entries() == want_log
    assert r.raft_log.next_unstable_ents() == want_unstable


LEADER_LOG_TERMS = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)


@pytest.mark.parametrize(
    "follower_terms",
    [
        # The follower scenarios of Figure 7 in the Raft paper.
        (1, 1, 1, 4, 4, 5, 5, 6, 6),
        (1, 1, 1, 4),
        (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
        (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
        (1, 1, 1, 4, 4, 4, 4),
        (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
    ],
)
def test_leader_sync_follower_log(follower_terms: tuple[int, ...]) -> None:
    """A new leader brings any follower's log in line with its own (Figure 7)."""
    term = 8
    lead_storage = new_storage((1, 2, 3), entries=ents(1, *LEADER_LOG_TERMS))
    lead = new_raft(1, storage=lead_storage)
    lead.load_state(HardState(commit=lead.raft_log.last_index(), term=term))
    follower_storage = new_storage((1, 2, 3), entries=ents(1, *follower_terms))
    follower = new_raft(2, storage=follower_storage)
    follower.load_state(HardState(term=term - 1))
    # Node 3 votes for the leader but otherwise swallows all messages.
    n = Network(lead, follower, BlackHole())

    n.send(Message(type=MT.MsgHup, frm=1, to=1))
    n.send(Message(type=MT.MsgVoteResp, frm=3, to=1, term=term + 1))
    n.send(Message(type=MT.MsgProp, frm=1, to=1, entries=(Entry(term=0, index=0),)))

    assert lead.state == ST.LEADER
    assert follower.raft_log.all_entries() == lead.raft_log.all_entries()
    assert follower.raft_log.committed == lead.raft_log.committed


# -- §5.4: safety ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "want_term"),
    [
        (ents(1, 1), 2),
        (ents(1, 1, 2), 3),
    ],
)
def test_vote_request(log: list[Entry], want_term: int) -> None:
    """Vote requests carry the term and index of the candidate's last log entry."""
    r = new_raft(1, (1, 2, 3))
    r.step(Message(type=MT.MsgApp, frm=2, to=1, term=want_term - 1, log_term=0, index=0, entries=tuple(log)))
    read_messages(r)

    for _ in range(2 * r.election_timeout - 1):
        r.tick_election()

    msgs = sort_msgs(read_messages(r))
    assert [(m.type, m.to, m.term, m.index, m.log_term) for m in msgs] == [
        (MT.MsgVote, 2, want_term, log[-1].index, log[-1].term),
        (MT.MsgVote, 3, want_term, log[-1].index, log[-1].term),
    ]


@pytest.mark.parametrize(
    ("log", "cand_log_term", "cand_index", "want_reject"),
    [
        # Same last term: the longer (or equally long) log is at least as up to date.
        (ents(1, 1), 1, 1, False),
        (ents(1, 1), 1, 2, False),
        (ents(1, 1, 1), 1, 1, True),
        # A higher last term wins regardless of length.
        (ents(1, 1), 2, 1, False),
        (ents(1, 1), 2, 2, False),
        (ents(1, 1, 1), 2, 1, False),
        # A lower last term loses regardless of length.
        (ents(1, 2), 1, 1, True),
        (ents(1, 2), 1, 2, True),
        (ents(1, 2, 2), 1, 1, True),
    ],
)
def test_voter(log: list[Entry], cand_log_term: int, cand_index: int, want_reject: bool) -> None:
    """A voter denies its vote to a candidate whose log is less up to date than its own."""
    r = new_raft(1, (1, 2), storage=new_storage((1, 2), entries=log))

    r.step(Message(type=MT.MsgVote, frm=2, to=1, term=3, log_term=cand_log_term, index=cand_index))

    msgs = read_messages(r)
    assert len(msgs) == 1
    assert msgs[0].type == MT.MsgVoteResp
    assert msgs[0].reject == want_reject


@pytest.mark.parametrize(
    ("acked_index", "want_commit"),
    [
        # Entries of older terms are never committed by counting replicas...
        (1, 0),
        (2, 0),
        # ...only an entry of the current term is (and with it everything before).
        (3, 3),
    ],
)
def test_leader_only_commits_log_from_current_term(acked_index: int, want_commit: int) -> None:
    s = new_storage((1, 2), entries=ents(1, 1, 2))
    r = new_raft(1, (1, 2), storage=s)
    r.load_state(HardState(term=2))
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    r.step(Message(type=MT.MsgProp, frm=1, to=1, entries=(Entry(term=0, index=0),)))

    r.step(Message(type=MT.MsgAppResp, frm=2, to=1, term=r.term, index=acked_index))
    advance_messages_after_append(r)

    assert r.raft_log.committed == want_commit


def test_figure_8_old_term_entry_not_committed_by_replica_count() -> None:
    """Figure 8: an entry of an older term on a majority may still be overwritten, so a leader
    must not count it as committed until an entry of its own term is replicated."""
    # S1 led term 2 and replicated 2/2 to S2 only; S5 led term 3 with 3/2 on itself.
    # S1 comes back as leader of term 4 and gets 2/2 onto S3: a majority holds 2/2.
    s1 = new_storage((1, 2, 3, 4, 5), entries=ents(1, 1, 2))
    r = new_raft(1, (1, 2, 3, 4, 5), storage=s1)
    r.load_state(HardState(term=3))
    r.become_candidate()
    r.become_leader()
    assert r.term == 4
    read_messages(r)

    for follower in (2, 3):
        r.step(Message(type=MT.MsgAppResp, frm=follower, to=1, term=4, index=2))
    advance_messages_after_append(r)

    # 2/2 is on S1, S2, S3 but is from term 2: not committed.
    assert r.raft_log.committed == 0
    # Once the term-4 entry (index 3) reaches the same majority, both commit.
    for follower in (2, 3):
        r.step(Message(type=MT.MsgAppResp, frm=follower, to=1, term=4, index=3))
    assert r.raft_log.committed == 3
