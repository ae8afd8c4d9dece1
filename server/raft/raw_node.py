"""RawNode: the application-facing, single-threaded wrapper around the raft state machine.

The application owns the loop: it calls tick() on a timer, step() for every message from a
peer, propose()/read_index()/... for requests, and whenever has_ready() is true it takes a
ready(), does the work it describes (see Ready) and calls advance().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .log_unstable import EntryID
from .raft import Config, Raft, RaftError
from .raftpb import (
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
)
from .ready import Ready, must_sync
from .status import SoftState, StateType, Status
from .tracker import Progress
from .util import InvariantError, ents_size, is_local_msg, is_response_msg

__all__ = [
    "BootstrapError",
    "Peer",
    "RawNode",
    "StepLocalMsgError",
    "StepPeerNotFoundError",
]

MT = MessageType


class StepLocalMsgError(RaftError):
    """step() was given a message type that raft only generates for itself."""


class StepPeerNotFoundError(RaftError):
    """step() was given a response from a node that is not a member."""


class BootstrapError(RaftError):
    """bootstrap() was called with no peers or on non-empty storage."""


@dataclass(frozen=True, slots=True)
class Peer:
    """A founding member for bootstrap(); context is carried in its ConfChange entry."""

    id: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class _AppendAck:
    # What the application persisted in response to one Ready, to acknowledge on advance().
    term: int
    last: EntryID | None
    snapshot: Snapshot | None


class RawNode:
    """A raft node without any concurrency; see the module docstring for the loop."""

    def __init__(self, config: Config) -> None:
        """Create a node from config. With non-empty storage the node restarts from it."""
        self.raft = Raft(config)
        self._prev_soft_state = self.raft.soft_state()
        self._prev_hard_state = self.raft.hard_state()
        # Self-addressed responses deferred until the Ready that produced them is advanced.
        self._steps_on_advance: list[Message] = []
        self._append_ack: _AppendAck | None = None
        self._apply_ack: tuple[Entry, ...] = ()

    # -- driving -----------------------------------------------------------------------------

    def bootstrap(self, peers: Sequence[int | Peer]) -> None:
        """Initialise a brand-new cluster's log with one ADD_NODE conf change per peer.

        The entries are appended at term 1 and marked committed; the next Ready hands them out
        both to persist and to apply, and the application applies them like any other conf
        change entries (calling apply_conf_change). The configuration is also applied here, so
        the node can campaign right away. Raises BootstrapError on non-empty storage.
        """
        if not peers:
            raise BootstrapError("must provide at least one peer to bootstrap")
        r = self.raft
        if r.raft_log.storage.last_index() != 0:
            raise BootstrapError("can't bootstrap a nonempty Storage")
        plist = [p if isinstance(p, Peer) else Peer(id=p) for p in peers]
        # The whole bootstrap (term, entries, commit) is reported by the next Ready.
        self._prev_hard_state = HardState()
        r.become_follower(1, NONE)
        ents = [
            Entry(
                term=1,
                index=i + 1,
                type=EntryType.CONF_CHANGE,
                data=ConfChange(type=ConfChangeType.ADD_NODE, node_id=p.id, context=p.context).marshal(),
            )
            for i, p in enumerate(plist)
        ]
        r.raft_log.append(ents)
        # Committed by definition: every founding member starts from the same entries.
        r.raft_log.committed = len(ents)
        for p in plist:
            r.apply_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=p.id))

    def tick(self) -> None:
        """Advance logical time by one tick (election and heartbeat timeouts count ticks)."""
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled) unless already leader."""
        self.raft.step(Message(type=MT.MsgHup))

    def propose(self, data: bytes) -> None:
        """Propose data to be appended to the log.

        Raises ProposalDroppedError if it cannot be accepted right now. Acceptance is no
        guarantee of commitment: watch for the entry among committed entries.
        """
        self.raft.step(
            Message(type=MT.MsgProp, frm=self.raft.id, entries=(Entry(term=0, index=0, data=data),))
        )

    def propose_batch(self, data: Sequence[bytes]) -> None:
        """Propose several entries in one step (one MsgProp), in order; all or none are
        accepted (ProposalDroppedError)."""
        self.raft.step(
            Message(
                type=MT.MsgProp, frm=self.raft.id, entries=tuple(Entry(term=0, index=0, data=d) for d in data)
            )
        )

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a single-step membership change.

        The leader turns it into an empty normal entry (i.e. ignores it) if another conf change
        is still unapplied. Raises ProposalDroppedError like propose().
        """
        self.raft.step(
            Message(
                type=MT.MsgProp,
                frm=self.raft.id,
                entries=(Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=cc.marshal()),),
            )
        )

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change entry's change; returns the resulting configuration.

        Must be called for every conf change entry in committed_entries, in log order.
        """
        return self.raft.apply_conf_change(cc)

    def step(self, m: Message) -> None:
        """Feed a message received from a peer.

        Raises StepLocalMsgError for local-only message types, StepPeerNotFoundError for a
        response from a non-member, ProposalDroppedError for a forwarded proposal that cannot
        be taken. Messages with stale terms are ignored (not an error).
        """
        if is_local_msg(m.type):
            raise StepLocalMsgError(f"raft: cannot step raft local message {m.type.name}")
        if is_response_msg(m.type) and m.frm not in self.raft.trk.progress:
            raise StepPeerNotFoundError(f"raft: cannot step as peer {m.frm:x} not found")
        self.raft.step(m)

    # -- the Ready cycle ---------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether ready() would return anything to do."""
        r = self.raft
        ss, hs = self._prev_soft_state, self._prev_hard_state
        if r.lead != ss.lead or r.state != ss.raft_state:
            return True
        commit = r.raft_log.committed
        # the hard state changed (and is not empty), compared field by field
        if (r.term, r.vote, commit) != (hs.term, hs.vote, hs.commit) and (r.term or r.vote or commit):
            return True
        if r.raft_log.has_next_unstable_snapshot():
            return True
        if r.msgs or r.msgs_after_append:
            return True
        if r.raft_log.has_next_unstable_ents() or r.raft_log.has_next_committed_ents(True):
            return True
        return bool(r.read_states)

    def ready(self) -> Ready:
        """Collect the pending work; the caller must process it and then call advance().

        Calling ready() again before advancing a Ready that needs acknowledging is an error
        (raises InvariantError).
        """
        if self._steps_on_advance or self._append_ack is not None or self._apply_ack:
            raise InvariantError("two accepted Ready structs without a call to advance()")
        r = self.raft
        ss = r.soft_state()
        hs = r.hard_state()
        entries = tuple(r.raft_log.next_unstable_ents())
        committed = tuple(r.raft_log.next_committed_ents(True))
        snap = r.raft_log.next_unstable_snapshot()
        messages = list(r.msgs)
        messages.extend(m for m in r.msgs_after_append if m.to != r.id)
        rd = Ready(
            soft_state=ss if ss != self._prev_soft_state else None,
            hard_state=hs if hs != self._prev_hard_state else HardState(),
            read_states=tuple(r.read_states),
            entries=entries,
            snapshot=snap if snap is not None else Snapshot(),
            committed_entries=committed,
            messages=tuple(messages),
            must_sync=must_sync(hs, self._prev_hard_state, len(entries)),
        )
        self._accept_ready(rd)
        return rd

    def _accept_ready(self, rd: Ready) -> None:
        r = self.raft
        if rd.soft_state is not None:
            self._prev_soft_state = rd.soft_state
        if not rd.hard_state.is_empty():
            self._prev_hard_state = rd.hard_state
        r.read_states = []
        self._steps_on_advance = [m for m in r.msgs_after_append if m.to == r.id]
        # Acknowledge on advance() everything unstable as of now: the entries handed out now
        # and any handed out earlier but not yet acknowledged.
        last = r.raft_log.last_entry_id() if r.raft_log.has_next_or_in_progress_unstable_ents() else None
        snap = None if rd.snapshot.is_empty() else rd.snapshot
        self._append_ack = _AppendAck(r.term, last, snap) if last is not None or snap is not None else None
        self._apply_ack = rd.committed_entries
        r.msgs = []
        r.msgs_after_append = []
        r.raft_log.accept_unstable()
        if rd.committed_entries:
            r.raft_log.accept_applying(rd.committed_entries[-1].index, ents_size(rd.committed_entries), True)

    def advance(self, rd: Ready | None = None) -> None:
        """Acknowledge that the last Ready was fully processed (persisted, sent, applied)."""
        del rd  # the node remembers what it handed out
        r = self.raft
        steps, self._steps_on_advance = self._steps_on_advance, []
        for m in steps:
            r.step(m)
        ack, self._append_ack = self._append_ack, None
        if ack is not None:
            if ack.last is not None:
                if ack.term == r.term:
                    r.raft_log.stable_to(ack.last)
                else:
                    # The term changed since: the unstable tail may have been rewritten by a
                    # newer leader, so these entries are not known to be the durable ones.
                    r.logger.info(
                        "%x at term %d: not marking entries stable, their Ready was from term %d",
                        r.id,
                        r.term,
                        ack.term,
                    )
            if ack.snapshot is not None:
                r.applied_snap(ack.snapshot)
        applied, self._apply_ack = self._apply_ack, ()
        r.ack_applied(applied)

    # -- observation and control -------------------------------------------------------------

    def status(self) -> Status:
        """A snapshot of the node's state; the progress map is only filled on the leader."""
        r = self.raft
        ss = r.soft_state()
        progress: dict[int, Progress] = {}
        if ss.raft_state == StateType.LEADER:
            progress = {pid: pr.clone() for pid, pr in r.trk.items()}
        return Status(
            id=r.id,
            hard_state=r.hard_state(),
            soft_state=ss,
            applied=r.raft_log.applied,
            lead_transferee=r.lead_transferee,
            config=r.trk.config,
            progress=MappingProxyType(progress),
        )

    def soft_state(self) -> SoftState:
        """Current leader and role."""
        return self.raft.soft_state()

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver a message to node_id."""
        self.raft.step(Message(type=MT.MsgUnreachable, frm=node_id))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        """The transport finished sending a snapshot to node_id (or failed to)."""
        self.raft.step(Message(type=MT.MsgSnapStatus, frm=node_id, reject=failed))

    def transfer_leader(self, transferee: int) -> None:
        """Ask the leader (possibly via this follower) to hand leadership to transferee."""
        self.raft.step(Message(type=MT.MsgTransferLeader, frm=transferee))

    def forget_leader(self) -> None:
        """Follower only: forget the current leader (the node then votes freely)."""
        self.raft.step(Message(type=MT.MsgForgetLeader))

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; the answer comes back as a ReadState with ctx.

        ctx must be unique among outstanding requests. Requests without a known leader are
        dropped silently (no ReadState arrives); callers retry on a timeout.
        """
        self.raft.step(Message(type=MT.MsgReadIndex, entries=(Entry(term=0, index=0, data=ctx),)))
