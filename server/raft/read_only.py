"""Linearizable read-only requests (ReadIndex, Raft thesis §6.4)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .raftpb import Message
from .util import InvariantError

__all__ = ["ReadIndexStatus", "ReadOnly", "ReadOnlyOption", "ReadState"]


class ReadOnlyOption(enum.Enum):
    # Confirm leadership with a heartbeat round to a quorum before answering (always safe).
    SAFE = 0
    # Rely on the leader lease (CheckQuorum); unsafe under unbounded clock drift.
    LEASE_BASED = 1


@dataclass(frozen=True, slots=True)
class ReadState:
    """The answer to a read_index() call: serving a read at `index` once applied is linearizable.

    request_ctx is the context the caller passed, so it can match answers to requests.
    """

    index: int
    request_ctx: bytes


@dataclass(slots=True)
class ReadIndexStatus:
    """A pending read: the request, the commit index when it arrived, and the heartbeat acks."""

    req: Message
    index: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """The leader's queue of reads waiting for a quorum of heartbeat acknowledgements.

    Invariant: read_index_queue holds the keys of pending_read_index in arrival order; a
    quorum ack for a request also confirms every request queued before it.
    """

    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        self.pending_read_index: dict[bytes, ReadIndexStatus] = {}
        self.read_index_queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        """Queue the MsgReadIndex m, to be served at commit index `index`; duplicates are ignored."""
        ctx = m.entries[0].data
        if ctx in self.pending_read_index:
            return
        self.pending_read_index[ctx] = ReadIndexStatus(req=m, index=index)
        self.read_index_queue.append(ctx)

    def recv_ack(self, voter_id: int, context: bytes) -> set[int] | None:
        """Record that voter_id acknowledged the heartbeat for `context`; returns all acks so far."""
        rs = self.pending_read_index.get(context)
        if rs is None:
            return None
        rs.acks.add(voter_id)
        return rs.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Dequeue and return the request for `context` and all requests queued before it."""
        if context not in self.pending_read_index:
            return []
        done: list[ReadIndexStatus] = []
        for i, ctx in enumerate(self.read_index_queue):
            rs = self.pending_read_index.get(ctx)
            if rs is None:
                raise InvariantError("cannot find corresponding read state from pending map")
            done.append(rs)
            if ctx == context:
                self.read_index_queue = self.read_index_queue[i + 1 :]
                for r in done:
                    del self.pending_read_index[r.req.entries[0].data]
                return done
        return []

    def last_pending_request_ctx(self) -> bytes:
        """The context of the newest pending read, or b"" if none."""
        return self.read_index_queue[-1] if self.read_index_queue else b""
