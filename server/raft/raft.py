"""The Raft state machine: elections, log replication, membership and reads.

`Raft` is driven entirely by its caller: tick() advances logical time, step() feeds a message
in. Outgoing messages accumulate in `msgs` (sendable now) and `msgs_after_append` (sendable
only once the current unstable state is durable); RawNode turns them into Ready structs.
Nothing here does I/O, reads a clock or uses global randomness.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .confchange import Changer, restore
from .log import LogSlice, RaftLog
from .log_unstable import EntryID
from .logger import DiscardLogger, Logger
from .quorum import VoteResult
from .raftpb import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
)
from .read_only import ReadOnly, ReadOnlyOption, ReadState
from .status import SoftState, StateType
from .storage import CompactedError, SnapshotTemporarilyUnavailableError, Storage, UnavailableError
from .tracker import Inflights, Progress, ProgressState, ProgressTracker, TrackerConfig
from .util import (
    NO_LIMIT,
    InvariantError,
    ents_size,
    payloads_size,
    vote_resp_msg_type,
)

__all__ = [
    "CampaignType",
    "Config",
    "ConfigError",
    "ProposalDroppedError",
    "Raft",
    "RaftError",
]

MT = MessageType


class RaftError(Exception):
    """Base class of the errors raft reports to its caller."""


class ProposalDroppedError(RaftError):
    """The proposal was not accepted: no known leader, a leadership transfer is in progress,
    forwarding is disabled, this node is no longer a member, or the uncommitted-size limit was
    reached. The caller may retry later."""


class ConfigError(RaftError, ValueError):
    """The Config is invalid."""


class CampaignType(enum.Enum):
    # First phase of an election when PreVote is enabled.
    PRE_ELECTION = "CampaignPreElection"
    # A normal election (or the second phase of one with PreVote).
    ELECTION = "CampaignElection"
    # An election forced by a leadership transfer; it overrides leader leases.
    TRANSFER = "CampaignTransfer"


_TRANSFER_CTX = CampaignType.TRANSFER.value.encode()


@dataclass(frozen=True, kw_only=True)
class Config:
    """Parameters of a raft node.

    election_tick must exceed heartbeat_tick (10x is customary). Byte limits use 0 for their
    documented default. `applied` is the last index already applied to the state machine, for
    restarts; entries up to it are not handed out again.
    """

    id: int
    storage: Storage
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    # Upper bound on the entry bytes of one MsgApp; 0 means at most one entry per message.
    max_size_per_msg: int = 1 << 20
    # Upper bound on the bytes of committed entries handed out but not yet applied;
    # 0 means max_size_per_msg.
    max_committed_size_per_ready: int = 0
    # Upper bound on the payload bytes of the leader's uncommitted tail; 0 means unlimited.
    max_uncommitted_entries_size: int = 0
    # Upper bound on MsgApps in flight to one follower in the replicate state.
    max_inflight_msgs: int = 256
    # Upper bound on payload bytes in flight to one follower; 0 means unlimited.
    max_inflight_bytes: int = 0
    check_quorum: bool = False
    pre_vote: bool = False
    read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE
    disable_proposal_forwarding: bool = False
    disable_conf_change_validation: bool = False
    # Whether a leader removed from (or demoted out of) the voters steps down at once.
    step_down_on_removal: bool = False
    # Source of election-timeout jitter; inject a seeded Random for reproducible runs.
    rng: random.Random = field(default_factory=random.Random)
    logger: Logger = field(default_factory=DiscardLogger)

    def validate(self) -> None:
        """Raise ConfigError if the configuration is unusable."""
        if self.id == NONE:
            raise ConfigError("cannot use none as id")
        if self.heartbeat_tick <= 0:
            raise ConfigError("heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise ConfigError("max inflight messages must be greater than 0")
        if self.max_inflight_bytes != 0 and self.max_inflight_bytes < self.max_size_per_msg:
            raise ConfigError("max inflight bytes must be >= max message size")
        if self.read_only_option == ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ConfigError("CheckQuorum must be enabled when ReadOnlyOption is LEASE_BASED")


class Raft:
    """One member of a raft group (see the module docstring)."""

    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.logger = c.logger
        self.rng = c.rng
        # At least one byte, so that a zero budget still hands out one entry per Ready.
        max_committed = max(1, c.max_committed_size_per_ready or c.max_size_per_msg)
        self.raft_log = RaftLog(c.storage, c.logger, max_committed)
        hs, cs = c.storage.initial_state()

        self.term = 0
        self.vote = NONE
        self.read_states: list[ReadState] = []
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size or NO_LIMIT
        self.trk = ProgressTracker(c.max_inflight_msgs, c.max_inflight_bytes)
        self.state = StateType.FOLLOWER
        self.is_learner = False
        # Messages that may be sent right away.
        self.msgs: list[Message] = []
        # Messages (MsgAppResp, MsgVoteResp, MsgPreVoteResp, possibly to ourselves) that may be
        # sent only after the unstable state they vouch for is durable.
        self.msgs_after_append: list[Message] = []
        self.lead = NONE
        # Non-zero while a leadership transfer to that node is in progress (thesis §3.10).
        self.lead_transferee = NONE
        # Invariant: no conf change may be proposed while applied < pending_conf_index, which
        # is at least the index of the latest conf change in the log.
        self.pending_conf_index = 0
        self.disable_conf_change_validation = c.disable_conf_change_validation
        # Leader-only estimate of the payload bytes of the uncommitted log tail.
        self.uncommitted_size = 0
        self.read_only = ReadOnly(c.read_only_option)
        # Ticks since the last election timeout (leader/candidate) or since the follower last
        # heard from a valid leader.
        self.election_elapsed = 0
        # Leader only: ticks since the last heartbeat broadcast.
        self.heartbeat_elapsed = 0
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.heartbeat_timeout = c.heartbeat_tick
        self.election_timeout = c.election_tick
        # In [election_timeout, 2*election_timeout); re-drawn whenever the term or role changes.
        self.randomized_election_timeout = c.election_tick
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        self.step_down_on_removal = c.step_down_on_removal
        # MsgReadIndex requests received before the leader committed an entry of its term.
        self.pending_read_index_messages: list[Message] = []

        last = self.raft_log.last_entry_id()
        cfg, prs = restore(Changer(self.trk, last.index), cs)
        got = self.switch_to_config(cfg, prs)
        _assert_conf_states_equivalent(cs, got)

        if not hs.is_empty():
            self.load_state(hs)
        if c.applied > 0:
            self.raft_log.applied_to(c.applied, 0)
        self.become_follower(self.term, NONE)

        self.logger.info(
            "%x starting: voters [%s], term %d, commit %d, applied %d, last entry %d (term %d)",
            self.id,
            ",".join(f"{i:x}" for i in self.trk.voter_nodes()),
            self.term,
            self.raft_log.committed,
            self.raft_log.applied,
            last.index,
            last.term,
        )

    # -- state accessors ---------------------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(lead=self.lead, raft_state=self.state)

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.raft_log.committed)

    # -- sending -----------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        """Queue m for sending, stamping our ID and (for most types) our term."""
        changes: dict[str, object] = {}
        if m.frm == NONE:
            changes["frm"] = self.id
        if m.type in (MT.MsgVote, MT.MsgVoteResp, MT.MsgPreVote, MT.MsgPreVoteResp):
            # Campaign messages carry the term they are about, which may not be ours (a
            # pre-vote asks about our next term; a vote response echoes the request).
            if m.term == 0:
                raise InvariantError(f"term should be set when sending {m.type.name}")
        else:
            if m.term != 0:
                raise InvariantError(f"term should not be set when sending {m.type.name} (was {m.term})")
            # Proposals and read requests are forwarded like local messages, without a term.
            if m.type not in (MT.MsgProp, MT.MsgReadIndex):
                changes["term"] = self.term
        if changes:
            m = dataclasses.replace(m, **changes)  # type: ignore[arg-type]
        if m.type in (MT.MsgAppResp, MT.MsgVoteResp, MT.MsgPreVoteResp):
            # Acks of appends and votes promise durability: they wait for the write.
            self.msgs_after_append.append(m)
        else:
            if m.to == self.id:
                raise InvariantError(f"message should not be self-addressed when sending {m.type.name}")
            self.msgs.append(m)

    def send_append(self, to: int) -> None:
        """Send a MsgApp (possibly empty, to convey the commit index) to `to`."""
        self.maybe_send_append(to, send_if_empty=True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send the next MsgApp to `to` if flow control allows; returns whether one was sent.

        Falls back to a snapshot when the entries the follower needs were compacted.
        """
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self.raft_log.term(prev_index)
        except (CompactedError, UnavailableError):
            # The log was compacted at or after pr.next: only a snapshot can catch it up.
            return self.maybe_send_snapshot(to, pr)

        ents: list[Entry] = []
        # With full inflights only empty MsgApps go out, so that a lost window cannot stall
        # replication: the empty append gets acked or rejected, either of which frees inflights.
        if pr.state != ProgressState.REPLICATE or not pr.inflights.full():
            try:
                ents = self.raft_log.entries(pr.next, self.max_msg_size)
            except CompactedError:
                return self.maybe_send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self.send(
            Message(
                type=MT.MsgApp,
                to=to,
                index=prev_index,
                log_term=prev_term,
                entries=tuple(ents),
                commit=self.raft_log.committed,
            )
        )
        pr.sent_entries(len(ents), payloads_size(ents))
        pr.sent_commit_to(self.raft_log.committed)
        return True

    def maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        """Send the latest snapshot to `to`; returns whether it was sent."""
        if not pr.recent_active:
            self.logger.debug("ignore sending snapshot to %x since it is not recently active", to)
            return False
        try:
            snapshot = self.raft_log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            self.logger.debug("%x: snapshot for %x is temporarily unavailable, will retry", self.id, to)
            return False
        if snapshot.is_empty():
            raise InvariantError("need non-empty snapshot")
        sindex, sterm = snapshot.metadata.index, snapshot.metadata.term
        self.logger.debug(
            "%x (first index %d, commit %d) sends snapshot at index %d, term %d to %x [%s]",
            self.id,
            self.raft_log.first_index(),
            self.raft_log.committed,
            sindex,
            sterm,
            to,
            pr,
        )
        pr.become_snapshot(sindex)
        self.logger.debug("%x pauses replication to %x until the snapshot is reported [%s]", self.id, to, pr)
        self.send(Message(type=MT.MsgSnap, to=to, snapshot=snapshot))
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        """Send a heartbeat; its commit is capped at the follower's match index.

        The follower may not have the leader's committed entries yet, and must never be told
        to commit an index it might hold a different entry for.
        """
        pr = self.trk.progress[to]
        commit = min(pr.match, self.raft_log.committed)
        self.send(Message(type=MT.MsgHeartbeat, to=to, commit=commit, context=ctx))
        pr.sent_commit_to(commit)

    def bcast_append(self) -> None:
        """Send MsgApps to every peer that is not up to date (and flow control allows)."""
        for pid, _ in self.trk.items():
            if pid != self.id:
                self.send_append(pid)

    def bcast_heartbeat(self) -> None:
        """Heartbeat every peer, piggybacking the newest pending read request context."""
        self.bcast_heartbeat_with_ctx(self.read_only.last_pending_request_ctx())

    def bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        for pid, _ in self.trk.items():
            if pid != self.id:
                self.send_heartbeat(pid, ctx)

    # -- application feedback ----------------------------------------------------------------

    def applied_to(self, index: int, size: int) -> None:
        """The application applied entries up to index."""
        new_applied = max(index, self.raft_log.applied)
        self.raft_log.applied_to(new_applied, size)

    def applied_snap(self, snap: Snapshot) -> None:
        """The application persisted and applied the snapshot."""
        index = snap.metadata.index
        self.raft_log.stable_snap_to(index)
        self.applied_to(index, 0)

    def maybe_commit(self) -> bool:
        """Advance the commit index to the quorum's match index if that entry is of our term."""
        return self.raft_log.maybe_commit(EntryID(self.term, self.trk.committed()))

    # -- role transitions --------------------------------------------------------------------

    def reset(self, term: int) -> None:
        """Common reset on every role change; clears the vote when the term changes."""
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.trk.reset_votes()
        last_index = self.raft_log.last_index()
        for pid, pr in list(self.trk.progress.items()):
            npr = Progress(
                match=last_index if pid == self.id else 0,
                next=last_index + 1,
                inflights=Inflights(self.trk.max_inflight, self.trk.max_inflight_bytes),
                is_learner=pr.is_learner,
            )
            self.trk.progress[pid] = npr
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly(self.read_only.option)

    def append_entry(self, es: Sequence[Entry]) -> bool:
        """Append proposals at our term; False if the uncommitted-size limit rejects them."""
        li = self.raft_log.last_index()
        term = self.term
        ents = [Entry(term, li + 1 + i, e.type, e.data) for i, e in enumerate(es)]
        if not self.increase_uncommitted_size(ents):
            self.logger.warning(
                "%x drops proposal: the uncommitted tail would exceed its size limit",
                self.id,
            )
            return False
        li = self.raft_log.append(ents)
        # The leader acknowledges its own entries once they are durable, like any follower.
        self.send(Message(type=MT.MsgAppResp, to=self.id, index=li))
        return True

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.state == StateType.LEADER:
            self.tick_heartbeat()
        else:
            self.tick_election()

    def tick_election(self) -> None:
        """Followers and candidates: start an election once the randomized timeout passes."""
        self.election_elapsed += 1
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(type=MT.MsgHup, frm=self.id))

    def tick_heartbeat(self) -> None:
        """Leader: heartbeat every heartbeat_timeout; check quorum every election_timeout."""
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(type=MT.MsgCheckQuorum, frm=self.id))
            # A transfer that did not finish within an election timeout is abandoned.
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self.abort_leader_transfer()
        if self.state != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(type=MT.MsgBeat, frm=self.id))

    def become_follower(self, term: int, lead: int) -> None:
        self.reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER
        self.logger.info("%x is follower at term %d", self.id, self.term)

    def become_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise InvariantError("invalid transition [leader -> candidate]")
        self.reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE
        self.logger.info("%x is candidate at term %d", self.id, self.term)

    def become_pre_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise InvariantError("invalid transition [leader -> pre-candidate]")
        # A pre-candidate keeps its term and vote: nothing durable changes.
        self.trk.reset_votes()
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE
        self.logger.info("%x is pre-candidate at term %d", self.id, self.term)

    def become_leader(self) -> None:
        if self.state == StateType.FOLLOWER:
            raise InvariantError("invalid transition [follower -> leader]")
        self.reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        pr = self.trk.progress[self.id]
        pr.become_replicate()
        # The leader is always active from its own point of view.
        pr.recent_active = True
        # Any entry in the tail might be a conf change; be conservative and wait for all of it.
        self.pending_conf_index = self.raft_log.last_index()
        # An empty entry of the new term lets the leader commit (and learn the commit index of)
        # everything before it (Raft §5.4.2, §8). Its payload is empty, so it never counts
        # against the uncommitted-size limit.
        if not self.append_entry([Entry(term=0, index=0)]):
            raise InvariantError("empty entry was dropped")
        self.logger.info("%x is leader at term %d", self.id, self.term)

    def hup(self, t: CampaignType) -> None:
        """Start an election (or pre-election) if this node may."""
        if self.state == StateType.LEADER:
            self.logger.debug("%x is already leader, not campaigning", self.id)
            return
        if not self.promotable():
            self.logger.warning("%x may not campaign (not a voter, or a snapshot is pending)", self.id)
            return
        if self.has_unapplied_conf_changes():
            self.logger.warning(
                "%x may not campaign at term %d: committed conf changes are not applied yet",
                self.id,
                self.term,
            )
            return
        self.logger.info("%x starts an election at term %d", self.id, self.term)
        self.campaign(t)

    def has_unapplied_conf_changes(self) -> bool:
        """Whether a committed but unapplied entry is a conf change."""
        if self.raft_log.applied >= self.raft_log.committed:
            return False
        found = False

        def visit(ents: list[Entry]) -> bool:
            nonlocal found
            if any(e.type in (EntryType.CONF_CHANGE, EntryType.CONF_CHANGE_V2) for e in ents):
                found = True
                return False
            return True

        self.raft_log.scan(
            self.raft_log.applied + 1,
            self.raft_log.committed + 1,
            self.raft_log.max_applying_ents_size,
            visit,
        )
        return found

    def campaign(self, t: CampaignType) -> None:
        """Become (pre-)candidate and request votes from every voter."""
        if not self.promotable():
            self.logger.warning("%x campaigns although it may not (caller bug)", self.id)
        if t == CampaignType.PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = MT.MsgPreVote
            # Pre-votes are for the term we would campaign in, without incrementing ours.
            term = self.term + 1
        else:
            self.become_candidate()
            vote_msg = MT.MsgVote
            term = self.term
        for pid in sorted(self.trk.config.voters.ids()):
            if pid == self.id:
                # Our own vote counts once it is durable, like anyone else's.
                self.send(Message(type=vote_resp_msg_type(vote_msg), to=pid, term=term))
                continue
            last = self.raft_log.last_entry_id()
            self.logger.info(
                "%x (last %d/%d) asks %s of %x for term %d",
                self.id,
                last.term,
                last.index,
                vote_msg.name,
                pid,
                self.term,
            )
            ctx = _TRANSFER_CTX if t == CampaignType.TRANSFER else b""
            self.send(
                Message(type=vote_msg, to=pid, term=term, index=last.index, log_term=last.term, context=ctx)
            )

    def poll(self, pid: int, t: MessageType, v: bool) -> tuple[int, int, VoteResult]:
        """Record a vote and tally the election."""
        if v:
            self.logger.info("%x got %s from %x at term %d", self.id, t.name, pid, self.term)
        else:
            self.logger.info("%x got %s rejection from %x at term %d", self.id, t.name, pid, self.term)
        self.trk.record_vote(pid, v)
        return self.trk.tally_votes()

    # -- the message handler -----------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Process one message. Raises ProposalDroppedError for proposals that cannot be taken."""
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.MsgVote, MT.MsgPreVote):
                force = m.context == _TRANSFER_CTX
                in_lease = (
                    self.check_quorum and self.lead != NONE and self.election_elapsed < self.election_timeout
                )
                if not force and in_lease:
                    # Within the lease of a leader we heard from, ignore disruptive candidates
                    # entirely: neither bump the term nor vote (thesis §4.2.3).
                    last = self.raft_log.last_entry_id()
                    self.logger.info(
                        "%x (last %d/%d, vote %x) ignores %s from %x (last %d/%d) at term %d: "
                        "leader lease still valid for %d ticks",
                        self.id,
                        last.term,
                        last.index,
                        self.vote,
                        m.type.name,
                        m.frm,
                        m.log_term,
                        m.index,
                        self.term,
                        self.election_timeout - self.election_elapsed,
                    )
                    return
            if m.type == MT.MsgPreVote:
                pass  # a pre-vote never changes our term
            elif m.type == MT.MsgPreVoteResp and not m.reject:
                # A granted pre-vote echoes the future term we asked about; the term is only
                # bumped when a quorum grants and the real election starts.
                pass
            else:
                self.logger.info(
                    "%x at term %d: %s from %x has higher term %d",
                    self.id,
                    self.term,
                    m.type.name,
                    m.frm,
                    m.term,
                )
                if m.type in (MT.MsgApp, MT.MsgHeartbeat, MT.MsgSnap):
                    self.become_follower(m.term, m.frm)
                else:
                    self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.MsgHeartbeat, MT.MsgApp):
                # A stale leader (or we moved to a higher term in a partition and cannot win).
                # With CheckQuorum/PreVote we do not bump terms on votes, so tell the stale
                # leader about our term to free it (it steps down on the response).
                self.send(Message(type=MT.MsgAppResp, to=m.frm))
            elif m.type == MT.MsgPreVote:
                # Reject explicitly so that a pre-candidate with a stale term learns ours.
                last = self.raft_log.last_entry_id()
                self.logger.info(
                    "%x (last %d/%d, vote %x) rejects %s from %x (last %d/%d) at term %d",
                    self.id,
                    last.term,
                    last.index,
                    self.vote,
                    m.type.name,
                    m.frm,
                    m.log_term,
                    m.index,
                    self.term,
                )
                self.send(Message(type=MT.MsgPreVoteResp, to=m.frm, term=self.term, reject=True))
            else:
                self.logger.info(
                    "%x at term %d: ignored %s from %x with lower term %d",
                    self.id,
                    self.term,
                    m.type.name,
                    m.frm,
                    m.term,
                )
            return

        if m.type == MT.MsgHup:
            self.hup(CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION)
        elif m.type in (MT.MsgVote, MT.MsgPreVote):
            self._handle_vote_request(m)
        elif self.state == StateType.LEADER:
            self._step_leader(m)
        elif self.state in (StateType.CANDIDATE, StateType.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        # We can vote for a candidate we already voted for in this term, or if we have not voted
        # and know of no leader, or (pre-votes only) for any future term.
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.MsgPreVote and m.term > self.term)
        )
        last = self.raft_log.last_entry_id()
        cand = EntryID(m.log_term, m.index)
        if can_vote and self.raft_log.is_up_to_date(cand):
            # Learners vote too: a learner may have been promoted without knowing it yet.
            self.logger.info(
                "%x (last %d/%d, vote %x) grants %s to %x (last %d/%d) at term %d",
                self.id,
                last.term,
                last.index,
                self.vote,
                m.type.name,
                m.frm,
                cand.term,
                cand.index,
                self.term,
            )
            # Reply with the term of the request: for pre-votes ours may be older, and the
            # pre-candidate would ignore a response carrying a stale term.
            self.send(Message(type=vote_resp_msg_type(m.type), to=m.frm, term=m.term))
            if m.type == MT.MsgVote:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.logger.info(
                "%x (last %d/%d, vote %x) rejects %s from %x (last %d/%d) at term %d",
                self.id,
                last.term,
                last.index,
                self.vote,
                m.type.name,
                m.frm,
                cand.term,
                cand.index,
                self.term,
            )
            self.send(Message(type=vote_resp_msg_type(m.type), to=m.frm, term=self.term, reject=True))

    def _step_leader(self, m: Message) -> None:
        # Message types that do not involve a particular peer's progress.
        if m.type == MT.MsgBeat:
            self.bcast_heartbeat()
            return
        if m.type == MT.MsgCheckQuorum:
            if not self.trk.quorum_active():
                self.logger.warning("%x steps down: no quorum heard from within an election timeout", self.id)
                self.become_follower(self.term, NONE)
            # Everyone but us must prove liveness again before the next check.
            for pid, peer in self.trk.items():
                if pid != self.id:
                    peer.recent_active = False
            return
        if m.type == MT.MsgProp:
            self._propose(m)
            return
        if m.type == MT.MsgReadIndex:
            if self.trk.is_singleton():
                # We are the only voter: our commit index is trivially up to date.
                resp = self.response_to_read_index_req(m, self.raft_log.committed)
                if resp is not None:
                    self.send(resp)
                return
            # Until an entry of our term commits we do not know the latest commit index
            # (thesis §6.4); hold the request until then.
            if not self.committed_entry_in_current_term():
                self.pending_read_index_messages.append(m)
                return
            self.send_msg_read_index_response(m)
            return
        if m.type == MT.MsgForgetLeader:
            return

        pr = self.trk.progress.get(m.frm)
        if pr is None:
            self.logger.debug("%x: %x is not a member, message ignored", self.id, m.frm)
            return
        if m.type == MT.MsgAppResp:
            self._handle_append_response(m, pr)
        elif m.type == MT.MsgHeartbeatResp:
            self._handle_heartbeat_response(m, pr)
        elif m.type == MT.MsgSnapStatus:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if not m.reject:
                pr.become_probe()
                self.logger.debug(
                    "%x: snapshot to %x delivered, probing again [%s]",
                    self.id,
                    m.frm,
                    pr,
                )
            else:
                # The snapshot did not arrive; forget it so the next probe starts from match.
                pr.pending_snapshot = 0
                pr.become_probe()
                self.logger.debug("%x: snapshot to %x failed, probing again [%s]", self.id, m.frm, pr)
            # Wait for the follower's MsgAppResp (or the next heartbeat) before probing again;
            # the snapshot may still be being applied.
            pr.msg_app_flow_paused = True
        elif m.type == MT.MsgUnreachable:
            # Messages to the peer were dropped; optimistic replication may have lost a window.
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            self.logger.debug("%x: %x is unreachable [%s]", self.id, m.frm, pr)
        elif m.type == MT.MsgTransferLeader:
            self._handle_transfer_leader(m, pr)

    def _propose(self, m: Message) -> None:
        if not m.entries:
            raise InvariantError(f"{self.id:x} stepped empty MsgProp")
        if self.id not in self.trk.progress:
            # We were removed from the configuration while leading.
            raise ProposalDroppedError("leader is no longer a member of the group")
        if self.lead_transferee != NONE:
            self.logger.debug(
                "%x at term %d drops proposal: leadership transfer to %x in progress",
                self.id,
                self.term,
                self.lead_transferee,
            )
            raise ProposalDroppedError("leadership transfer in progress")

        ents = list(m.entries)
        for i, e in enumerate(ents):
            if e.type not in (EntryType.CONF_CHANGE, EntryType.CONF_CHANGE_V2):
                continue
            already_pending = self.pending_conf_index > self.raft_log.applied
            already_joint = len(self.trk.config.voters.outgoing) > 0
            wants_leave_joint = e.type == EntryType.CONF_CHANGE_V2 and not e.data
            failed = ""
            if already_pending:
                failed = (
                    f"possible unapplied conf change at index {self.pending_conf_index} "
                    f"(applied to {self.raft_log.applied})"
                )
            elif already_joint and not wants_leave_joint:
                failed = "must transition out of joint config first"
            elif not already_joint and wants_leave_joint:
                failed = "not in joint state; refusing empty conf change"
            if failed and not self.disable_conf_change_validation:
                self.logger.info(
                    "%x replaces conf change with an empty entry (config %s): %s",
                    self.id,
                    self.trk.config,
                    failed,
                )
                # Replace it with an empty normal entry so the rest of the batch keeps its indices.
                ents[i] = Entry(term=0, index=0, type=EntryType.NORMAL)
            else:
                self.pending_conf_index = self.raft_log.last_index() + i + 1

        if not self.append_entry(ents):
            raise ProposalDroppedError("uncommitted entries size limit reached")
        self.bcast_append()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        # Also reached from advance(), where the leader acks its own durable entries.
        pr.recent_active = True
        if m.reject:
            # reject_hint is the follower's guess of the last index we might agree on, and
            # log_term its term there. Skipping to the last index of ours with term <= log_term
            # lets a divergent tail be probed in about one round trip per term instead of
            # one per entry.
            self.logger.debug(
                "%x: append rejected with hint %d/%d by %x (probe at %d)",
                self.id,
                m.log_term,
                m.reject_hint,
                m.frm,
                m.index,
            )
            next_probe_idx = m.reject_hint
            if m.log_term > 0:
                next_probe_idx, _ = self.raft_log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe_idx):
                self.logger.debug("%x backs off %x to [%s]", self.id, m.frm, pr)
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self.send_append(m.frm)
            return

        if not (pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE)):
            return
        if pr.state == ProgressState.PROBE:
            # The probe found the match index: stream optimistically from here.
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.raft_log.first_index():
            # The follower caught up far enough (through the snapshot or otherwise) that
            # the log can take over again.
            self.logger.debug(
                "%x: %x caught up past the log start, replicating again [%s]",
                self.id,
                m.frm,
                pr,
            )
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)

        if self.maybe_commit():
            # Committing an entry of our term may unblock held-back reads.
            self.release_pending_read_index_messages()
            self.bcast_append()
        elif self.id != m.frm and pr.can_bump_commit(self.raft_log.committed):
            # Tell the follower about a commit index it has not seen.
            self.send_append(m.frm)
        if self.id != m.frm:
            # Fill the window: send as many non-empty MsgApps as flow control allows.
            while self.maybe_send_append(m.frm, send_if_empty=False):
                pass
        if m.frm == self.lead_transferee and pr.match == self.raft_log.last_index():
            self.logger.info("%x: %x caught up, sending MsgTimeoutNow", self.id, m.frm)
            self.send_timeout_now(m.frm)

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        # The heartbeat round trip proves the peer is reachable: allow the next probe.
        pr.msg_app_flow_paused = False
        if pr.match < self.raft_log.last_index() or pr.state == ProgressState.PROBE:
            self.send_append(m.frm)
        if self.read_only.option != ReadOnlyOption.SAFE or not m.context:
            return
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is None:
            return
        if self.trk.config.voters.vote_result({a: True for a in acks}) != VoteResult.WON:
            return
        for rs in self.read_only.advance(m.context):
            resp = self.response_to_read_index_req(rs.req, rs.index)
            if resp is not None:
                self.send(resp)

    def _handle_transfer_leader(self, m: Message, pr: Progress) -> None:
        if pr.is_learner:
            self.logger.debug("%x: leadership cannot go to a learner, transfer ignored", self.id)
            return
        transferee = m.frm
        last_transferee = self.lead_transferee
        if last_transferee != NONE:
            if last_transferee == transferee:
                self.logger.info(
                    "%x at term %d: transfer to %x already in progress", self.id, self.term, transferee
                )
                return
            self.abort_leader_transfer()
            self.logger.info(
                "%x at term %d: abandons transfer to %x",
                self.id,
                self.term,
                last_transferee,
            )
        if transferee == self.id:
            self.logger.debug("%x: transfer to itself ignored", self.id)
            return
        self.logger.info("%x at term %d: transferring leadership to %x", self.id, self.term, transferee)
        # The transfer must finish within one election timeout (see tick_heartbeat).
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.raft_log.last_index():
            self.send_timeout_now(transferee)
            self.logger.info("%x: %x is up to date, sending it MsgTimeoutNow", self.id, transferee)
        else:
            self.send_append(transferee)

    def _step_candidate(self, m: Message) -> None:
        my_vote_resp = MT.MsgPreVoteResp if self.state == StateType.PRE_CANDIDATE else MT.MsgVoteResp
        if m.type == MT.MsgProp:
            self.logger.info("%x drops proposal: no leader at term %d", self.id, self.term)
            raise ProposalDroppedError("no leader")
        if m.type == MT.MsgApp:
            # A leader of our term exists (m.term == self.term here).
            self.become_follower(m.term, m.frm)
            self.handle_append_entries(m)
        elif m.type == MT.MsgHeartbeat:
            self.become_follower(m.term, m.frm)
            self.handle_heartbeat(m)
        elif m.type == MT.MsgSnap:
            self.become_follower(m.term, m.frm)
            self.handle_snapshot(m)
        elif m.type == my_vote_resp:
            gr, rj, res = self.poll(m.frm, m.type, not m.reject)
            self.logger.info("%x tally: %d granted %s, %d rejected", self.id, gr, m.type.name, rj)
            if res == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self.campaign(CampaignType.ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                # Pre-candidates fall back to follower at their unchanged term.
                self.become_follower(self.term, NONE)
        elif m.type == MT.MsgTimeoutNow:
            self.logger.debug(
                "%x at term %d (%s): ignored MsgTimeoutNow from %x", self.id, self.term, self.state, m.frm
            )

    def _step_follower(self, m: Message) -> None:
        if m.type == MT.MsgProp:
            if self.lead == NONE:
                self.logger.info("%x drops proposal: no leader at term %d", self.id, self.term)
                raise ProposalDroppedError("no leader")
            if self.disable_proposal_forwarding:
                self.logger.info(
                    "%x drops proposal: forwarding to leader %x disabled (term %d)",
                    self.id,
                    self.lead,
                    self.term,
                )
                raise ProposalDroppedError("proposal forwarding disabled")
            self.send(dataclasses.replace(m, to=self.lead))
        elif m.type == MT.MsgApp:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_append_entries(m)
        elif m.type == MT.MsgHeartbeat:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_heartbeat(m)
        elif m.type == MT.MsgSnap:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_snapshot(m)
        elif m.type == MT.MsgTransferLeader:
            if self.lead == NONE:
                self.logger.info("%x drops transfer request: no leader at term %d", self.id, self.term)
                return
            self.send(dataclasses.replace(m, to=self.lead))
        elif m.type == MT.MsgForgetLeader:
            if self.read_only.option == ReadOnlyOption.LEASE_BASED:
                self.logger.error("MsgForgetLeader ignored: not allowed with lease-based reads")
                return
            if self.lead != NONE:
                self.logger.info("%x forgets leader %x at term %d", self.id, self.lead, self.term)
                self.lead = NONE
        elif m.type == MT.MsgTimeoutNow:
            self.logger.info(
                "%x at term %d: MsgTimeoutNow from %x, campaigning now",
                self.id,
                self.term,
                m.frm,
            )
            # Leadership transfer: campaign at once, skipping pre-vote and overriding leases.
            self.hup(CampaignType.TRANSFER)
        elif m.type == MT.MsgReadIndex:
            if self.lead == NONE:
                self.logger.info("%x drops read request: no leader at term %d", self.id, self.term)
                return
            self.send(dataclasses.replace(m, to=self.lead))
        elif m.type == MT.MsgReadIndexResp:
            if len(m.entries) != 1:
                self.logger.error(
                    "%x: malformed MsgReadIndexResp from %x (%d entries)",
                    self.id,
                    m.frm,
                    len(m.entries),
                )
                return
            self.read_states.append(ReadState(index=m.index, request_ctx=m.entries[0].data))

    # -- follower-side handlers --------------------------------------------------------------

    def handle_append_entries(self, m: Message) -> None:
        a = LogSlice(term=m.term, prev=EntryID(m.log_term, m.index), entries=m.entries)
        if a.prev.index < self.raft_log.committed:
            # Everything up to our commit index is settled; tell the leader where we are.
            self.send(Message(type=MT.MsgAppResp, to=m.frm, index=self.raft_log.committed))
            return
        last_new = self.raft_log.maybe_append(a, m.commit)
        if last_new is not None:
            self.send(Message(type=MT.MsgAppResp, to=m.frm, index=last_new))
            return
        self.logger.debug(
            "%x (term %d at %d) rejects append after %d/%d from %x",
            self.id,
            self.raft_log.term_or_zero(m.index),
            m.index,
            m.log_term,
            m.index,
            m.frm,
        )
        # Hint the leader at the last entry of ours that could possibly match: the largest
        # index <= m.index whose term is <= m.log_term (anything with a larger term cannot
        # match the leader's log at or below m.index).
        hint_index = min(m.index, self.raft_log.last_index())
        hint_index, hint_term = self.raft_log.find_conflict_by_term(hint_index, m.log_term)
        self.send(
            Message(
                type=MT.MsgAppResp,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def handle_heartbeat(self, m: Message) -> None:
        self.raft_log.commit_to(m.commit)
        self.send(Message(type=MT.MsgHeartbeatResp, to=m.frm, context=m.context))

    def handle_snapshot(self, m: Message) -> None:
        s = m.snapshot if m.snapshot is not None else Snapshot()
        sindex, sterm = s.metadata.index, s.metadata.term
        if self.restore(s):
            self.logger.info(
                "%x (commit %d) accepted snapshot at index %d, term %d",
                self.id,
                self.raft_log.committed,
                sindex,
                sterm,
            )
            self.send(Message(type=MT.MsgAppResp, to=m.frm, index=self.raft_log.last_index()))
        else:
            self.logger.info(
                "%x (commit %d) ignored snapshot at index %d, term %d",
                self.id,
                self.raft_log.committed,
                sindex,
                sterm,
            )
            self.send(Message(type=MT.MsgAppResp, to=m.frm, index=self.raft_log.committed))

    def restore(self, s: Snapshot) -> bool:
        """Reset our log and configuration to the snapshot; False if it is not useful."""
        if s.metadata.index <= self.raft_log.committed:
            return False
        if self.state != StateType.FOLLOWER:
            # Only a leader of our term sends snapshots, and that leader is not us; a second
            # leader in one term would be a safety violation. Defensively step down.
            self.logger.warning(
                "%x got a snapshot while not a follower (a second leader in its term?)", self.id
            )
            self.become_follower(self.term + 1, NONE)
            return False
        cs = s.metadata.conf_state
        if self.id not in cs.voters and self.id not in cs.learners and self.id not in cs.voters_outgoing:
            self.logger.warning(
                "%x is not in the snapshot's configuration %s; snapshot ignored",
                self.id,
                cs,
            )
            return False
        sid = EntryID(s.metadata.term, s.metadata.index)
        if self.raft_log.match_term(sid):
            # We already have the snapshot's last entry: the log matches up to it, so only
            # the commit index needs to move.
            last = self.raft_log.last_entry_id()
            self.logger.info(
                "%x (commit %d, last %d/%d) already has the snapshot's entry %d/%d, only commit moves",
                self.id,
                self.raft_log.committed,
                last.term,
                last.index,
                sid.term,
                sid.index,
            )
            self.raft_log.commit_to(s.metadata.index)
            return False

        self.raft_log.restore(s)
        self.trk = ProgressTracker(self.trk.max_inflight, self.trk.max_inflight_bytes)
        cfg, prs = restore(Changer(self.trk, self.raft_log.last_index()), cs)
        _assert_conf_states_equivalent(cs, self.switch_to_config(cfg, prs))
        last = self.raft_log.last_entry_id()
        self.logger.info(
            "%x (commit %d, last %d/%d) restored snapshot at %d/%d",
            self.id,
            self.raft_log.committed,
            last.term,
            last.index,
            sid.term,
            sid.index,
        )
        return True

    def promotable(self) -> bool:
        """Whether this node may become leader: a voter with no snapshot pending."""
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and not self.raft_log.has_next_or_in_progress_snapshot()

    # -- membership --------------------------------------------------------------------------

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed single-step conf change; returns the new configuration."""
        cfg, prs = Changer(self.trk, self.raft_log.last_index()).simple([cc])
        return self.switch_to_config(cfg, prs)

    def switch_to_config(self, cfg: TrackerConfig, prs: dict[int, Progress]) -> ConfState:
        """Install a new configuration and react to it (commit, replicate, step down)."""
        self.trk.config = cfg
        self.trk.progress = prs
        self.logger.info("%x configuration: %s", self.id, self.trk.config)
        cs = self.trk.conf_state()
        pr = self.trk.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner

        if (pr is None or self.is_learner) and self.state == StateType.LEADER:
            # Removed or demoted while leading. Keep leading until the change is committed
            # elsewhere unless configured to step down right away.
            if self.step_down_on_removal:
                self.become_follower(self.term, NONE)
            return cs
        if self.state != StateType.LEADER or not cs.voters:
            return cs
        # The quorum changed: the commit index may move (e.g. after a removal), and new peers
        # need their first MsgApp.
        if self.maybe_commit():
            self.bcast_append()
        else:
            for pid, _ in self.trk.items():
                if pid != self.id:
                    self.maybe_send_append(pid, send_if_empty=False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.trk.config.voters.ids():
            self.abort_leader_transfer()
        return cs

    def load_state(self, state: HardState) -> None:
        """Adopt a persisted HardState at startup."""
        if state.commit < self.raft_log.committed or state.commit > self.raft_log.last_index():
            raise InvariantError(
                f"{self.id:x} state.commit {state.commit} is out of range "
                f"[{self.raft_log.committed}, {self.raft_log.last_index()}]"
            )
        self.raft_log.committed = state.commit
        self.term = state.term
        self.vote = state.vote

    def past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def reset_randomized_election_timeout(self) -> None:
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(self.election_timeout)

    def send_timeout_now(self, to: int) -> None:
        self.send(Message(type=MT.MsgTimeoutNow, to=to))

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    # -- reads -------------------------------------------------------------------------------

    def committed_entry_in_current_term(self) -> bool:
        """Whether the entry at the commit index is of our term (so commit is up to date)."""
        return self.raft_log.term_or_zero(self.raft_log.committed) == self.term

    def response_to_read_index_req(self, req: Message, read_index: int) -> Message | None:
        """Answer a read request: locally as a ReadState, or a MsgReadIndexResp to a follower."""
        if req.frm in (NONE, self.id):
            self.read_states.append(ReadState(index=read_index, request_ctx=req.entries[0].data))
            return None
        return Message(type=MT.MsgReadIndexResp, to=req.frm, index=read_index, entries=req.entries)

    def send_msg_read_index_response(self, m: Message) -> None:
        if self.read_only.option == ReadOnlyOption.SAFE:
            # Record the commit index now, then confirm we are still leader with a heartbeat
            # round; the read is served once a quorum acknowledges.
            ctx = m.entries[0].data
            self.read_only.add_request(self.raft_log.committed, m)
            self.read_only.recv_ack(self.id, ctx)
            self.bcast_heartbeat_with_ctx(ctx)
        else:
            resp = self.response_to_read_index_req(m, self.raft_log.committed)
            if resp is not None:
                self.send(resp)

    def release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages:
            return
        if not self.committed_entry_in_current_term():
            self.logger.error("held reads released before a commit in the current term (bug)")
            return
        msgs, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in msgs:
            self.send_msg_read_index_response(m)

    # -- uncommitted size accounting ---------------------------------------------------------

    def increase_uncommitted_size(self, ents: Sequence[Entry]) -> bool:
        """Account for proposed entries; False if they would exceed the limit.

        A proposal is always accepted when nothing is uncommitted, so that a single entry larger
        than the limit cannot block the log forever.
        """
        s = payloads_size(ents)
        if self.uncommitted_size > 0 and s > 0 and self.uncommitted_size + s > self.max_uncommitted_size:
            return False
        self.uncommitted_size += s
        return True

    def reduce_uncommitted_size(self, s: int) -> None:
        """Entries of payload size s were committed (and applied)."""
        self.uncommitted_size = max(0, self.uncommitted_size - s)

    def ack_applied(self, ents: Sequence[Entry]) -> None:
        """The application applied ents (the committed entries of an earlier Ready)."""
        if not ents:
            return
        self.applied_to(ents[-1].index, ents_size(ents))
        self.reduce_uncommitted_size(payloads_size(ents))


def _assert_conf_states_equivalent(a: ConfState, b: ConfState) -> None:
    def norm(cs: ConfState) -> tuple[frozenset[int], frozenset[int], frozenset[int], frozenset[int], bool]:
        return (
            frozenset(cs.voters),
            frozenset(cs.learners),
            frozenset(cs.voters_outgoing),
            frozenset(cs.learners_next),
            cs.auto_leave,
        )

    if norm(a) != norm(b):
        raise InvariantError(f"ConfStates not equivalent after sorting: {a} vs {b}")
