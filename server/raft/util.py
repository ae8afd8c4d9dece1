"""Helpers shared by the raft modules: message classification and entry sizes (the textual
descriptions of raft's values are in describe.py)."""

from __future__ import annotations

from collections.abc import Sequence

from .raftpb import (
    Entry,
    MessageType,
)

__all__ = [
    "NO_LIMIT",
    "InvariantError",
    "entry_size",
    "ents_size",
    "is_local_msg",
    "is_response_msg",
    "limit_size",
    "payload_size",
    "payloads_size",
    "vote_resp_msg_type",
]


class InvariantError(AssertionError):
    """An internal raft invariant was violated (etcd-io/raft panics in these cases).

    Seeing one means a bug in raft or a misuse of the API (e.g. storage that lost entries
    raft had been told were persisted); the node must not continue.
    """


# "No limit" for byte budgets, mirroring math.MaxUint64 in etcd-io/raft.
NO_LIMIT = (1 << 64) - 1

_LOCAL_MSGS = frozenset(
    {
        MessageType.MsgHup,
        MessageType.MsgBeat,
        MessageType.MsgUnreachable,
        MessageType.MsgSnapStatus,
        MessageType.MsgCheckQuorum,
    }
)

_RESPONSE_MSGS = frozenset(
    {
        MessageType.MsgAppResp,
        MessageType.MsgVoteResp,
        MessageType.MsgHeartbeatResp,
        MessageType.MsgUnreachable,
        MessageType.MsgReadIndexResp,
        MessageType.MsgPreVoteResp,
    }
)


def is_local_msg(t: MessageType) -> bool:
    """Messages raft generates for itself; they never cross the network."""
    return t in _LOCAL_MSGS


def is_response_msg(t: MessageType) -> bool:
    """Messages that answer a request and so must come from a known peer."""
    return t in _RESPONSE_MSGS


def vote_resp_msg_type(t: MessageType) -> MessageType:
    """The response type for a (pre-)vote request type."""
    if t == MessageType.MsgVote:
        return MessageType.MsgVoteResp
    if t == MessageType.MsgPreVote:
        return MessageType.MsgPreVoteResp
    raise ValueError(f"not a vote message: {t.name}")


def _uvarint_size(v: int) -> int:
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


def entry_size(e: Entry) -> int:
    """The size of the entry's raftpb encoding (what MaxSizePerMsg budgets count)."""
    n = 3 + _uvarint_size(int(e.type)) + _uvarint_size(e.term) + _uvarint_size(e.index)
    if e.data:
        n += 1 + len(e.data) + _uvarint_size(len(e.data))
    return n


def ents_size(ents: Sequence[Entry]) -> int:
    """The summed encoded size of the entries."""
    return sum(entry_size(e) for e in ents)


def payload_size(e: Entry) -> int:
    """The size of the entry's payload (what the uncommitted-size limit counts)."""
    return len(e.data)


def payloads_size(ents: Sequence[Entry]) -> int:
    """The summed payload size of the entries."""
    return sum(len(e.data) for e in ents)


def limit_size(ents: Sequence[Entry], max_size: int) -> list[Entry]:
    """The longest prefix of ents within max_size bytes, but never fewer than one entry."""
    if not ents:
        return []
    size = entry_size(ents[0])
    for limit in range(1, len(ents)):
        size += entry_size(ents[limit])
        if size > max_size:
            return list(ents[:limit])
    return list(ents)
