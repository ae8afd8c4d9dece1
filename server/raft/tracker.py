"""The leader's view of its followers: per-peer replication progress and flow control."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .quorum import JointConfig, MajorityConfig, VoteResult
from .raftpb import ConfState
from .util import InvariantError

__all__ = [
    "Inflights",
    "Progress",
    "ProgressMap",
    "ProgressState",
    "ProgressTracker",
    "TrackerConfig",
]


class ProgressState(enum.Enum):
    """How the leader currently replicates to a follower.

    PROBE: one MsgApp per heartbeat interval until the follower's match index is found.
    REPLICATE: optimistic streaming of MsgApps, bounded by Inflights.
    SNAPSHOT: a snapshot is in flight; nothing else is sent until it is reported.
    """

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2

    def __str__(self) -> str:
        return "State" + self.name.capitalize()


class Inflights:
    """A bounded FIFO of the last indices of MsgApps sent but not yet acknowledged.

    Invariant: the queued indices increase from oldest to newest; count <= size.
    """

    __slots__ = ("_bytes", "_queue", "max_bytes", "size")

    def __init__(self, size: int, max_bytes: int = 0) -> None:
        self.size = size
        # 0 means no byte limit.
        self.max_bytes = max_bytes
        self._queue: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def clone(self) -> Inflights:
        """An independent copy."""
        c = Inflights(self.size, self.max_bytes)
        c._queue = deque(self._queue)
        c._bytes = self._bytes
        return c

    def add(self, index: int, nbytes: int) -> None:
        """Record a MsgApp whose last entry is `index`; the queue must not be full."""
        if self.full():
            raise InvariantError("cannot add into a full inflights")
        self._queue.append((index, nbytes))
        self._bytes += nbytes

    def free_le(self, to: int) -> None:
        """Forget all inflight messages whose index is <= to (they were acknowledged)."""
        while self._queue and self._queue[0][0] <= to:
            _, nbytes = self._queue.popleft()
            self._bytes -= nbytes

    def full(self) -> bool:
        """Whether no more messages may be sent."""
        return len(self._queue) == self.size or (self.max_bytes != 0 and self._bytes >= self.max_bytes)

    def count(self) -> int:
        """Number of inflight messages."""
        return len(self._queue)

    def bytes(self) -> int:
        """Total payload bytes of the inflight messages."""
        return self._bytes

    def reset(self) -> None:
        """Forget every inflight message."""
        self._queue.clear()
        self._bytes = 0

    def indices(self) -> list[int]:
        """The inflight indices, oldest first."""
        return [i for i, _ in self._queue]


class Progress:
    """The leader's knowledge of one peer's log.

    Invariants: match < next; in SNAPSHOT state pending_snapshot is the index of the snapshot
    in flight; sent_commit <= next - 1 after any regression of next.
    """

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "recent_active",
        "sent_commit",
        "state",
    )

    def __init__(
        self,
        *,
        match: int = 0,
        next: int = 1,
        inflights: Inflights,
        is_learner: bool = False,
        recent_active: bool = False,
        state: ProgressState = ProgressState.PROBE,
    ) -> None:
        # Highest index known to be replicated on the peer.
        self.match = match
        # Index of the next entry to send.
        self.next = next
        # Highest commit index sent to the peer (so it knows which entries are committed).
        self.sent_commit = 0
        self.state = state
        self.pending_snapshot = 0
        # Whether the peer was heard from since the last CheckQuorum round.
        self.recent_active = recent_active
        # In PROBE: a probe is outstanding. In REPLICATE: the inflights are full.
        self.msg_app_flow_paused = False
        self.inflights = inflights
        self.is_learner = is_learner

    def clone(self) -> Progress:
        """An independent copy (including the inflights)."""
        p = Progress(
            match=self.match,
            next=self.next,
            inflights=self.inflights.clone(),
            is_learner=self.is_learner,
            recent_active=self.recent_active,
            state=self.state,
        )
        p.sent_commit = self.sent_commit
        p.pending_snapshot = self.pending_snapshot
        p.msg_app_flow_paused = self.msg_app_flow_paused
        return p

    def reset_state(self, state: ProgressState) -> None:
        """Enter `state` with clean flow-control bookkeeping."""
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Go back to probing from just after the match index (or the snapshot just sent)."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self.reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self.reset_state(ProgressState.PROBE)
            self.next = self.match + 1
        self.sent_commit = min(self.sent_commit, self.next - 1)

    def become_replicate(self) -> None:
        """Start optimistic replication right after the match index."""
        self.reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """A snapshot at snapshot_index is being sent; pause until it is reported."""
        self.reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.next = snapshot_index + 1
        self.sent_commit = snapshot_index

    def sent_entries(self, entries: int, nbytes: int) -> None:
        """A MsgApp with `entries` entries (nbytes of payload) was sent from next onwards."""
        if self.state == ProgressState.REPLICATE:
            if entries > 0:
                self.next += entries
                self.inflights.add(self.next - 1, nbytes)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state == ProgressState.PROBE:
            # One probe at a time: wait for its answer (or the next heartbeat response).
            if entries > 0:
                self.msg_app_flow_paused = True
        else:
            raise InvariantError(f"sending append in unhandled state {self.state}")

    def can_bump_commit(self, index: int) -> bool:
        """Whether the peer should be told about commit index `index` it has not seen yet.

        Only worth it if the peer has (or was sent) entries beyond what it knows is committed.
        """
        return index > self.sent_commit and self.sent_commit < self.next - 1

    def sent_commit_to(self, commit: int) -> None:
        """A message carrying commit index `commit` was sent."""
        self.sent_commit = commit

    def maybe_update(self, n: int) -> bool:
        """The peer acknowledged index n; returns whether match advanced."""
        if n <= self.match:
            return False
        self.match = n
        self.next = max(self.next, n + 1)
        self.msg_app_flow_paused = False
        return True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected a MsgApp at index `rejected`; back off using its hint.

        Returns False when the rejection is stale (it does not concern the latest probe).
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            # The rejection means the optimistic stream broke; restart right after match.
            self.next = self.match + 1
            self.sent_commit = min(self.sent_commit, self.next - 1)
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.sent_commit = min(self.sent_commit, self.next - 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold back MsgApps to this peer."""
        if self.state == ProgressState.SNAPSHOT:
            return True
        return self.msg_app_flow_paused

    def __str__(self) -> str:
        s = f"{self.state} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.is_paused():
            s += " paused"
        if self.pending_snapshot > 0:
            s += f" pendingSnap={self.pending_snapshot}"
        if not self.recent_active:
            s += " inactive"
        n = self.inflights.count()
        if n > 0:
            s += f" inflight={n}"
            if self.inflights.full():
                s += "[full]"
        return s

    def __repr__(self) -> str:
        return f"Progress({self})"


