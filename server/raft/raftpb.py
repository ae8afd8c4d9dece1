"""Raft's values: log entries, hard state, snapshots, configuration and messages.

These mirror etcd-io/raft's raftpb (same names, same fields) as immutable dataclasses, so the
pure core never touches protobuf. server/raft/codec.py converts them to and from the raftpb
wire encoding (server/api/raftpb/raft.proto) where they cross a process boundary: the WAL and
the peer transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "NONE",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "Snapshot",
    "SnapshotMetadata",
]

# The node ID that means "nobody" (no leader, no vote).
NONE = 0


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1
    CONF_CHANGE_V2 = 2


class MessageType(enum.IntEnum):
    MsgHup = 0
    MsgBeat = 1
    MsgProp = 2
    MsgApp = 3
    MsgAppResp = 4
    MsgVote = 5
    MsgVoteResp = 6
    MsgSnap = 7
    MsgHeartbeat = 8
    MsgHeartbeatResp = 9
    MsgUnreachable = 10
    MsgSnapStatus = 11
    MsgCheckQuorum = 12
    MsgTransferLeader = 13
    MsgTimeoutNow = 14
    MsgReadIndex = 15
    MsgReadIndexResp = 16
    MsgPreVote = 17
    MsgPreVoteResp = 18
    MsgForgetLeader = 23


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0
    REMOVE_NODE = 1
    UPDATE_NODE = 2
    ADD_LEARNER_NODE = 3


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What raft must persist before it sends messages: current term, vote, commit index."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == NONE and self.commit == 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    learners_next: tuple[int, ...] = ()
    auto_leave: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    conf_state: ConfState = field(default_factory=ConfState)
    index: int = 0
    term: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    data: bytes = b""
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)

    def is_empty(self) -> bool:
        return self.metadata.index == 0


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-step membership change (raftpb.ConfChange, the v1 form etcd's server uses)."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""
    id: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: int = NONE
    frm: int = NONE  # raftpb's "from" (a Python keyword)
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    vote: int = NONE
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
