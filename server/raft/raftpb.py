"""Raft's values: log entries, hard state, snapshots, configuration and messages.

These mirror etcd-io/raft's raftpb (same names, same fields) as immutable dataclasses, so the
pure core never touches protobuf. server/api/raftpb/raftcodec.py converts them to and from the raftpb
wire encoding (server/api/raftpb/raft.proto) where they cross a process boundary: the WAL and
the peer transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "NONE",
    "ConfChange",
    "ConfChangeDecodeError",
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


class ConfChangeDecodeError(ValueError):
    """The bytes are not a valid raftpb.ConfChange encoding."""


def _put_uvarint(out: bytearray, v: int) -> None:
    # Invariant: v is an unsigned 64-bit value; protobuf varints carry 7 bits per byte.
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _get_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        if pos >= len(data):
            raise ConfChangeDecodeError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise ConfChangeDecodeError("varint overflow")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-step membership change (raftpb.ConfChange, the v1 form etcd's server uses)."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""
    id: int = 0

    def marshal(self) -> bytes:
        """Encode exactly as gogoproto's raftpb.ConfChange.Marshal does.

        Fields go out in field-number order (ID=1, Type=2, NodeID=3, Context=4); the three
        scalar fields are always written, Context only when non-empty.
        """
        out = bytearray()
        out.append(0x08)
        _put_uvarint(out, self.id)
        out.append(0x10)
        _put_uvarint(out, int(self.type))
        out.append(0x18)
        _put_uvarint(out, self.node_id)
        if self.context:
            out.append(0x22)
            _put_uvarint(out, len(self.context))
            out += self.context
        return bytes(out)

    @classmethod
    def unmarshal(cls, data: bytes) -> ConfChange:
        """Decode a raftpb.ConfChange; unknown fields are skipped, missing ones take defaults.

        Raises ConfChangeDecodeError on malformed input or an unknown change type.
        """
        cc_id = 0
        cc_type = 0
        node_id = 0
        context = b""
        pos = 0
        while pos < len(data):
            key, pos = _get_uvarint(data, pos)
            field_no, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _get_uvarint(data, pos)
                if field_no == 1:
                    cc_id = value
                elif field_no == 2:
                    cc_type = value
                elif field_no == 3:
                    node_id = value
            elif wire == 2:
                length, pos = _get_uvarint(data, pos)
                if pos + length > len(data):
                    raise ConfChangeDecodeError("truncated length-delimited field")
                if field_no == 4:
                    context = bytes(data[pos : pos + length])
                pos += length
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                raise ConfChangeDecodeError(f"unsupported wire type {wire}")
            if pos > len(data):
                raise ConfChangeDecodeError("truncated fixed-width field")
        try:
            typ = ConfChangeType(cc_type)
        except ValueError as e:
            raise ConfChangeDecodeError(f"unknown conf change type {cc_type}") from e
        return cls(type=typ, node_id=node_id, context=context, id=cc_id)


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
