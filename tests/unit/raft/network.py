"""A simulated cluster of RawNodes over an unreliable network, with Raft safety checks.

Every node has a MemoryStorage (its durable state) and a toy replicated state machine: the
list of (index, term, data) of the normal entries it applied, also durable. The network holds
messages in flight; the driver decides what happens next: tick a node, let it process a Ready
(persist, send, apply, advance), deliver / drop / duplicate any in-flight message (so messages
can be reordered), partition the nodes, crash a node (its RawNode and everything not yet
persisted is lost) and restart it from its storage, or compact a node's log behind a snapshot.

After every event check_safety() verifies the Raft safety properties:
  - election safety: at most one leader per term;
  - log matching: if two logs have an entry with the same index and term, they are identical up
    to that index;
  - leader completeness: every committed entry is in the log of every current leader;
  - state machine safety: no two nodes apply different entries at the same index.
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass, field

from server.raft import (
    ConfChange,
    Config,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RaftError,
    RawNode,
    Snapshot,
    StateType,
)

__all__ = ["SafetyViolation", "SimNetwork"]


class SafetyViolation(AssertionError):
    """A Raft safety property was violated."""


Applied = tuple[int, int, str]  # (index, term, data as hex)


@dataclass
class SimNode:
    node_id: int
    storage: MemoryStorage
    rn: RawNode | None
    # The durable state machine: applied normal entries, and the last applied index.
    state: list[Applied] = field(default_factory=list)
    applied_index: int = 0
    restarts: int = 0


class SimNetwork:
    """See the module docstring. Node IDs are 1..n; all nodes are voters."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        pre_vote: bool = False,
        check_quorum: bool = False,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        max_inflight_msgs: int = 4,
        max_size_per_msg: int = 64,
    ) -> None:
        self.ids = list(range(1, n + 1))
        self.seed = seed
        self.options: dict[str, object] = {
            "pre_vote": pre_vote,
            "check_quorum": check_quorum,
            "election_tick": election_tick,
            "heartbeat_tick": heartbeat_tick,
            "max_inflight_msgs": max_inflight_msgs,
            "max_size_per_msg": max_size_per_msg,
        }
        self.nodes: dict[int, SimNode] = {}
        for nid in self.ids:
            st = MemoryStorage()
            node = SimNode(nid, st, None)
            node.rn = self._new_raw_node(node)
            node.rn.bootstrap(self.ids)
            self.nodes[nid] = node
        self.in_flight: list[Message] = []
        # Pairs (from, to) whose messages are lost.
        self.blocked: set[tuple[int, int]] = set()
        # Observations for the safety checks.
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, tuple[int, str]] = {}
        # For each committed index, a term by which it was known to be committed (the term of
        # the node that first applied it; the committing leader's term is at most that).
        self.commit_term: dict[int, int] = {}
        self.proposals = 0

    def _new_raw_node(self, node: SimNode) -> RawNode:
        return RawNode(
            Config(
                id=node.node_id,
                storage=node.storage,
                # The state machine is durable, but the raft configuration is rebuilt from the
                # snapshot plus the conf changes after it, which raft hands out again.
                applied=node.storage.snapshot().metadata.index,
                rng=random.Random(self.seed * 1000 + node.node_id * 10 + node.restarts),
                **self.options,  # type: ignore[arg-type]
            )
        )

    # -- events ----------------------------------------------------------------------------------

    def alive(self, nid: int) -> bool:
        return self.nodes[nid].rn is not None

    def is_leader(self, nid: int) -> bool:
        rn = self.nodes[nid].rn
        return rn is not None and rn.status().raft_state == StateType.LEADER

    def tick(self, nid: int) -> None:
        rn = self.nodes[nid].rn
        if rn is not None:
            rn.tick()

    def propose(self, nid: int) -> bytes | None:
        """Propose a unique value at nid; returns it, or None if the proposal was dropped."""
        rn = self.nodes[nid].rn
        if rn is None:
            return None
        self.proposals += 1
        data = f"v{self.proposals}".encode()
        try:
            rn.propose(data)
        except RaftError:
            return None
        return data

    def process_ready(self, nid: int) -> bool:
        """Handle one Ready of nid: persist, send, apply, advance. Returns whether there was one."""
        node = self.nodes[nid]
        rn = node.rn
        if rn is None or not rn.has_ready():
            return False
        rd = rn.ready()
        st = node.storage
        if not rd.hard_state.is_empty():
            st.set_hard_state(rd.hard_state)
        if not rd.snapshot.is_empty():
            st.apply_snapshot(rd.snapshot)
        st.append(rd.entries)
        for m in rd.messages:
            if (m.frm, m.to) in self.blocked:
                self._lost(m)
            else:
                self.in_flight.append(m)
        if not rd.snapshot.is_empty():
            self._apply_snapshot(node, rd.snapshot)
        for e in rd.committed_entries:
            self._apply_entry(node, e)
        rn.advance(rd)
        return True

    def _apply_entry(self, node: SimNode, e: Entry) -> None:
        assert node.rn is not None
        if e.type == EntryType.CONF_CHANGE:
            node.rn.apply_conf_change(ConfChange.unmarshal(e.data))
        record = (e.term, e.data.hex())
        self._record_commit(node.node_id, e.index, record)
        if e.index <= node.applied_index:
            # Re-delivered after a restart: already in the state machine.
            return
        if e.index != node.applied_index + 1:
            raise SafetyViolation(f"node {node.node_id} applies {e.index} after {node.applied_index}")
        if e.type == EntryType.NORMAL and e.data:
            node.state.append((e.index, e.term, e.data.hex()))
        node.applied_index = e.index

    def _apply_snapshot(self, node: SimNode, snap: Snapshot) -> None:
        items = [tuple(x) for x in json.loads(snap.data.decode())] if snap.data else []
        state: list[Applied] = [(int(i), int(t), str(d)) for i, t, d in items]
        for i, t, d in state:
            self._record_commit(node.node_id, i, (t, d))
        node.state = state
        node.applied_index = snap.metadata.index

    def _record_commit(self, nid: int, index: int, record: tuple[int, str]) -> None:
        rn = self.nodes[nid].rn
        self.commit_term.setdefault(index, rn.status().term if rn is not None else 0)
        prev = self.committed.setdefault(index, record)
        if prev != record:
            raise SafetyViolation(
                f"state machine safety: node {nid} applied {record} at index {index}, another applied {prev}"
            )

    def deliver(self, k: int) -> None:
        """Deliver the k-th in-flight message (mod the queue length)."""
        if not self.in_flight:
            return
        m = self.in_flight.pop(k % len(self.in_flight))
        rn = self.nodes[m.to].rn
        if rn is None or (m.frm, m.to) in self.blocked:
            self._lost(m)
            return
        with contextlib.suppress(RaftError):
            rn.step(m)
        if m.type == MessageType.MsgSnap:
            self._report_snapshot(m, failed=False)

    def drop(self, k: int) -> None:
        if self.in_flight:
            self._lost(self.in_flight.pop(k % len(self.in_flight)))

    def _lost(self, m: Message) -> None:
        # Like etcd's transport: a lost snapshot is reported as failed, and a message that
        # could not be sent makes the sender probe the peer again.
        if m.type == MessageType.MsgSnap:
            self._report_snapshot(m, failed=True)
        sender = self.nodes[m.frm].rn
        if sender is not None and (m.frm, m.to) in self.blocked:
            sender.report_unreachable(m.to)

    def _report_snapshot(self, m: Message, failed: bool) -> None:
        sender = self.nodes[m.frm].rn
        if sender is not None:
            sender.report_snapshot(m.to, failed=failed)

    def duplicate(self, k: int) -> None:
        if self.in_flight:
            self.in_flight.append(self.in_flight[k % len(self.in_flight)])

    def partition(self, side: set[int]) -> None:
        """Cut every link between `side` and the other nodes."""
        self.blocked = {(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)}

    def heal(self) -> None:
        self.blocked = set()

    def crash(self, nid: int) -> None:
        """Lose the node's volatile state; its storage and applied state machine survive."""
        self.nodes[nid].rn = None

    def restart(self, nid: int) -> None:
        node = self.nodes[nid]
        if node.rn is not None:
            return
        node.restarts += 1
        node.rn = self._new_raw_node(node)

    def compact(self, nid: int) -> None:
        """Snapshot the node's applied state and drop the log up to it."""
        node = self.nodes[nid]
        if node.rn is None:
            return
        st = node.storage
        # Only what raft knows to be applied may be compacted (after a restart raft re-delivers
        # entries the state machine already has).
        i = min(node.applied_index, node.rn.status().applied)
        if i <= st.snapshot().metadata.index or i > st.last_index() or i < st.first_index():
            return
        cs = node.rn.status().config.conf_state()
        st.create_snapshot(i, cs, json.dumps([x for x in node.state if x[0] <= i]).encode())
        st.compact(i)

    # -- checks ----------------------------------------------------------------------------------

    def log_of(self, nid: int) -> dict[int, Entry]:
        """The node's retained log (persisted plus unstable), by index."""
        node = self.nodes[nid]
        if node.rn is not None:
            rl = node.rn.raft.raft_log
            return {e.index: e for e in rl.all_entries()}
        st = node.storage
        if st.last_index() < st.first_index():
            return {}
        return {e.index: e for e in st.entries(st.first_index(), st.last_index() + 1, 1 << 62)}

    def check_safety(self) -> None:
        # Election safety.
        for nid in self.ids:
            rn = self.nodes[nid].rn
            if rn is None:
                continue
            st = rn.status()
            if st.raft_state == StateType.LEADER:
                prev = self.leaders.setdefault(st.term, nid)
                if prev != nid:
                    raise SafetyViolation(f"election safety: {prev} and {nid} both led term {st.term}")
        logs = {nid: self.log_of(nid) for nid in self.ids}
        # Log matching.
        for a in self.ids:
            for b in self.ids:
                if a >= b:
                    continue
                common = sorted(set(logs[a]) & set(logs[b]))
                matched = False
                for i in reversed(common):
                    if logs[a][i].term == logs[b][i].term:
                        matched = True
                    if matched and logs[a][i] != logs[b][i]:
                        raise SafetyViolation(f"log matching: nodes {a} and {b} differ at {i}")
        # Leader completeness: a leader of a term later than the one in which an entry was
        # committed has that entry. (A deposed leader that has not noticed yet need not.)
        for nid in self.ids:
            rn = self.nodes[nid].rn
            if rn is None or rn.status().raft_state != StateType.LEADER:
                continue
            log = logs[nid]
            lead_term = rn.status().term
            first = rn.raft.raft_log.first_index()
            last = rn.raft.raft_log.last_index()
            for index, (term, data) in self.committed.items():
                if index < first or self.commit_term[index] >= lead_term:
                    continue
                e = log.get(index)
                if index > last or e is None or (e.term, e.data.hex()) != (term, data):
                    raise SafetyViolation(
                        f"leader completeness: leader {nid} (term {rn.status().term}) lacks committed "
                        f"entry {index} ({term}, {data})"
                    )

    # -- fair scheduling (for liveness) ------------------------------------------------------------

    def settle(self, max_steps: int = 10_000) -> None:
        """Process Readys and deliver messages in order until nothing is left to do."""
        for _ in range(max_steps):
            progressed = False
            for nid in self.ids:
                while self.process_ready(nid):
                    progressed = True
            while self.in_flight:
                self.deliver(0)
                progressed = True
            if not progressed:
                return
        raise AssertionError("network did not settle")

    def leader(self) -> int | None:
        """The leader all live nodes agree on, if any."""
        leads = set()
        for nid in self.ids:
            rn = self.nodes[nid].rn
            if rn is None:
                return None
            leads.add(rn.status().lead)
        if len(leads) != 1:
            return None
        (lead,) = leads
        rn = self.nodes[lead].rn if lead in self.nodes else None
        if rn is None or rn.status().raft_state != StateType.LEADER:
            return None
        return lead

    def run_until(self, done: object, max_ticks: int) -> int:
        """Tick all nodes round-robin, settling in between, until done() holds; returns ticks used."""
        assert callable(done)
        for t in range(max_ticks):
            self.settle()
            self.check_safety()
            if done():
                return t
            for nid in self.ids:
                self.tick(nid)
        self.settle()
        if done():
            return max_ticks
        raise AssertionError(f"not done after {max_ticks} ticks")

    def applied_everywhere(self, data: bytes) -> bool:
        h = data.hex()
        return all(any(d == h for _, _, d in self.nodes[nid].state) for nid in self.ids)
