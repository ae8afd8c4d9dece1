"""The member: raft underneath, the state machine on top (etcd's server/etcdserver/server.go
and v3_server.go).

Writes are proposals: a request becomes an InternalRaftRequest, is appended to the raft log
(persisted in the WAL by a majority), and the client is answered with the result of applying
it once committed. Every member applies every committed entry in log order; the backend's
consistent index (written in the same backend batch as the entry's effects) prevents applying
an entry twice after a restart. Linearizable reads wait for a ReadIndex confirmation and for
the local state to have applied up to it; serializable reads are served from local state.

Constructors do no IO and start nothing: `await server.start()` opens the data directory and
starts the loops, `await server.stop()` ends them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import itertools
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as PbMessage

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.membershippb import membership_pb2 as mpb
from server.api.peerpb.peer_pb2 import PeerRequest, PeerResponse
from server.auth.errors import AuthOldRevisionError
from server.auth.store import AuthStore
from server.auth.token_provider import new_token_provider
from server.backend.backend import BackendError
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey, decode_uint64, encode_uint64
from server.config import Config, parse_retention
from server.errors import EtcdError
from server.etcdserver import peer, txn, txn_codec
from server.etcdserver.alarm import AlarmStore
from server.etcdserver.apply import Applier, ApplierOptions, ApplyResult
from server.etcdserver.bootstrap import Bootstrapped, bootstrap, new_raw_node
from server.etcdserver.compactor import Compactor
from server.etcdserver.errors import (
    ApplyFailedError,
    BadLeaderTransfereeError,
    LearnerNotReadyError,
    NoLeaderError,
    NoSpaceError,
    NotEnoughStartedMembersError,
    NotLeaderError,
    ProposalDroppedError,
    RequestTooLargeError,
    StoppedError,
    TimeoutError_,
    TimeoutLeaderTransferError,
    TooManyRequestsError,
    UnhealthyError,
)
from server.etcdserver.idutil import Generator
from server.etcdserver.membership import (
    Member,
    MemberNotFoundError,
    MemberNotLearnerError,
    RaftCluster,
    compute_member_id,
)
from server.etcdserver.quota import BackendQuota
from server.etcdserver.quota import cost as quota_cost
from server.etcdserver.raft_node import RaftCallbacks, RaftNode
from server.etcdserver.stats import ServerStats
from server.etcdserver.transport import PeerHandler, Transport, TransportError, peer_request
from server.etcdserver.v3_auth import ServerAuth
from server.etcdserver.wait import Wait, WaitTime
from server.failpoint import failpoint
from server.lease.lessor import LeaseNotFoundError, Lessor, NotPrimaryError
from server.mvcc.kvstore import DEFAULT_COMPACTION_SLEEP_MS, Compaction
from server.mvcc.watchable_store import WATCH_RESYNC_PERIOD, WatchableStore
from server.raft import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)
from server.raft import ProposalDroppedError as RaftProposalDropped
from server.tls import peer_tls
from server.urls import validate_urls
from server.version import CLUSTER_VERSION

__all__ = ["EtcdServer"]

log = logging.getLogger(__name__)

# how often the primary lessor looks for expired leases
LEASE_EXPIRY_CHECK_INTERVAL = 0.5
# the backend is committed at least this often (etcd's batch interval)
BACKEND_COMMIT_INTERVAL = 0.1
# proposals are refused while this many committed entries wait to be applied
MAX_GAP_BETWEEN_APPLY_AND_COMMIT = 5000
READ_INDEX_RETRY = 0.5
# what a pending ReadIndex is answered when it must be asked again (no raft index is negative)
_ASK_AGAIN = -1
# how often unanswered proposals are checked against their deadline
EXPIRY_SWEEP = 0.1
# peers must have been connected this long before a membership change (etcd's HealthInterval)
HEALTH_INTERVAL = 5.0
# etcd's failpoints of the apply and compaction steps (server/failpoint.py)
FP_BEFORE_APPLY_NORMAL = failpoint("beforeApplyOneEntryNormal")
FP_BEFORE_APPLY_CONF_CHANGE = failpoint("beforeApplyOneConfChange")
FP_BEFORE_OPEN_SNAPSHOT = failpoint("applyBeforeOpenSnapshot")
FP_AFTER_OPEN_SNAPSHOT = failpoint("applyAfterOpenSnapshot")
FP_COMPACT_BEFORE_COMMIT_BATCH = failpoint("compactBeforeCommitBatch")
FP_COMPACT_AFTER_COMMIT_BATCH = failpoint("compactAfterCommitBatch")


class _Expired(Exception):
    """A proposal's deadline passed (raised into its waiter by the expiry sweep)."""


