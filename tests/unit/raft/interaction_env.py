"""A scripted environment of RawNodes for data-driven interaction tests.

Nodes have IDs 1..N and MemoryStorage. Nothing happens implicitly: the script ticks nodes,
processes their Readys and delivers messages explicitly, and everything observable (Readys,
messages, raft's log output at the chosen level) is written to the command's output.

Commands (IDs are node IDs):
  log-level LEVEL                      DEBUG, INFO, WARN, ERROR or NONE
  add-nodes N [voters=(..)] [learners=(..)] [index=I] [content=S] [bootstrap=true]
            [prevote=true] [checkquorum=true] [inflight=N] [max-size-per-msg=N]
            [max-uncommitted-size=N] [max-committed-size-per-ready=N] [read-only=safe|lease-based]
            [step-down-on-removal=true] [disable-proposal-forwarding=true]
      With voters/learners the nodes start from a snapshot at index I (term 1) with that
      configuration. With bootstrap=true they instead call RawNode.bootstrap(voters).
  campaign ID | tick-heartbeat ID | tick-election ID | tick ID [n=N]
  set-randomized-election-timeout ID timeout=N
  propose ID DATA | propose-conf-change ID (input: one of vN, lN, rN, uN)
  read-index ID CTX | transfer-leadership from=ID to=ID | forget-leader ID
  process-ready ID... | deliver-msgs ID... [drop=ID...] [type=MsgType]
  stabilize [ID...]                     process Readys and deliver messages until quiescent
  status ID | raft-state | raft-log ID | compact ID INDEX
  report-unreachable ID TARGET | report-snapshot ID TARGET [failed=true] | send-snapshot FROM TO
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from server.raft.describe import describe_entries, describe_message, describe_ready
from server.raft.raft import Config, RaftError
from server.raft.raftpb import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from server.raft.raw_node import RawNode
from server.raft.read_only import ReadOnlyOption
from server.raft.status import StateType
from server.raft.storage import MemoryStorage
from server.raft.util import NO_LIMIT

from .datadriven import DataDrivenError, TestData

__all__ = ["InteractionEnv"]

_LEVELS = ["DEBUG", "INFO", "WARN", "ERROR", "NONE"]


class _Output:
    """Collects command output; also the Logger handed to every node."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.level = 0
        self.indent = ""

    def write(self, s: str) -> None:
        if self.quiet() or not s:
            return
        if self.indent:
            s = "".join(self.indent + ln + "\n" for ln in s.rstrip("\n").split("\n"))
        self.parts.append(s)

    def quiet(self) -> bool:
        return self.level == len(_LEVELS) - 1

    def _log(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        if self.level <= level:
            text = msg % args if args else msg
            self.write(f"{_LEVELS[level]} {text}\n")

    def debug(self, msg: str, *args: object) -> None:
        self._log(0, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(1, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(2, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._log(3, msg, args)

    def take(self) -> str:
        s = "".join(self.parts)
        self.parts = []
        return s


class _EnvStorage(MemoryStorage):
    """MemoryStorage whose snapshot() reflects the node's latest applied state.

    This models an application that can produce a snapshot of its state machine on demand,
    so a leader can catch up a follower even if it never called create_snapshot.
    """

    def __init__(self, history: list[Snapshot]) -> None:
        super().__init__()
        self.history = history

    def snapshot(self) -> Snapshot:
        return self.history[-1]


@dataclass
class _Node:
    rn: RawNode
    storage: _EnvStorage
    config: Config
    # Snapshots of the applied state after each applied entry (index 0: the initial state).
    history: list[Snapshot] = field(default_factory=list)


class InteractionEnv:
    """See the module docstring."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[_Node] = []
        self.messages: list[Message] = []
        self.out = _Output()
        self.rng = random.Random(seed)
        self._handlers: dict[str, Callable[[TestData], None]] = {
            "log-level": self._log_level,
            "add-nodes": self._add_nodes,
            "campaign": lambda d: self._node(d).rn.campaign(),
            "tick-heartbeat": lambda d: self._tick(d, self._node(d).config.heartbeat_tick),
            "tick-election": lambda d: self._tick(d, self._node(d).config.election_tick),
            "tick": lambda d: self._tick(d, d.scan_int("n", 1)),
            "set-randomized-election-timeout": self._set_timeout,
            "propose": self._propose,
            "propose-conf-change": self._propose_conf_change,
            "read-index": self._read_index,
            "transfer-leadership": self._transfer_leadership,
            "forget-leader": lambda d: self._node(d).rn.forget_leader(),
            "process-ready": self._process_ready_cmd,
            "deliver-msgs": self._deliver_msgs_cmd,
            "stabilize": self._stabilize,
            "status": self._status,
            "raft-state": self._raft_state,
            "raft-log": lambda d: self._raft_log(self._node(d)),
            "compact": self._compact,
            "report-unreachable": self._report_unreachable,
            "report-snapshot": self._report_snapshot,
            "send-snapshot": self._send_snapshot,
        }

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, d: TestData) -> str:
        """Run one command and return its output ("ok" if it printed nothing)."""
        handler = self._handlers.get(d.cmd)
        if handler is None:
            raise DataDrivenError(f"{d.pos}: unknown command {d.cmd}")
        try:
            handler(d)
        except RaftError as e:
            # Errors raft reports to the caller are part of the observable behaviour.
            if self.out.quiet():
                self.out.take()
                return f"{type(e).__name__}: {e}\n"
            self.out.write(f"{type(e).__name__}: {e}\n")
        s = self.out.take()
        return s if s else "ok\n"

    def _node(self, d: TestData, pos: int = 0) -> _Node:
        return self.nodes[self._id_arg(d, pos) - 1]

    def _id_arg(self, d: TestData, pos: int = 0) -> int:
        p = d.positional()
        if len(p) <= pos:
            raise DataDrivenError(f"{d.pos}: missing node ID argument")
        nid = int(p[pos])
        if not 1 <= nid <= len(self.nodes):
            raise DataDrivenError(f"{d.pos}: no node {nid}")
        return nid

    @contextmanager
    def _indented(self) -> Iterator[None]:
        old = self.out.indent
        self.out.indent = old + "  "
        try:
            yield
        finally:
            self.out.indent = old

    # -- setup -------------------------------------------------------------------------------

    def _log_level(self, d: TestData) -> None:
        self._set_level(d.positional()[0], d.pos)

    def _set_level(self, name: str, pos: str) -> None:
        name = name.upper()
        if name == "WARNING":
            name = "WARN"
        if name not in _LEVELS:
            raise DataDrivenError(f"{pos}: log levels must be one of {_LEVELS}")
        self.out.level = _LEVELS.index(name)

    def _add_nodes(self, d: TestData) -> None:
        n = int(d.positional()[0])
        voters = self._ids_of(d, "voters")
        learners = self._ids_of(d, "learners")
        index = d.scan_int("index", 0)
        content = d.scan_str("content", "").encode()
        bootstrap = d.scan_bool("bootstrap")
        read_only = {"safe": ReadOnlyOption.SAFE, "lease-based": ReadOnlyOption.LEASE_BASED}[
            d.scan_str("read-only", "safe")
        ]
        snap = Snapshot()
        if (voters or learners) and not bootstrap:
            if index <= 1:
                raise DataDrivenError(f"{d.pos}: index must be > 1 when starting from a snapshot")
            snap = Snapshot(
                data=content,
                metadata=SnapshotMetadata(
                    conf_state=ConfState(voters=voters, learners=learners), index=index, term=1
                ),
            )
        for _ in range(n):
            nid = len(self.nodes) + 1
            history = [snap]
            storage = _EnvStorage(history)
            if not snap.is_empty():
                storage.apply_snapshot(snap)
            cfg = Config(
                id=nid,
                storage=storage,
                election_tick=3,
                heartbeat_tick=1,
                applied=snap.metadata.index,
                max_size_per_msg=d.scan_int("max-size-per-msg", NO_LIMIT),
                max_committed_size_per_ready=d.scan_int("max-committed-size-per-ready", 0),
                max_uncommitted_entries_size=d.scan_int("max-uncommitted-size", 0),
                max_inflight_msgs=d.scan_int("inflight", 1 << 31),
                check_quorum=d.scan_bool("checkquorum"),
                pre_vote=d.scan_bool("prevote"),
                read_only_option=read_only,
                step_down_on_removal=d.scan_bool("step-down-on-removal"),
                disable_proposal_forwarding=d.scan_bool("disable-proposal-forwarding"),
                rng=random.Random(self.rng.getrandbits(32)),
                logger=self.out,
            )
            rn = RawNode(cfg)
            if bootstrap:
                rn.bootstrap(list(voters))
            self.nodes.append(_Node(rn=rn, storage=storage, config=cfg, history=history))

    @staticmethod
    def _ids_of(d: TestData, key: str) -> tuple[int, ...]:
        a = d.arg(key)
        return tuple(int(v) for v in a.vals) if a is not None else ()

    def _set_timeout(self, d: TestData) -> None:
        self._node(d).rn.raft.randomized_election_timeout = d.scan_int("timeout")

    # -- requests ----------------------------------------------------------------------------

    def _tick(self, d: TestData, n: int) -> None:
        node = self._node(d)
        for _ in range(n):
            node.rn.tick()

    def _propose(self, d: TestData) -> None:
        self._node(d).rn.propose(d.positional()[1].encode())

    def _propose_conf_change(self, d: TestData) -> None:
        tok = d.input.strip()
        kinds = {
            "v": ConfChangeType.ADD_NODE,
            "l": ConfChangeType.ADD_LEARNER_NODE,
            "r": ConfChangeType.REMOVE_NODE,
            "u": ConfChangeType.UPDATE_NODE,
        }
        if len(tok.split()) != 1 or tok[:1] not in kinds:
            raise DataDrivenError(f"{d.pos}: expected one change like v2, l3 or r1, got {tok!r}")
        self._node(d).rn.propose_conf_change(ConfChange(type=kinds[tok[0]], node_id=int(tok[1:])))

    def _read_index(self, d: TestData) -> None:
        self._node(d).rn.read_index(d.positional()[1].encode())

    def _transfer_leadership(self, d: TestData) -> None:
        frm, to = d.scan_int("from"), d.scan_int("to")
        self.nodes[frm - 1].rn.transfer_leader(to)

    def _report_unreachable(self, d: TestData) -> None:
        self._node(d).rn.report_unreachable(self._id_arg(d, 1))

    def _report_snapshot(self, d: TestData) -> None:
        self._node(d).rn.report_snapshot(self._id_arg(d, 1), failed=d.scan_bool("failed"))

    def _send_snapshot(self, d: TestData) -> None:
        frm, to = self._id_arg(d, 0), self._id_arg(d, 1)
        node = self.nodes[frm - 1]
        m = Message(
            type=MessageType.MsgSnap,
            to=to,
            frm=frm,
            term=node.rn.status().term,
            snapshot=node.storage.snapshot(),
        )
        self.messages.append(m)
        self.out.write(describe_message(m) + "\n")

    # -- Ready processing and delivery -------------------------------------------------------

    def _process_ready_cmd(self, d: TestData) -> None:
        ids = [int(p) for p in d.positional()]
        for nid in ids:
            if len(ids) > 1:
                self.out.write(f"> {nid} handling Ready\n")
                with self._indented():
                    self.process_ready(nid)
            else:
                self.process_ready(nid)

    def process_ready(self, nid: int) -> None:
        """Persist, send (queue), apply and advance one Ready of node nid."""
        node = self.nodes[nid - 1]
        rd = node.rn.ready()
        self.out.write(describe_ready(rd))
        st = node.storage
        if not rd.hard_state.is_empty():
            st.set_hard_state(rd.hard_state)
        if not rd.snapshot.is_empty():
            if rd.entries:
                raise DataDrivenError("can't apply snapshot and entries at the same time")
            st.apply_snapshot(rd.snapshot)
            node.history.append(rd.snapshot)
        st.append(rd.entries)
        for e in rd.committed_entries:
            cs: ConfState | None = None
            update = e.data
            if e.type == EntryType.CONF_CHANGE:
                cc = ConfChange.unmarshal(e.data)
                update = cc.context
                cs = node.rn.apply_conf_change(cc)
            last = node.history[-1]
            node.history.append(
                Snapshot(
                    data=last.data + update,
                    metadata=SnapshotMetadata(
                        conf_state=cs if cs is not None else last.metadata.conf_state,
                        index=e.index,
                        term=e.term,
                    ),
                )
            )
        self.messages.extend(rd.messages)
        node.rn.advance(rd)

    def _deliver_msgs_cmd(self, d: TestData) -> None:
        typ: MessageType | None = None
        recipients: list[tuple[int, bool]] = []
        for a in d.cmd_args:
            if not a.vals:
                recipients.append((int(a.key), False))
            elif a.key == "drop":
                recipients.extend((int(v), True) for v in a.vals)
            elif a.key == "type":
                typ = MessageType[a.vals[0]]
        if self.deliver_msgs(recipients, typ) == 0:
            self.out.write("no messages\n")

    def deliver_msgs(self, recipients: list[tuple[int, bool]], typ: MessageType | None = None) -> int:
        """Deliver (or drop) the queued messages to each recipient; returns how many."""
        n = 0
        for to, drop in recipients:
            mine = [m for m in self.messages if m.to == to and (typ is None or m.type == typ)]
            self.messages = [m for m in self.messages if not (m.to == to and (typ is None or m.type == typ))]
            n += len(mine)
            for m in mine:
                if drop:
                    self.out.write("dropped: " + describe_message(m) + "\n")
                    continue
                self.out.write(describe_message(m) + "\n")
                try:
                    self.nodes[to - 1].rn.step(m)
                except RaftError as e:
                    self.out.write(f"{type(e).__name__}: {e}\n")
        return n

    def _stabilize(self, d: TestData) -> None:
        ids = [int(p) for p in d.positional()] or list(range(1, len(self.nodes) + 1))
        old = self.out.level
        if d.has_arg("log-level"):
            self._set_level(d.scan_str("log-level"), d.pos)
        try:
            self.stabilize(ids)
        finally:
            self.out.level = old

    def stabilize(self, ids: list[int]) -> None:
        """Alternate processing Readys and delivering messages among ids until nothing changes."""
        while True:
            done = True
            for nid in ids:
                if self.nodes[nid - 1].rn.has_ready():
                    done = False
                    self.out.write(f"> {nid} handling Ready\n")
                    with self._indented():
                        self.process_ready(nid)
            for nid in ids:
                if any(m.to == nid for m in self.messages):
                    done = False
                    self.out.write(f"> {nid} receiving messages\n")
                    with self._indented():
                        self.deliver_msgs([(nid, False)])
            if done:
                return

    # -- inspection --------------------------------------------------------------------------

    def _status(self, d: TestData) -> None:
        st = self._node(d).rn.status()
        self.out.write("".join(f"{pid}: {pr}\n" for pid, pr in sorted(st.progress.items())))

    def _raft_state(self, d: TestData) -> None:
        for node in self.nodes:
            st = node.rn.status()
            voter = "(Voter)" if st.id in st.config.voters.ids() else "(Non-Voter)"
            self.out.write(f"{st.id}: {st.raft_state} {voter} Term:{st.term} Lead:{st.lead}\n")

    def _raft_log(self, node: _Node) -> None:
        s = node.storage
        fi, li = s.first_index(), s.last_index()
        if li < fi:
            self.out.write(f"log is empty: first index={fi}, last index={li}\n")
            return
        self.out.write(describe_entries(s.entries(fi, li + 1, NO_LIMIT)))

    def _compact(self, d: TestData) -> None:
        node = self._node(d)
        node.storage.compact(int(d.positional()[1]))
        self._raft_log(node)

    def leader_ids(self) -> list[int]:
        """IDs of the nodes that currently believe they lead."""
        return [i + 1 for i, n in enumerate(self.nodes) if n.rn.status().raft_state == StateType.LEADER]
