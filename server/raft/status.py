"""The role of a node and snapshots of its state for observers."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .raftpb import NONE, HardState
from .tracker import Progress, TrackerConfig

__all__ = ["SoftState", "StateType", "Status"]


class StateType(enum.Enum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3

    def __str__(self) -> str:
        return _STATE_NAMES[self]


_STATE_NAMES = {
    StateType.FOLLOWER: "StateFollower",
    StateType.CANDIDATE: "StateCandidate",
    StateType.LEADER: "StateLeader",
    StateType.PRE_CANDIDATE: "StatePreCandidate",
}


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state that need not be persisted: who leads and this node's role."""

    lead: int = NONE
    raft_state: StateType = StateType.FOLLOWER


def _empty_progress() -> Mapping[int, Progress]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Status:
    """A point-in-time copy of a node's raft state.

    progress is only populated on the leader; its Progress objects are private copies.
    """

    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    lead_transferee: int
    config: TrackerConfig
    progress: Mapping[int, Progress] = field(default_factory=_empty_progress)

    @property
    def term(self) -> int:
        return self.hard_state.term

    @property
    def vote(self) -> int:
        return self.hard_state.vote

    @property
    def commit(self) -> int:
        return self.hard_state.commit

    @property
    def lead(self) -> int:
        return self.soft_state.lead

    @property
    def raft_state(self) -> StateType:
        return self.soft_state.raft_state