def _resolve(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


class EtcdServer:
    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self.backend: LmdbBackend
        self.kv: WatchableStore
        self.lessor: Lessor
        self.alarms: AlarmStore
        self.auth_store: AuthStore
        self.auth: ServerAuth
        self.cluster: RaftCluster
        self.quota: BackendQuota
        self.applier: Applier
        self.raft: RaftNode
        self.transport: Transport
        self.member_id = 0
        self.consistent_index = 0
        self.applied_index = 0
        self.snapshot_index = 0
        self.applied_term = 0
        self._ids: Generator
        # proposals waiting for their entry to be applied (by ID)
        self._wait: Wait[ApplyResult] = Wait()
        # whoever waits for the applied index: linearizable reads, tokens, the first campaign
        self.applied = WaitTime()
        self._read_waiters: list[asyncio.Future[None]] = []
        # unanswered proposals and linearizable reads by deadline (in order: they share one timeout)
        self._expiry: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._read_wake = asyncio.Event()
        self._read_index_waits: dict[bytes, asyncio.Future[int]] = {}
        self._leader_changed = asyncio.Event()
        self._watch_work = asyncio.Event()
        self._compactions: asyncio.Queue[tuple[Compaction, asyncio.Future[None]]] = asyncio.Queue()
        self._compaction_done: dict[int, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._read_ctx = itertools.count(1)
        self._commit_inflight = False
        self.stopping = False
        self.removed = asyncio.Event()
        self.ready = asyncio.Event()
        self._started = False
        self.stats = ServerStats()
        self._backend_full = False
        self._nospace_raising = False
        self._last_leader = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        cfg.validate()
        self.backend = LmdbBackend(cfg.backend_path, fsync=not cfg.unsafe_no_fsync)
        tls = peer_tls(cfg)
        self._peer_ssl = tls.client_context() if tls else None
        try:
            b = await bootstrap(cfg, self.backend, self._peer_ssl)
        except BaseException:
            self.backend.close()
            raise
        self.member_id = b.member_id
        self.cluster = b.cluster
        self.lessor = Lessor.open(self.backend, min_ttl=cfg.min_lease_ttl, clock=self._clock)
        self.kv, resume = WatchableStore.open(self.backend, self.lessor)
        self.kv.stats = self.stats.mvcc
        self.kv.on_work = self._watch_work.set
        self.lessor.set_range_deleter(self.kv.write)
        self.alarms = AlarmStore(self.backend)
        tokens = new_token_provider(cfg.auth_token, cfg.auth_token_ttl, clock=self._clock)
        self.auth_store = AuthStore(self.backend, tokens, cfg.bcrypt_cost)
        self.auth = ServerAuth(
            self.auth_store,
            leases=self.lessor,
            request=self._request,
            linearizable_read=self.linearizable_read,
            applied=self.applied,
            request_timeout=self.request_timeout,
            client_cert_auth=cfg.client_cert_auth,
        )
        self.quota = BackendQuota(self.backend, cfg.quota_backend_bytes)
        self.applier = Applier(
            ApplierOptions(
                kv=self.kv,
                lessor=self.lessor,
                alarms=self.alarms,
                auth=self.auth_store,
                quota=self.quota,
                cluster=self.cluster,
                consistent_index=lambda: self.applied_index,
                on_alarm_raised=self.on_alarm_raised,
            )
        )
        self._ids = Generator(self.member_id)
        self.consistent_index = self._stored_consistent_index()
        raw_term = self.backend.read_tx().get(Bucket.META, MetaKey.TERM)
        self.applied_term = decode_uint64(raw_term) if raw_term else 0
        self.applied_index = max(self.consistent_index, b.applied)
        self.applied.trigger(self.applied_index)
        self.snapshot_index = b.applied
        self.backend.force_commit()
        self.raft = self._new_raft_node(b)
        self.transport = Transport(
            self.member_id,
            lambda: self.cluster.cluster_id,
            PeerHandler(
                cluster_id=lambda: self.cluster.cluster_id,
                is_removed=self.cluster.is_removed,
                on_message=self._on_peer_message,
                on_snapshot=self._receive_snapshot,
                on_request=self._on_peer_request,
            ),
            report_unreachable=self._report_unreachable,
            report_snapshot=self._report_snapshot,
            on_removed=self._removed_by_peer,
            snapshot_source=self._snapshot_db,
            ssl_ctx=self._peer_ssl,
            server_ssl_ctx=tls.server_context() if tls else None,
        )
        await self.transport.listen(list(cfg.listen_peer_urls))
        for m in self.cluster.sorted_members():
            self.transport.add_peer(m.id, list(m.peer_urls))
        self.raft.start()
        if self.cluster.voter_ids() == [self.member_id] or (
            len(b.founders) == 1 and b.founders[0].id == self.member_id
        ):
            # a single voter need not wait for an election timeout
            self._spawn(self._campaign_once_applied(max(len(b.founders), self.applied_index)))
        else:
            self.raft.advance_ticks(cfg.election_ticks - 1)  # etcd's initial election tick advance
        self.raft.notify()
        self._started = True
        self._tasks = [
            asyncio.create_task(self._compaction_loop(), name="compaction"),
            asyncio.create_task(self._expiry_loop(), name="proposal-expiry"),
            asyncio.create_task(self._lease_expiry_loop(), name="lease-expiry"),
            asyncio.create_task(self._watch_loop(), name="watch-sync"),
            asyncio.create_task(self._auto_compactor().run(), name="auto-compaction"),
            asyncio.create_task(self._read_loop(), name="linearizable-read"),
            asyncio.create_task(self._backend_commit_loop(), name="backend-commit"),
            asyncio.create_task(self._publish(), name="publish"),
        ]
        if resume is not None:
            self._schedule_compaction(resume)

    async def _campaign_once_applied(self, index: int) -> None:
        # raft refuses to campaign while committed conf changes wait to be applied
        await self.applied.wait(index)
        self.raft.node.campaign()
        self.raft.notify()

    async def wait_ready(self) -> None:
        """Until this member has published itself through the log: only then does it serve
        clients (etcd's ReadyNotify)."""
        await self.ready.wait()

    def _new_raft_node(self, b: Bootstrapped) -> RaftNode:
        node = RaftNode(
            new_raw_node(b, self.cfg),
            b.storage,
            b.wal,
            b.snapshotter,
            RaftCallbacks(
                on_soft_state=self._on_soft_state,
                apply_snapshot=self._apply_snapshot,
                apply_entries=self._apply_entries,
                on_read_states=self._on_read_states,
                send=lambda msgs: self.transport.send(msgs),
                after_apply=self._after_apply,
                on_disk_full=self._on_disk_full,
            ),
            tick_seconds=self.cfg.heartbeat_interval_ms / 1000,
        )
        node.conf_state = b.storage.initial_state()[1]
        return node

    def _stored_consistent_index(self) -> int:
        raw = self.backend.read_tx().get(Bucket.META, MetaKey.CONSISTENT_INDEX)
        return decode_uint64(raw) if raw else 0

    def _auto_compactor(self) -> Compactor:
        cfg = self.cfg
        return Compactor(
            cfg.auto_compaction_mode,
            parse_retention(cfg.auto_compaction_mode, cfg.auto_compaction_retention),
            self.kv.rev,
            self._auto_compact,
            clock=self._clock,
        )

    async def _auto_compact(self, rev: int) -> None:
        if self.is_leader:  # only the leader compacts; the compaction is replicated
            await self.compact(pb.CompactionRequest(revision=rev))

    async def _publish(self) -> None:
        """Publish this member's name and client URLs (and the cluster version) through the log,
        retrying until it is committed, as etcd's publishV3 does."""
        cfg = self.cfg
        while True:
            try:
                me = self.cluster.member(self.member_id)
                if me is None or me.name != cfg.name or me.client_urls != cfg.advertise_client_urls:
                    attrs = mpb.Attributes(name=cfg.name, client_urls=list(cfg.advertise_client_urls))
                    req = mpb.ClusterMemberAttrSetRequest(member_ID=self.member_id, member_attributes=attrs)
                    await self.propose(rpb.InternalRaftRequest(cluster_member_attr_set=req))
                if self.is_leader and self.cluster.version != CLUSTER_VERSION:
                    await self.propose(
                        rpb.InternalRaftRequest(
                            cluster_version_set=mpb.ClusterVersionSetRequest(ver=CLUSTER_VERSION)
                        )
                    )
                self.ready.set()
                if self.cluster.version == CLUSTER_VERSION:
                    return
            except (StoppedError, TimeoutError_, ProposalDroppedError, NoLeaderError):
                pass
            await asyncio.sleep(self.cfg.heartbeat_interval_ms / 1000)

    async def stop(self) -> None:
        if not self._started or self.stopping:
            return
        self.stopping = True
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.transport.stop()
        await self.raft.stop()
        self._wait.fail_all(StoppedError())
        for waiter in self._read_waiters:
            if not waiter.done():
                waiter.set_exception(StoppedError())
        self.backend.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- raft state -----------------------------------------------------------------------------

    @property
    def term(self) -> int:
        """The term of the last applied entry, as etcd reports it in headers and Status."""
        return self.applied_term

    @property
    def cluster_id(self) -> int:
        return self.cluster.cluster_id

    @property
    def leader_id(self) -> int:
        return self.raft.lead

    @property
    def is_leader(self) -> bool:
        return self.raft.state == StateType.LEADER

    @property
    def committed_index(self) -> int:
        return self.raft.node.raft.raft_log.committed

    @property
    def is_learner(self) -> bool:
        me = self.cluster.member(self.member_id)
        return me is not None and me.is_learner

    def _on_soft_state(self, ss: SoftState) -> None:
        if ss.lead and ss.lead != self._last_leader:
            self.stats.leader_changes += 1
        self._last_leader = ss.lead
        if ss.raft_state == StateType.LEADER:
            if not self.lessor.is_primary:
                self.lessor.promote(self.cfg.election_timeout_ms / 1000)
        elif self.lessor.is_primary:
            self.lessor.demote()
        self._leader_changed.set()
        self._leader_changed = asyncio.Event()
        for fut in self._read_index_waits.values():
            _resolve(fut, _ASK_AGAIN)
        log.info(
            "raft state changed",
            extra={"member": f"{self.member_id:x}", "state": ss.raft_state.name, "leader": f"{ss.lead:x}"},
        )

    def _on_peer_message(self, m: Message) -> None:
        if self.stopping:
            return
        with contextlib.suppress(Exception):
            self.raft.step(m)

    def _removed_by_peer(self) -> None:
        if not self.removed.is_set():
            log.warning("a peer says this member was removed from the cluster; stopping")
            self.removed.set()

    def _report_unreachable(self, peer_id: int) -> None:
        with contextlib.suppress(Exception):
            self.raft.node.report_unreachable(peer_id)

    def _report_snapshot(self, peer_id: int, failed: bool) -> None:
        with contextlib.suppress(Exception):
            self.raft.node.report_snapshot(peer_id, failed)
            self.raft.notify()

    # -- proposals ------------------------------------------------------------------------------

    @property
    def request_timeout(self) -> float:
        return 5.0 + 2 * self.cfg.election_timeout_ms / 1000

    async def propose(self, r: rpb.InternalRaftRequest) -> ApplyResult:
        """Append r to the log and wait for the result of applying it."""
        if self.stopping:
            raise StoppedError()
        if self.committed_index > self.applied_index + MAX_GAP_BETWEEN_APPLY_AND_COMMIT:
            raise TooManyRequestsError()
        if self.auth_store.enabled:
            await self.auth.fill_header(r)  # the proposer's user and auth revision
        r.header.ID = self._ids.next()
        data = r.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise RequestTooLargeError()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        if self.leader_id == 0:
            await self._wait_for_leader(deadline)
        wait_id = r.header.ID
        fut = self._wait.register(wait_id)

        def dropped(_: Exception) -> None:
            self._wait.cancel(wait_id)
            self.stats.proposals_failed += 1
            if not fut.done():
                fut.set_exception(ProposalDroppedError())

        self.raft.propose(data, dropped)
        self.stats.proposals_pending += 1
        self._expiry.append((deadline, fut))
        try:
            return await fut
        except _Expired:
            self.stats.proposals_failed += 1
            raise TimeoutError_() from None
        finally:
            self.stats.proposals_pending -= 1
            self._wait.cancel(wait_id)

    async def _expiry_loop(self) -> None:
        """Fails proposals and linearizable reads still unanswered at their deadline. Every one
        gets the same timeout, so deadlines arrive in order: one sweep instead of a timer per
        request."""
        loop = asyncio.get_running_loop()
        expiry = self._expiry
        while True:
            await asyncio.sleep(EXPIRY_SWEEP)
            now = loop.time()
            while expiry and expiry[0][0] <= now:
                _, fut = expiry.popleft()
                if not fut.done():
                    fut.set_exception(_Expired())
            while expiry and expiry[0][1].done():
                expiry.popleft()

    async def _leader_change(self, deadline: float, retry: float | None = None) -> None:
        """Until raft's leader or role changes, the deadline passes, or retry seconds did."""
        loop = asyncio.get_running_loop()
        until = deadline if retry is None else min(deadline, loop.time() + retry)
        with contextlib.suppress(TimeoutError):
            # wait_for, not asyncio.timeout: a unary call's first step runs before it has a task
            await asyncio.wait_for(self._leader_changed.wait(), until - loop.time())

    async def _wait_for_leader(self, deadline: float) -> None:
        """While the member knows no leader, proposals wait (etcd's raft node does not take them
        then) until one is elected or the request times out."""
        loop = asyncio.get_running_loop()
        while self.leader_id == 0:
            try:
                await asyncio.wait_for(self._leader_changed.wait(), deadline - loop.time())
            except TimeoutError:
                self.stats.proposals_failed += 1
                raise TimeoutError_() from None

    async def _request(self, r: rpb.InternalRaftRequest) -> Any:
        result = await self.propose(r)
        if result.err is not None:
            raise result.err
        return result.resp

    # -- apply ----------------------------------------------------------------------------------

    def _apply_entries(self, entries: tuple[Entry, ...]) -> None:
        ci = self.consistent_index
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                if FP_BEFORE_APPLY_CONF_CHANGE.armed:
                    FP_BEFORE_APPLY_CONF_CHANGE.hit()
                self._apply_conf_change(ConfChange.unmarshal(e.data), e.index > ci)
            else:
                if FP_BEFORE_APPLY_NORMAL.armed:
                    FP_BEFORE_APPLY_NORMAL.hit()
                if e.index > ci and e.data:
                    self._apply_normal(e)
            if e.index > ci:
                ci = e.index
            self.applied_index = max(self.applied_index, e.index)
            self.applied_term = e.term
        if ci != self.consistent_index:
            self.consistent_index = ci
            self.backend.batch_tx().put(Bucket.META, MetaKey.CONSISTENT_INDEX, encode_uint64(ci))
            self.backend.batch_tx().put(Bucket.META, MetaKey.TERM, encode_uint64(self.term))
        self.applied.trigger(self.applied_index)

    def _apply_normal(self, e: Entry) -> None:
        try:
            r = txn_codec.parse(rpb.InternalRaftRequest, e.data)
        except (DecodeError, txn_codec.TooDeepError):
            log.error("entry %d cannot be decoded; skipped on every member", e.index)
            return
        wait_id = r.header.ID or r.ID
        try:
            result = self.applier.apply(r, need_result=self._wait.is_registered(wait_id))
        except Exception as exc:
            # a bug, met identically by every member on the same entry: answer it rather than
            # stop (and stop again at every restart, replaying the entry)
            log.exception("applying entry %d failed", e.index)
            result = ApplyResult(err=ApplyFailedError(f"etcdserver: apply failed: {exc}"))
        if result.compaction is not None:
            self._schedule_compaction(result.compaction)
        if isinstance(result.err, NoSpaceError) and not self.alarms.active(pb.NOSPACE):
            # as etcd: answer once the NOSPACE alarm it implies is raised
            fut = self._wait.take(wait_id)
            if fut is not None:
                self._spawn(self._raise_nospace_then(fut, result))
        else:
            self._wait.trigger(wait_id, result)

    async def _raise_nospace_then(self, fut: asyncio.Future[ApplyResult], result: ApplyResult) -> None:
        with contextlib.suppress(Exception):
            await self._raise_nospace()
        if not fut.done():
            fut.set_result(result)

    def _apply_conf_change(self, cc: ConfChange, should_apply: bool) -> None:
        cluster = self.cluster
        if should_apply:
            if cc.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
                known = cluster.member(cc.node_id)
                if known is not None and known.is_learner and cc.type == ConfChangeType.ADD_NODE:
                    cluster.promote(cc.node_id)
                elif cc.context:
                    cluster.add_member(Member.from_json(cc.context))
            elif cc.type == ConfChangeType.REMOVE_NODE:
                cluster.remove_member(cc.node_id)
            elif cc.type == ConfChangeType.UPDATE_NODE and cc.context:
                cluster.update_raft_attributes(cc.node_id, Member.from_json(cc.context).peer_urls)
        member = cluster.member(cc.node_id)
        if cc.type == ConfChangeType.REMOVE_NODE:
            self.transport.remove_peer(cc.node_id)
            if cc.node_id == self.member_id:
                log.warning("this member was removed from the cluster; stopping")
                self.removed.set()
        elif member is not None:
            if cc.type == ConfChangeType.UPDATE_NODE:
                self.transport.update_peer(member.id, list(member.peer_urls))
            else:
                self.transport.add_peer(member.id, list(member.peer_urls))
        self.raft.conf_state = self.raft.node.apply_conf_change(cc)
        self._wait.trigger(cc.id, ApplyResult())

    async def _apply_snapshot(self, snap: Snapshot) -> None:
        """Install the database that came with a snapshot from the leader."""
        index = snap.metadata.index
        if index <= self.consistent_index:
            return
        db = self.raft.snapshotter.db_file_path(index)
        if FP_BEFORE_OPEN_SNAPSHOT.armed:
            await FP_BEFORE_OPEN_SNAPSHOT.hit_async()
        self.backend.replace_with(db)
        if FP_AFTER_OPEN_SNAPSHOT.armed:
            await FP_AFTER_OPEN_SNAPSHOT.hit_async()
        self.lessor.recover()
        resume = self.kv.restore()
        self.alarms.reload()
        self.auth_store.recover()
        self.cluster.reload()
        for m in self.cluster.sorted_members():
            self.transport.add_peer(m.id, list(m.peer_urls))
        self.consistent_index = self._stored_consistent_index()
        raw_term = self.backend.read_tx().get(Bucket.META, MetaKey.TERM)
        self.applied_term = decode_uint64(raw_term) if raw_term else 0
        self.applied_index = max(self.consistent_index, index)
        self.applied_term = max(self.applied_term, snap.metadata.term)
        self.snapshot_index = index
        self.applied.trigger(self.applied_index)
        if resume is not None:
            self._schedule_compaction(resume)
        log.info("applied snapshot from the leader", extra={"index": index, "revision": self.kv.rev()})

    async def _after_apply(self) -> None:
        if self.applied_index - self.snapshot_index > self.cfg.snapshot_count and not self.disk_full:
            index = self.applied_index
            try:
                await self._commit_backend()
                await self.raft.create_snapshot(index, b"", self.cfg.snapshot_catchup_entries)
            except (BackendError, OSError) as e:
                log.warning("cannot take a raft snapshot now; will retry", extra={"error": str(e)})
                return
            self.snapshot_index = index
            log.info("saved snapshot", extra={"index": index})

    async def _commit_backend(self) -> None:
        """Commit the backend's pending writes; a full disk marks the member full (the writes
        stay buffered and the commit is retried) instead of failing anything applied."""
        try:
            await asyncio.wrap_future(self.backend.commit())
        except BackendError as e:
            if not self._backend_full:
                log.error("backend commit failed; retrying", extra={"error": str(e)})
            self._backend_full = True
            self._on_disk_full(True)
            raise
        if self._backend_full:
            self._backend_full = False
            self._on_disk_full(False)

    async def _backend_commit_loop(self) -> None:
        while True:
            await asyncio.sleep(BACKEND_COMMIT_INTERVAL)
            if self.backend.pending() or self._backend_full:
                with contextlib.suppress(BackendError):
                    await self._commit_backend()

    @property
    def disk_full(self) -> bool:
        return self._backend_full or self.raft.disk_full

    def _on_disk_full(self, full: bool) -> None:
        """The disk filled up (or has room again). While full, writes are refused with NOSPACE;
        the NOSPACE alarm is raised through the log as soon as the log can take it, and stays
        until an operator disarms it (as with etcd's quota)."""
        if full and not self._nospace_raising and not self.alarms.active(pb.NOSPACE):
            self._nospace_raising = True
            self._spawn(self._raise_nospace_until_done())

    async def _raise_nospace_until_done(self) -> None:
        try:
            while not self.alarms.active(pb.NOSPACE) and not self.stopping:
                with contextlib.suppress(EtcdError):
                    await self._raise_nospace()
                if not self.alarms.active(pb.NOSPACE):
                    await asyncio.sleep(1.0)
        finally:
            self._nospace_raising = False

    async def _snapshot_db(self) -> bytes:
        await self._commit_backend()
        buf = io.BytesIO()
        await asyncio.to_thread(self.backend.snapshot_to, buf)
        return buf.getvalue()

    async def _receive_snapshot(self, m: Message, reader: asyncio.StreamReader, size: int) -> None:
        assert m.snapshot is not None
        data = await reader.readexactly(size)
        await asyncio.to_thread(
            self.raft.snapshotter.save_db_from, io.BytesIO(data), m.snapshot.metadata.index
        )
        self.raft.step(m)

    # -- linearizable reads (etcd's linearizableReadLoop) ---------------------------------------

    async def linearizable_read(self) -> None:
        """Wait until this member has applied everything committed before the call."""
        if self.stopping:
            raise StoppedError()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._read_waiters.append(fut)
        self._read_wake.set()
        self._expiry.append((loop.time() + self.request_timeout, fut))
        try:
            await fut
        except _Expired:
            raise TimeoutError_() from None

    async def _read_loop(self) -> None:
        while True:
            await self._read_wake.wait()
            self._read_wake.clear()
            waiters, self._read_waiters = self._read_waiters, []
            if not waiters:
                continue
            try:
                index = await self._read_index()
                await self.applied.wait(index)
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
            except Exception as e:
                for w in waiters:
                    if not w.done():
                        w.set_exception(e)

    async def _read_index(self) -> int:
        """The leader's commit index as of now (raft's ReadIndex), asked again with a new request
        context every READ_INDEX_RETRY and at once when the leader changes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        while True:
            ctx = struct.pack(">Q", next(self._read_ctx))
            fut: asyncio.Future[int] = loop.create_future()
            self._read_index_waits[ctx] = fut
            retry = loop.call_later(READ_INDEX_RETRY, _resolve, fut, _ASK_AGAIN)
            try:
                self.raft.node.read_index(ctx)
                self.raft.notify()
                index = await fut
            finally:
                retry.cancel()
                self._read_index_waits.pop(ctx, None)
            if index != _ASK_AGAIN:
                return index
            if loop.time() > deadline:
                raise TimeoutError_()

    def _on_read_states(self, states: tuple[ReadState, ...]) -> None:
        for rs in states:
            fut = self._read_index_waits.get(rs.request_ctx)
            if fut is not None:
                _resolve(fut, rs.index)

    # -- background loops -----------------------------------------------------------------------

    def _schedule_compaction(self, job: Compaction) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._compaction_done[job.rev] = done
        self._compactions.put_nowait((job, done))
        return done

    async def _compaction_loop(self) -> None:
        # etcd's NewStore: 0 means the default for both
        sleep = (self.cfg.compaction_sleep_interval_ms or DEFAULT_COMPACTION_SLEEP_MS) / 1000
        while True:
            job, done = await self._compactions.get()
            for _ in job.steps(self.cfg.compaction_batch_limit):
                if FP_COMPACT_BEFORE_COMMIT_BATCH.armed:
                    await FP_COMPACT_BEFORE_COMMIT_BATCH.hit_async()
                await self._commit_until_done()
                if FP_COMPACT_AFTER_COMMIT_BATCH.armed:
                    await FP_COMPACT_AFTER_COMMIT_BATCH.hit_async()
                await asyncio.sleep(sleep)
            await self._commit_until_done()
            self._compaction_done.pop(job.rev, None)
            if not done.done():
                done.set_result(None)

    async def _commit_until_done(self) -> None:
        while True:
            try:
                await self._commit_backend()
                return
            except BackendError:
                await asyncio.sleep(1.0)

    def kv_wake(self) -> None:
        """A watch stream drained its channel: victims may fit now."""
        if self.kv.victims:
            self._watch_work.set()

    async def _watch_loop(self) -> None:
        """Catch up unsynced watchers and retry victims (etcd's syncWatchersLoop and
        syncVictimsLoop): promptly when there is new work, then every WATCH_RESYNC_PERIOD while
        watchers stay behind, every 10 ms while victims wait."""
        kv = self.kv
        while True:
            await self._watch_work.wait()
            self._watch_work.clear()
            while kv.victims and kv.move_victims():
                pass
            if kv.unsynced:
                kv.sync_watchers()
            if kv.victims:
                await asyncio.sleep(0.01)
                self._watch_work.set()
            elif kv.unsynced:
                await asyncio.sleep(WATCH_RESYNC_PERIOD)
                self._watch_work.set()

    async def _lease_expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_EXPIRY_CHECK_INTERVAL)
            for lease_id in self.lessor.expired_leases():
                self._spawn(self._revoke_expired(lease_id))

    async def _revoke_expired(self, lease_id: int) -> None:
        with contextlib.suppress(LeaseNotFoundError, StoppedError, TimeoutError_, ProposalDroppedError):
            revoke = pb.LeaseRevokeRequest(ID=lease_id)
            await self._request(rpb.InternalRaftRequest(header=self.auth.root_header(), lease_revoke=revoke))

    # -- alarms ---------------------------------------------------------------------------------

    def on_alarm_raised(self, m: pb.AlarmMember) -> None:
        log.warning("alarm raised", extra={"alarm": int(m.alarm), "member": f"{m.memberID:x}"})

    async def _raise_nospace(self) -> None:
        if self.alarms.active(pb.NOSPACE):
            return
        await self.propose(
            rpb.InternalRaftRequest(
                alarm=pb.AlarmRequest(
                    action=pb.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=pb.NOSPACE
                )
            )
        )

    async def _check_quota(self, req: PbMessage) -> None:
        """etcd's v3rpc quota check: refuse a request that costs space while there is none."""
        c = quota_cost(req)
        if c == 0:
            return
        if self.disk_full:
            raise NoSpaceError()
        if not self.quota.fits(c):
            await self._raise_nospace()
            raise NoSpaceError()

    # -- KV API ---------------------------------------------------------------------------------

    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        if not r.serializable:
            await self.linearizable_read()
        if self.auth_store.enabled:
            chk = self.auth_store.is_range_permitted
            return await self.auth.serialized(
                lambda ai: chk(ai, r.key, r.range_end), lambda: txn.range_(self.kv.read(), r)
            )
        return txn.range_(self.kv.read(), r)

    async def put(self, r: pb.PutRequest) -> pb.PutResponse:
        await self._check_quota(r)
        resp: pb.PutResponse = await self._request(rpb.InternalRaftRequest(put=r))
        return resp

    async def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        resp: pb.DeleteRangeResponse = await self._request(rpb.InternalRaftRequest(delete_range=r))
        return resp

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        if txn.is_txn_readonly(r):
            if not all(op.request_range.serializable for op in (*r.success, *r.failure)):
                await self.linearizable_read()
            if self.auth_store.enabled:
                return await self.auth.serialized(
                    self.auth.txn_check(r), lambda: txn.txn(self.kv, self.lessor, r)
                )
            return txn.txn(self.kv, self.lessor, r)
        await self._check_quota(r)
        req = rpb.InternalRaftRequest()
        req.txn.CopyFrom(r)  # not the constructor: it re-parses, and deep txns exceed upb's depth
        resp: pb.TxnResponse = await self._request(req)
        return resp

    async def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        result = await self.propose(rpb.InternalRaftRequest(compaction=r))
        if result.err is not None:
            raise result.err
        done = self._compaction_done.get(r.revision)
        if r.physical and done is not None:
            await asyncio.shield(done)
        assert isinstance(result.resp, pb.CompactionResponse)
        return result.resp

    # -- Lease API ------------------------------------------------------------------------------

    async def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        if r.ID == 0:
            r.ID = self._ids.next() & ((1 << 63) - 1)
        await self._check_quota(r)
        resp: pb.LeaseGrantResponse = await self._request(rpb.InternalRaftRequest(lease_grant=r))
        return resp

    async def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        resp: pb.LeaseRevokeResponse = await self._request(rpb.InternalRaftRequest(lease_revoke=r))
        return resp

    async def lease_renew(self, lease_id: int) -> int:
        """Keep-alive: on the leader, or forwarded to it (only the leader tracks expiry).
        Auth: a user that may write every key of the lease."""
        if self.auth.enabled:
            await self.auth.check_lease_renew(self.lessor.lookup(lease_id))
        if self.is_leader:
            return self.lessor.renew(lease_id)
        resp = await self._ask_leader(PeerRequest(lease_keep_alive=pb.LeaseKeepAliveRequest(ID=lease_id)))
        return int(resp.lease_keep_alive.TTL)

    async def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        """From the leader's lessor (TTL -1: no such lease). Auth: any user; with keys, one that
        may read every key of the lease."""
        auth = self.auth
        await auth.require_auth_info()
        auth_rev = await auth.check_lease_time_to_live(self.lessor.lookup(r.ID)) if r.keys else 0
        found = await self._lease_time_to_live(r.ID, r.keys)
        if r.keys and auth.enabled and auth_rev != self.auth_store.revision:
            raise AuthOldRevisionError()
        if found is None:
            return pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=-1)
        ttl, granted, keys = found
        return pb.LeaseTimeToLiveResponse(ID=r.ID, TTL=ttl, grantedTTL=granted, keys=keys)

    async def _lease_time_to_live(self, lease_id: int, keys: bool) -> tuple[int, int, list[bytes]] | None:
        """(remaining TTL, granted TTL, keys) from the leader's lessor; None if unknown."""
        if self.is_leader:
            return self._local_lease_time_to_live(lease_id, keys)
        req = pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        try:
            resp = (await self._ask_leader(PeerRequest(lease_time_to_live=req))).lease_time_to_live
        except LeaseNotFoundError:
            return None
        return int(resp.TTL), int(resp.grantedTTL), list(resp.keys)

    def _local_lease_time_to_live(self, lease_id: int, keys: bool) -> tuple[int, int, list[bytes]] | None:
        lease = self.lessor.lookup(lease_id)
        if lease is None:
            return None
        return int(self.lessor.remaining(lease)), lease.ttl, sorted(lease.keys) if keys else []

    async def lease_leases(self) -> pb.LeaseLeasesResponse:
        """Auth: a user that may read every leased key."""
        leases = self.lessor.leases()
        await self.auth.check_lease_leases(leases)
        return pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=le.id) for le in leases])

    async def _ask_leader(self, request: PeerRequest) -> PeerResponse:
        """The leader's answer (here, if this member leads); its error raised here as the leader
        met it (server/etcdserver/peer.py)."""
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        while True:
            leader = self.cluster.member(self.leader_id) if self.leader_id else None
            resp: PeerResponse | None = None
            if leader is not None and leader.id != self.member_id:
                with contextlib.suppress(OSError, TransportError, TimeoutError):
                    resp = await peer_request(
                        leader.peer_urls[0], request, member_id=self.member_id, ssl_ctx=self._peer_ssl
                    )
            elif self.is_leader:
                resp = await self._on_peer_request(request)
            if resp is not None:
                if resp.HasField("error"):
                    peer.raise_error(resp.error)
                return resp
            if asyncio.get_running_loop().time() > deadline:
                raise NoLeaderError()
            # a new leader, or (an unreachable leader) a heartbeat later
            await self._leader_change(deadline, retry=self.cfg.heartbeat_interval_ms / 1000)

    async def _on_peer_request(self, req: PeerRequest) -> PeerResponse:
        try:
            which = req.WhichOneof("request")
            if which == "member_list":
                return PeerResponse(
                    member_list=pb.MemberListResponse(
                        header=pb.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id),
                        members=[m.to_pb() for m in self.members()],
                    )
                )
            if which == "lease_keep_alive":
                lease_id = req.lease_keep_alive.ID
                try:
                    ttl = self.lessor.renew(lease_id)
                except NotPrimaryError:
                    raise LeaseNotFoundError() from None
                return PeerResponse(lease_keep_alive=pb.LeaseKeepAliveResponse(ID=lease_id, TTL=ttl))
            if which == "lease_time_to_live":
                r = req.lease_time_to_live
                found = self._local_lease_time_to_live(r.ID, r.keys)
                if found is None:
                    raise LeaseNotFoundError()
                ttl, granted, keys = found
                return PeerResponse(
                    lease_time_to_live=pb.LeaseTimeToLiveResponse(
                        ID=r.ID, TTL=ttl, grantedTTL=granted, keys=keys
                    )
                )
            if which == "member_promote":
                await self.member_promote(req.member_promote.ID)
                return PeerResponse(member_promote=pb.MemberPromoteResponse())
            raise ValueError(f"unknown peer request {which!r}")
        except Exception as e:
            return peer.error_response(e)

    # -- Maintenance ----------------------------------------------------------------------------

    async def alarm(self, r: pb.AlarmRequest) -> pb.AlarmResponse:
        if r.action == pb.AlarmRequest.GET and self.raft.disk_full:
            return self._alarms_while_wal_full(r.alarm)
        resp: pb.AlarmResponse = await self._request(rpb.InternalRaftRequest(alarm=r))
        return resp

    def _alarms_while_wal_full(self, alarm: int) -> pb.AlarmResponse:
        """A list the log cannot answer: nothing reaches apply while the WAL cannot be written
        (etcd itself stops on a failed WAL write). The applied alarms, plus this member's
        NOSPACE that is waiting for room in the log (_raise_nospace_until_done)."""
        resp = pb.AlarmResponse(
            alarms=self.alarms.get(alarm), header=pb.ResponseHeader(revision=self.kv.rev())
        )
        mine = pb.AlarmMember(memberID=self.member_id, alarm=pb.NOSPACE)
        if alarm in (pb.NONE, pb.NOSPACE) and mine not in resp.alarms:
            resp.alarms.append(mine)
        return resp

    async def defragment(self) -> None:
        await self._commit_backend()
        self.backend.defrag()

    async def move_leader(self, target: int) -> None:
        if not self.is_leader:
            raise NotLeaderError()
        m = self.cluster.member(target)
        if m is None or m.is_learner:
            raise BadLeaderTransfereeError()
        if target == self.member_id:
            return
        self.raft.node.transfer_leader(target)
        self.raft.notify()
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        while self.leader_id != target:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutLeaderTransferError()
            await self._leader_change(deadline)

    # -- membership -----------------------------------------------------------------------------

    async def _conf_change(self, cc: ConfChange) -> None:
        await self._wait_for_leader(asyncio.get_running_loop().time() + self.request_timeout)
        fut = self._wait.register(cc.id)
        try:
            try:
                self.raft.node.propose_conf_change(cc)
            except RaftProposalDropped:
                raise ProposalDroppedError() from None
            self.raft.notify()
            await asyncio.wait_for(asyncio.shield(fut), self.request_timeout)
        except TimeoutError:
            raise TimeoutError_() from None
        finally:
            self._wait.cancel(cc.id)

    # -- strict reconfiguration checks (etcd's mayAddMember / mayRemoveMember) -------------------

    def _connected_voters(self, since: float) -> int:
        """Voting members connected to us both ways since before `since` (ourselves included)."""
        n = 0
        for m in self.cluster.members.values():
            if m.is_learner:
                continue
            t = 0.0 if m.id == self.member_id else self.transport.active_since(m.id)
            if t is not None and t <= since:
                n += 1
        return n

    def _ready_to_change_voters(self, exclude: int = 0, adding: bool = False) -> bool:
        """Enough started (published) voters for a quorum after the change."""
        voters = [m for m in self.cluster.members.values() if not m.is_learner and m.id != exclude]
        started = sum(1 for m in voters if m.name)
        total = len(voters) + (1 if adding else 0)
        if adding and started == 1 and total == 2:
            return True  # adding a member to a 1-member cluster (restoring its data)
        return started >= total // 2 + 1

    def _may_add_member(self, is_learner: bool) -> None:
        if not is_learner and not self._ready_to_change_voters(adding=True):
            raise NotEnoughStartedMembersError()
        voters = self.cluster.voter_ids()
        if self._connected_voters(time.monotonic() - HEALTH_INTERVAL) < len(voters):
            raise UnhealthyError()

    def _may_remove_member(self, member_id: int) -> None:
        m = self.cluster.member(member_id)
        if m is None or m.is_learner:
            return
        if not self._ready_to_change_voters(exclude=member_id):
            raise NotEnoughStartedMembersError()
        if member_id != self.member_id and self.transport.active_since(member_id) is None:
            return  # a member that is down is not part of the active quorum
        voters = self.cluster.voter_ids()
        active = self._connected_voters(time.monotonic() - HEALTH_INTERVAL)
        if active - 1 < 1 + (len(voters) - 1) // 2:
            raise UnhealthyError()

    def members(self) -> list[Member]:
        return self.cluster.sorted_members()

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> Member:
        validate_urls(peer_urls)
        member = Member(
            id=compute_member_id(peer_urls, self.cfg.initial_cluster_token, int(time.time())),
            peer_urls=tuple(peer_urls),
            is_learner=is_learner,
        )
        self._may_add_member(is_learner)  # etcd checks the cluster's health first
        self.cluster.validate_add(member)
        kind = ConfChangeType.ADD_LEARNER_NODE if is_learner else ConfChangeType.ADD_NODE
        await self._conf_change(ConfChange(kind, member.id, member.to_json(), self._ids.next()))
        return member

    async def member_remove(self, member_id: int) -> None:
        self._may_remove_member(member_id)
        self.cluster.validate_remove(member_id)
        await self._conf_change(ConfChange(ConfChangeType.REMOVE_NODE, member_id, b"", self._ids.next()))

    async def member_update(self, member_id: int, peer_urls: list[str]) -> None:
        validate_urls(peer_urls)
        m = self.cluster.member(member_id)
        if m is None:
            self.cluster.validate_remove(member_id)
            raise AssertionError("unreachable")
        updated = Member(m.id, m.name, tuple(peer_urls), m.client_urls, m.is_learner)
        await self._conf_change(
            ConfChange(ConfChangeType.UPDATE_NODE, member_id, updated.to_json(), self._ids.next())
        )

    async def member_promote(self, member_id: int) -> None:
        self.cluster.validate_promote(member_id)
        if not self._ready_to_change_voters(adding=True):
            raise NotEnoughStartedMembersError()
        if not self.is_leader:
            try:
                await self._ask_leader(PeerRequest(member_promote=pb.MemberPromoteRequest(ID=member_id)))
            except (LearnerNotReadyError, MemberNotFoundError, MemberNotLearnerError):
                raise  # etcd returns these from the leader; anything else: not promoted here
            except EtcdError:
                raise NotLeaderError() from None
            return
        progress = self.raft.node.status().progress.get(member_id)
        leader = self.raft.node.status().progress.get(self.member_id)
        if progress is None or leader is None or progress.match < leader.match * 9 // 10:
            raise LearnerNotReadyError()
        m = self.cluster.member(member_id)
        assert m is not None
        promoted = Member(m.id, m.name, m.peer_urls, m.client_urls, False)
        await self._conf_change(
            ConfChange(ConfChangeType.ADD_NODE, member_id, promoted.to_json(), self._ids.next())
        )