ProgressMap = dict[int, Progress]


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """The active membership.

    Invariants: learners are disjoint from both voter halves; learners_next (voters demoted to
    learners, waiting for the joint config to be left) is a subset of voters.outgoing and is
    empty outside of a joint config; auto_leave only in a joint config.
    """

    voters: JointConfig = field(default_factory=JointConfig)
    learners: frozenset[int] = frozenset()
    learners_next: frozenset[int] = frozenset()
    auto_leave: bool = False

    def __str__(self) -> str:
        s = f"voters={self.voters}"
        if self.learners:
            s += f" learners={MajorityConfig(self.learners)}"
        if self.learners_next:
            s += f" learners_next={MajorityConfig(self.learners_next)}"
        if self.auto_leave:
            s += " autoleave"
        return s

    def conf_state(self) -> ConfState:
        """The configuration in its persisted form."""
        return ConfState(
            voters=tuple(sorted(self.voters.incoming.ids)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters.outgoing.ids)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )


class ProgressTracker:
    """The configuration, the progress of every member and the votes of the current election."""

    def __init__(self, max_inflight: int, max_inflight_bytes: int = 0) -> None:
        self.config = TrackerConfig()
        self.progress: ProgressMap = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes

    def conf_state(self) -> ConfState:
        """The active configuration in its persisted form."""
        return self.config.conf_state()

    def is_singleton(self) -> bool:
        """Whether this is a single-voter (non-joint) configuration."""
        return len(self.config.voters.incoming) == 1 and len(self.config.voters.outgoing) == 0

    def _acked(self, voter_id: int) -> int | None:
        pr = self.progress.get(voter_id)
        return None if pr is None else pr.match

    def committed(self) -> int:
        """The largest index replicated on a quorum, by the voters' match indices."""
        return self.config.voters.committed_index(self._acked)

    def visit(self, f: Callable[[int, Progress], None]) -> None:
        """Call f for each member in ascending ID order (deterministic message order)."""
        for pid in sorted(self.progress):
            f(pid, self.progress[pid])

    def items(self) -> Iterator[tuple[int, Progress]]:
        """(id, progress) pairs in ascending ID order."""
        for pid in sorted(self.progress):
            yield pid, self.progress[pid]

    def quorum_active(self) -> bool:
        """Whether a quorum of voters was recently active (CheckQuorum)."""
        votes = {pid: pr.recent_active for pid, pr in self.progress.items() if not pr.is_learner}
        return self.config.voters.vote_result(votes) == VoteResult.WON

    def voter_nodes(self) -> list[int]:
        """Sorted IDs of all voters (both halves)."""
        return sorted(self.config.voters.ids())

    def reset_votes(self) -> None:
        """Start a new election."""
        self.votes = {}

    def record_vote(self, voter_id: int, granted: bool) -> None:
        """Record a vote; only the first vote of each peer counts."""
        self.votes.setdefault(voter_id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """(granted, rejected, outcome) of the current election among voters."""
        granted = rejected = 0
        for pid, pr in self.progress.items():
            if pr.is_learner:
                continue
            v = self.votes.get(pid)
            if v is None:
                continue
            if v:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.config.voters.vote_result(self.votes)
