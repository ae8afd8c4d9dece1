"""The one loop that does raft's IO (etcd's server/etcdserver/raft.go).

    tick timer --tick()--> RawNode <--step()-- transport (peer messages)
                              |  ^ every proposal queued since the last Ready, in one MsgProp
                           ready()   (propose(); read_index() / ... directly)
                              v
    1. persist: snapshot file + WAL (hard state, entries), fdatasync when must_sync,
       on the WAL thread so the event loop keeps serving meanwhile; meanwhile the committed
       entries are applied (4), unless the Ready carries a snapshot. A lone entry with
       nothing to apply meanwhile, and a hard state that need not be synced, are written on
       the loop itself (a thread would only add hand-offs)
    2. raft's storage learns the persisted entries (and snapshot)
    3. send the messages (after persisting: votes and appends are durable first)
    4. apply: snapshot, then committed entries, through the server's callbacks
    5. advance()

Applying committed entries while the new ones are written is safe because a committed entry
is already durable here: raft counts the leader's own copy only once it is persisted (its
self-acknowledgement is a message sent after the write). So a batch is written (one fdatasync
for every proposal that arrived during the previous write) while the batch before it is
applied and answered: group commit and apply overlap, as in etcd's raft loop.

The pure raft core never sees a clock, a file or a socket; everything here is that IO.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server.failpoint import failpoint
from server.raft import (
    ConfState,
    Entry,
    HardState,
    Message,
    ProposalDroppedError,
    RawNode,
    ReadState,
    Ready,
    Snapshot,
    SoftState,
    StateType,
)
from server.raft.raft import Config as RaftConfig
from server.raft.storage import MemoryStorage
from server.snap.snapshotter import Snapshotter
from server.wal.record import WALSnapshot
from server.wal.wal import WAL

__all__ = ["RaftCallbacks", "RaftNode"]

log = logging.getLogger(__name__)

# seconds between attempts to persist while the disk is full
DISK_FULL_RETRY = 1.0

# etcd's failpoints of its raft loop (server/failpoint.py)
FP_BEFORE_SAVE_SNAP = failpoint("raftBeforeSaveSnap")
FP_BEFORE_WAL_SAVE_SNAP = failpoint("raftBeforeWALSaveSnaphot")
FP_AFTER_SAVE_SNAP = failpoint("raftAfterSaveSnap")
FP_BEFORE_SAVE = failpoint("raftBeforeSave")
FP_AFTER_SAVE = failpoint("raftAfterSave")
FP_BEFORE_APPLY_SNAP = failpoint("raftBeforeApplySnap")
FP_AFTER_APPLY_SNAP = failpoint("raftAfterApplySnap")
FP_BEFORE_LEADER_SEND = failpoint("raftBeforeLeaderSend")
FP_BEFORE_FOLLOWER_SEND = failpoint("raftBeforeFollowerSend")
FP_BEFORE_ADVANCE = failpoint("raftBeforeAdvance")


@dataclass
class RaftCallbacks:
    """What the loop calls into the server for (all on the event loop thread)."""

    on_soft_state: Callable[[SoftState], None]
    # apply a received snapshot (the server swaps its backend for the snapshot's database)
    apply_snapshot: Callable[[Snapshot], Awaitable[None]]
    apply_entries: Callable[[tuple[Entry, ...]], None]
    on_read_states: Callable[[tuple[ReadState, ...]], None]
    send: Callable[[tuple[Message, ...]], None]
    # after each Ready: the server may take a raft snapshot, commit its backend, ...
    after_apply: Callable[[], Awaitable[None]]
    # the raft log cannot be persisted (True) or can again (False)
    on_disk_full: Callable[[bool], None]


class RaftNode:
    def __init__(
        self,
        node: RawNode,
        storage: MemoryStorage,
        wal: WAL,
        snapshotter: Snapshotter,
        callbacks: RaftCallbacks,
        *,
        tick_seconds: float,
    ) -> None:
        self.node = node
        self.storage = storage
        self.wal = wal
        self.snapshotter = snapshotter
        self.cb = callbacks
        self.tick_seconds = tick_seconds
        self._event = asyncio.Event()
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wal")
        self._tasks: list[asyncio.Task[None]] = []
        self.lead = 0
        self.state = StateType.FOLLOWER
        self.hard_state = HardState()
        self.conf_state = ConfState()
        self.stopped = asyncio.Event()
        self.failure: BaseException | None = None
        self.disk_full = False
        # proposals queued since the last step: (data, called with the error if raft drops them)
        self._proposals: list[tuple[bytes, Callable[[Exception], None]]] = []

    @staticmethod
    def config(
        node_id: int, storage: MemoryStorage, *, election_ticks: int, pre_vote: bool, applied: int
    ) -> RaftConfig:
        """etcd's raft settings: heartbeat every tick, CheckQuorum, PreVote, 1 MiB messages,
        512 messages in flight, ReadIndex (safe) linearizable reads."""
        return RaftConfig(
            id=node_id,
            election_tick=election_ticks,
            heartbeat_tick=1,
            storage=storage,
            applied=applied,
            max_size_per_msg=1024 * 1024,
            max_inflight_msgs=512,
            max_uncommitted_entries_size=1 << 30,
            check_quorum=True,
            pre_vote=pre_vote,
            rng=random.Random(),
        )

    # -- inputs -----------------------------------------------------------------------------------

    def notify(self) -> None:
        """Something was stepped/proposed: the node may have work."""
        self._event.set()

    def propose(self, data: bytes, dropped: Callable[[Exception], None]) -> None:
        """Queue a proposal; the loop proposes everything queued in one step before its next
        Ready, and calls dropped(error) for each if raft refuses them (no leader, a leadership
        transfer, ...)."""
        self._proposals.append((data, dropped))
        self._event.set()

    def _propose_queued(self) -> None:
        batch, self._proposals = self._proposals, []
        if not batch:
            return
        try:
            self.node.propose_batch([data for data, _ in batch])
        except ProposalDroppedError as e:
            for _, dropped in batch:
                dropped(e)

    def step(self, m: Message) -> None:
        self.node.step(m)
        self._event.set()

    def advance_ticks(self, n: int) -> None:
        for _ in range(n):
            self.node.tick()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name="raft-tick"),
            asyncio.create_task(self._ready_loop(), name="raft-ready"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await asyncio.get_running_loop().run_in_executor(self._io, self.wal.close)
        self._io.shutdown(wait=True)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.tick_seconds
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.node.tick()
            self._event.set()

    async def _ready_loop(self) -> None:
        try:
            while True:
                await self._event.wait()
                self._event.clear()
                self._propose_queued()
                while self.node.has_ready():
                    await self._process(self.node.ready())
                    self._propose_queued()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a raft or disk failure: the member must stop, not limp on
            log.critical("raft loop failed; stopping the member", exc_info=True)
            self.failure = e
            self.stopped.set()

    async def _process(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self.lead = rd.soft_state.lead
            self.state = rd.soft_state.raft_state
            self.cb.on_soft_state(rd.soft_state)
        if not rd.hard_state.is_empty():
            self.hard_state = rd.hard_state
        snap = rd.snapshot
        committed = rd.committed_entries
        if not snap.is_empty():
            if FP_BEFORE_SAVE_SNAP.armed:
                await FP_BEFORE_SAVE_SNAP.hit_async()
            await self._persist(self._save_snapshot, snap)
            if FP_AFTER_SAVE_SNAP.armed:
                await FP_AFTER_SAVE_SNAP.hit_async()
        if FP_BEFORE_SAVE.armed:
            await FP_BEFORE_SAVE.hit_async()
        if rd.entries or not rd.hard_state.is_empty():
            if not rd.must_sync or (len(rd.entries) <= 1 and not committed):
                # a lone request with nothing to apply meanwhile: a thread would only add two
                # hand-offs (larger batches keep the loop serving while they are synced)
                await self._save_here(rd.hard_state, rd.entries, rd.must_sync)
            else:
                write = asyncio.ensure_future(self._persist(self.wal.save, rd.hard_state, rd.entries, True))
                try:
                    if committed and snap.is_empty():
                        # apply the previous batch while this one is written (see the module doc)
                        self.cb.apply_entries(committed)
                        committed = ()
                finally:
                    await write
        if FP_AFTER_SAVE.armed:
            await FP_AFTER_SAVE.hit_async()
        if not snap.is_empty():
            if FP_BEFORE_APPLY_SNAP.armed:
                await FP_BEFORE_APPLY_SNAP.hit_async()
            self.storage.apply_snapshot(snap)
            self.conf_state = snap.metadata.conf_state
            if FP_AFTER_APPLY_SNAP.armed:
                await FP_AFTER_APPLY_SNAP.hit_async()
        if not rd.hard_state.is_empty():
            self.storage.set_hard_state(rd.hard_state)
        if rd.entries:
            self.storage.append(rd.entries)
        fp_send = FP_BEFORE_LEADER_SEND if self.state == StateType.LEADER else FP_BEFORE_FOLLOWER_SEND
        if fp_send.armed:
            await fp_send.hit_async()
        if rd.messages:
            self.cb.send(rd.messages)
        if not snap.is_empty():
            await self.cb.apply_snapshot(snap)
        if committed:
            self.cb.apply_entries(committed)
        if rd.read_states:
            self.cb.on_read_states(rd.read_states)
        if FP_BEFORE_ADVANCE.armed:
            await FP_BEFORE_ADVANCE.hit_async()
        self.node.advance(rd)
        await self.cb.after_apply()

    async def _save_here(self, hard_state: HardState, entries: tuple[Entry, ...], must_sync: bool) -> None:
        """Write on the loop itself: a hard state that need not be synced (a new commit index
        alone) is a buffered append; a batch with nothing committed to apply meanwhile is
        written and synced here, which costs the loop the fdatasync but spares the request
        two thread hand-offs. A failing write takes the WAL thread's way (retried while the
        disk is full)."""
        try:
            self.wal.save(hard_state, entries, must_sync)
        except OSError:
            await self._persist(self.wal.save, hard_state, entries, must_sync)
        else:
            if self.disk_full:
                self.disk_full = False
                self.cb.on_disk_full(False)

    async def _persist(self, fn: Callable[..., None], *args: object) -> None:
        """Run a WAL/snapshot write on the WAL thread. A full disk does not stop the member:
        the same write is retried until it succeeds (nothing of this Ready is sent, applied or
        acknowledged meanwhile), and the server refuses new writes with NOSPACE."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._io, fn, *args)
                if self.disk_full:
                    self.disk_full = False
                    self.cb.on_disk_full(False)
                return
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if not self.disk_full:
                    log.error("disk full: cannot persist the raft log; retrying", extra={"error": str(e)})
                    self.disk_full = True
                    self.cb.on_disk_full(True)
                await asyncio.sleep(DISK_FULL_RETRY)

    def _save_snapshot(self, snap: Snapshot) -> None:
        self.snapshotter.save_snap(snap)
        if FP_BEFORE_WAL_SAVE_SNAP.armed:
            FP_BEFORE_WAL_SAVE_SNAP.hit()  # on the WAL thread
        md = snap.metadata
        self.wal.save_snapshot(WALSnapshot(index=md.index, term=md.term, conf_state=md.conf_state))

    # -- snapshots and log compaction ---------------------------------------------------------

    async def create_snapshot(self, index: int, data: bytes, catchup_entries: int) -> None:
        """Snapshot raft's state at index (already applied and committed to the backend),
        then compact the in-memory log keeping catchup_entries for slow followers and let the
        WAL release the segments before the snapshot."""
        snap = self.storage.create_snapshot(index, self.conf_state, data)
        await asyncio.get_running_loop().run_in_executor(self._io, self._persist_created_snapshot, snap)
        compact_to = index - catchup_entries
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)

    def _persist_created_snapshot(self, snap: Snapshot) -> None:
        self._save_snapshot(snap)
        self.wal.release_lock_to(snap.metadata.index)
        self.wal.purge(5)
        self.snapshotter.purge_snapshots(5)
