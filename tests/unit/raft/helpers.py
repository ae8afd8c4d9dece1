"""Shared builders for the raft unit tests: storages, Raft instances and a synchronous network."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from server.raft.raft import Config, Raft
from server.raft.raftpb import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
)
from server.raft.storage import MemoryStorage
from server.raft.util import NO_LIMIT

MT = MessageType


class ConfiguredStorage(MemoryStorage):
    """A MemoryStorage that reports a given initial configuration (as if from a snapshot at 0)."""

    def __init__(self, voters: Sequence[int] = (), learners: Sequence[int] = ()) -> None:
        super().__init__()
        self.initial_conf = ConfState(voters=tuple(voters), learners=tuple(learners))

    def initial_state(self) -> tuple[HardState, ConfState]:
        hs, cs = super().initial_state()
        if self.snapshot().is_empty():
            return hs, self.initial_conf
        return hs, cs


def ents(first_index: int, *terms: int) -> list[Entry]:
    """Entries with consecutive indices from first_index and the given terms."""
    return [Entry(term=t, index=first_index + i) for i, t in enumerate(terms)]


def new_storage(
    voters: Sequence[int] = (1,), learners: Sequence[int] = (), entries: Iterable[Entry] = ()
) -> ConfiguredStorage:
    s = ConfiguredStorage(voters, learners)
    s.append(list(entries))
    return s


def new_raft(
    node_id: int = 1,
    voters: Sequence[int] = (1, 2, 3),
    *,
    election: int = 10,
    heartbeat: int = 1,
    storage: MemoryStorage | None = None,
    learners: Sequence[int] = (),
    seed: int | None = None,
    **cfg: Any,
) -> Raft:
    """A Raft with a configured storage, unlimited message size and a seeded rng."""
    st = storage if storage is not None else new_storage(voters, learners)
    cfg.setdefault("max_size_per_msg", NO_LIMIT)
    return Raft(
        Config(
            id=node_id,
            storage=st,
            election_tick=election,
            heartbeat_tick=heartbeat,
            rng=random.Random(node_id if seed is None else seed),
            **cfg,
        )
    )


def advance_messages_after_append(r: Raft) -> None:
    """Pretend everything unstable was persisted: step self-addressed acks, queue the rest."""
    while r.msgs_after_append:
        msgs, r.msgs_after_append = r.msgs_after_append, []
        for m in msgs:
            if m.to == r.id:
                r.step(m)
            else:
                r.msgs.append(m)


def read_messages(r: Raft) -> list[Message]:
    """All messages r wants to send (after pretending its state was persisted)."""
    advance_messages_after_append(r)
    msgs, r.msgs = r.msgs, []
    return msgs


def persist_and_apply(r: Raft, s: MemoryStorage) -> list[Entry]:
    """Write r's unstable entries to s, mark them stable, apply everything committed."""
    s.append(r.raft_log.next_unstable_ents())
    r.raft_log.stable_to(r.raft_log.last_entry_id())
    advance_messages_after_append(r)
    committed = r.raft_log.next_committed_ents(True)
    r.raft_log.applied_to(r.raft_log.committed, 0)
    return committed


def accept_and_reply(m: Message) -> Message:
    """The MsgAppResp a follower with a matching log sends for the MsgApp m."""
    assert m.type == MT.MsgApp
    return Message(type=MT.MsgAppResp, frm=m.to, to=m.frm, term=m.term, index=m.index + len(m.entries))


def commit_noop_entry(r: Raft, s: MemoryStorage) -> None:
    """Commit a new leader's empty entry by acknowledging it from every follower."""
    assert r.state.name == "LEADER"
    r.bcast_append()
    for m in read_messages(r):
        assert m.type == MT.MsgApp and len(m.entries) == 1 and not m.entries[0].data
        r.step(accept_and_reply(m))
    read_messages(r)
    s.append(r.raft_log.next_unstable_ents())
    r.raft_log.applied_to(r.raft_log.committed, 0)
    r.raft_log.stable_to(r.raft_log.last_entry_id())


class BlackHole:
    """A peer that swallows every message."""

    def step(self, m: Message) -> None:
        pass


class Network:
    """Synchronous delivery between Raft instances (IDs 1..N), with per-link drops.

    send() delivers a message and then, transitively, everything it causes, in FIFO order,
    pretending every node persists its state instantly.
    """

    def __init__(self, *peers: Raft | BlackHole | None, **cfg: Any) -> None:
        ids = list(range(1, len(peers) + 1))
        self.peers: dict[int, Raft | BlackHole] = {}
        self.storage: dict[int, MemoryStorage] = {}
        for nid, p in zip(ids, peers, strict=True):
            if p is None:
                st = new_storage(ids)
                self.storage[nid] = st
                self.peers[nid] = new_raft(nid, ids, storage=st, **cfg)
            else:
                self.peers[nid] = p
        self.dropped: set[tuple[int, int]] = set()
        self.ignored: set[MessageType] = set()

    def raft(self, nid: int) -> Raft:
        p = self.peers[nid]
        assert isinstance(p, Raft)
        return p

    def send(self, *msgs: Message) -> None:
        queue = list(msgs)
        while queue:
            m = queue.pop(0)
            p = self.peers[m.to]
            p.step(m)
            if isinstance(p, Raft):
                queue.extend(self._filter(read_messages(p)))

    def _filter(self, msgs: list[Message]) -> list[Message]:
        out = []
        for m in msgs:
            if m.type in self.ignored or (m.frm, m.to) in self.dropped:
                continue
            # Heartbeats are driven by ticks in these tests, never by MsgHup fan-out.
            assert m.type != MT.MsgHup
            out.append(m)
        return out

    def cut(self, a: int, b: int) -> None:
        self.dropped |= {(a, b), (b, a)}

    def isolate(self, nid: int) -> None:
        for other in self.peers:
            if other != nid:
                self.cut(nid, other)

    def ignore(self, t: MessageType) -> None:
        self.ignored.add(t)

    def recover(self) -> None:
        self.dropped.clear()
        self.ignored.clear()
