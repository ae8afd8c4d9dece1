"""The member: state machine, request processing and the loop that applies the log
(etcd's server/etcdserver/server.go and v3_server.go).

Writes are proposals: a request becomes an InternalRaftRequest, is appended to the log, and the
client is answered with the result of applying it. The log here is single-member: a batch of
proposals is applied in order and made durable by one backend commit (group commit) before any
of its clients is answered or any reader can observe it, because the apply loop blocks the
event loop for that commit. Reads are served from the applied state.

Constructors do no IO and start nothing: `await server.start()` opens the data directory and
starts the loops, `await server.stop()` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.membershippb import membership_pb2 as mpb
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey, decode_uint64, encode_uint64
from server.embed.config import Config
from server.etcdserver import txn
from server.etcdserver.alarm import AlarmStore
from server.etcdserver.apply import Applier, ApplyResult
from server.etcdserver.compactor import Compactor, parse_retention
from server.etcdserver.errors import NoSpaceError, NotCapableError, RequestTooLargeError, StoppedError
from server.etcdserver.idutil import Generator
from server.etcdserver.membership import Member, RaftCluster
from server.etcdserver.quota import BackendQuota
from server.lease.lessor import LeaseNotFoundError, Lessor
from server.mvcc.kvstore import Compaction
from server.mvcc.watchable_store import WATCH_RESYNC_PERIOD, WatchableStore
from server.version import CLUSTER_VERSION

__all__ = ["EtcdServer"]

log = logging.getLogger(__name__)

# how often the primary lessor looks for expired leases
LEASE_EXPIRY_CHECK_INTERVAL = 0.5
MEMBER_ID_KEY = b"memberID"
# the term a fresh single member is in once it has elected itself (as with etcd's raft)
SINGLE_MEMBER_TERM = 2


class EtcdServer:
    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self.backend: LmdbBackend
        self.kv: WatchableStore
        self.lessor: Lessor
        self.alarms: AlarmStore
        self.cluster: RaftCluster
        self.quota: BackendQuota
        self.applier: Applier
        self.member_id = 0
        self.term = 0
        self.applied_index = 0
        self.committed_index = 0
        self._ids: Generator
        self._proposals: list[tuple[rpb.InternalRaftRequest, asyncio.Future[ApplyResult]]] = []
        self._proposed = asyncio.Event()
        self._watch_work = asyncio.Event()
        self._compactions: asyncio.Queue[tuple[Compaction, asyncio.Future[None]]] = asyncio.Queue()
        self._compaction_done: dict[int, asyncio.Future[None]] = {}
        self._revokes: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        cfg.validate()
        self.backend = LmdbBackend(cfg.backend_path, fsync=not cfg.unsafe_no_fsync)
        tx = self.backend.read_tx()
        raw_id = tx.get(Bucket.META, MEMBER_ID_KEY)
        members = cfg.initial_members()
        if raw_id is None:
            self.member_id = members[cfg.name][0]
        else:
            self.member_id = decode_uint64(raw_id)
        cluster = RaftCluster.load(self.backend, local_id=self.member_id, max_learners=cfg.max_learners)
        if cluster is None:
            cluster = self._bootstrap_cluster(members)
        self.cluster = cluster
        raw_index = tx.get(Bucket.META, MetaKey.CONSISTENT_INDEX)
        self.applied_index = self.committed_index = decode_uint64(raw_index) if raw_index else 0
        raw_term = tx.get(Bucket.META, MetaKey.TERM)
        self.term = decode_uint64(raw_term) if raw_term else SINGLE_MEMBER_TERM
        self.lessor = Lessor.open(self.backend, min_ttl=cfg.min_lease_ttl, clock=self._clock)
        self.kv, resume = WatchableStore.open(self.backend, self.lessor)
        self.kv.on_work = self._watch_work.set
        self.lessor.set_range_deleter(self.kv.write)
        self.alarms = AlarmStore(self.backend)
        self.quota = BackendQuota(self.backend, cfg.quota_backend_bytes)
        self.applier = Applier(self)
        self._ids = Generator(self.member_id)
        self.backend.force_commit()
        # the single member is the leader: its lessor tracks expiry, with fresh TTLs
        self.lessor.promote(cfg.election_timeout_ms / 1000)
        self._started = True
        self._tasks = [
            asyncio.create_task(self._apply_loop(), name="apply"),
            asyncio.create_task(self._compaction_loop(), name="compaction"),
            asyncio.create_task(self._lease_expiry_loop(), name="lease-expiry"),
            asyncio.create_task(self._watch_loop(), name="watch-sync"),
            asyncio.create_task(self._auto_compactor().run(), name="auto-compaction"),
        ]
        if resume is not None:
            self._schedule_compaction(resume)
        await self._publish()

    def _auto_compactor(self) -> Compactor:
        cfg = self.cfg
        return Compactor(
            cfg.auto_compaction_mode,
            parse_retention(cfg.auto_compaction_mode, cfg.auto_compaction_retention),
            self.kv.rev,
            lambda rev: self.compact(pb.CompactionRequest(revision=rev)),
            clock=self._clock,
        )

    def _bootstrap_cluster(self, members: dict[str, tuple[int, tuple[str, ...]]]) -> RaftCluster:
        cfg = self.cfg
        cluster = RaftCluster(
            self.backend,
            local_id=self.member_id,
            cluster_id=cfg.initial_cluster_id(),
            max_learners=cfg.max_learners,
        )
        cluster.save_identity()
        for _, (mid, urls) in sorted(members.items()):
            cluster.add_member(Member(id=mid, peer_urls=urls))
        tx = self.backend.batch_tx()
        tx.put(Bucket.META, MEMBER_ID_KEY, encode_uint64(self.member_id))
        tx.put(Bucket.META, MetaKey.TERM, encode_uint64(SINGLE_MEMBER_TERM))
        return cluster

    async def _publish(self) -> None:
        """Publish this member's name and client URLs, and the cluster version, through the log."""
        cfg = self.cfg
        me = self.cluster.member(self.member_id)
        if me is None or me.name != cfg.name or me.client_urls != cfg.advertise_client_urls:
            attrs = mpb.Attributes(name=cfg.name, client_urls=list(cfg.advertise_client_urls))
            await self.propose(
                rpb.InternalRaftRequest(
                    cluster_member_attr_set=mpb.ClusterMemberAttrSetRequest(
                        member_ID=self.member_id, member_attributes=attrs
                    )
                )
            )
        if self.cluster.version != CLUSTER_VERSION:
            await self.propose(
                rpb.InternalRaftRequest(cluster_version_set=mpb.ClusterVersionSetRequest(ver=CLUSTER_VERSION))
            )

    async def stop(self) -> None:
        if not self._started or self._stopping:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, fut in self._proposals:
            if not fut.done():
                fut.set_exception(StoppedError())
        self._proposals.clear()
        self.backend.close()

    # -- proposals ------------------------------------------------------------------------------

    async def propose(self, r: rpb.InternalRaftRequest) -> ApplyResult:
        """Append r to the log and wait for the result of applying it."""
        if self._stopping:
            raise StoppedError()
        r.header.ID = self._ids.next()
        if r.ByteSize() > self.cfg.max_request_bytes:
            raise RequestTooLargeError()
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._proposals.append((r, fut))
        self._proposed.set()
        return await fut

    async def _request(self, r: rpb.InternalRaftRequest) -> Any:
        result = await self.propose(r)
        if result.err is not None:
            if isinstance(result.err, NoSpaceError):
                await self._raise_nospace()
            raise result.err
        return result.resp

    async def _apply_loop(self) -> None:
        while True:
            await self._proposed.wait()
            self._proposed.clear()
            batch, self._proposals = self._proposals, []
            results = []
            for r, fut in batch:
                self.committed_index += 1
                result = self.applier.apply(r)
                self.applied_index = self.committed_index
                results.append((fut, result))
                if result.compaction is not None:
                    self._schedule_compaction(result.compaction)
            self.backend.batch_tx().put(
                Bucket.META, MetaKey.CONSISTENT_INDEX, encode_uint64(self.applied_index)
            )
            # durable before anyone learns of it: the event loop waits for the commit
            self.backend.force_commit()
            for fut, result in results:
                if not fut.done():
                    fut.set_result(result)

    def _schedule_compaction(self, job: Compaction) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._compaction_done[job.rev] = done
        self._compactions.put_nowait((job, done))
        return done

    async def _compaction_loop(self) -> None:
        sleep = self.cfg.compaction_sleep_interval_ms / 1000
        while True:
            job, done = await self._compactions.get()
            for _ in job.steps():
                self.backend.force_commit()
                await asyncio.sleep(sleep)
            self.backend.force_commit()
            self._compaction_done.pop(job.rev, None)
            if not done.done():
                done.set_result(None)

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
                task = asyncio.create_task(self._revoke_expired(lease_id))
                self._revokes.add(task)
                task.add_done_callback(self._revokes.discard)

    async def _revoke_expired(self, lease_id: int) -> None:
        with contextlib.suppress(LeaseNotFoundError, StoppedError):
            await self._request(rpb.InternalRaftRequest(lease_revoke=pb.LeaseRevokeRequest(ID=lease_id)))

    # -- alarms ---------------------------------------------------------------------------------

    def on_alarm_raised(self, m: pb.AlarmMember) -> None:
        log.warning("alarm raised", extra={"alarm": pb.AlarmType.Name(m.alarm), "member": f"{m.memberID:x}"})

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

    async def _check_quota(self, req: Message) -> None:
        if not self.quota.available(req):
            await self._raise_nospace()
            raise NoSpaceError()

    # -- KV API ---------------------------------------------------------------------------------

    def header(self, revision: int | None = None) -> pb.ResponseHeader:
        return pb.ResponseHeader(
            cluster_id=self.cluster.cluster_id,
            member_id=self.member_id,
            revision=self.kv.rev() if revision is None else revision,
            raft_term=self.term,
        )

    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
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
            return txn.txn(self.kv, self.lessor, r)
        await self._check_quota(r)
        resp: pb.TxnResponse = await self._request(rpb.InternalRaftRequest(txn=r))
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

    def lease_renew(self, lease_id: int) -> int:
        return self.lessor.renew(lease_id)

    # -- Maintenance ----------------------------------------------------------------------------

    async def alarm(self, r: pb.AlarmRequest) -> pb.AlarmResponse:
        resp: pb.AlarmResponse = await self._request(rpb.InternalRaftRequest(alarm=r))
        return resp

    async def defragment(self) -> None:
        self.backend.defrag()

    # -- membership (needs the replicated log of several members) --------------------------------

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> Member:
        raise NotCapableError()

    async def member_remove(self, member_id: int) -> None:
        raise NotCapableError()

    async def member_update(self, member_id: int, peer_urls: list[str]) -> None:
        raise NotCapableError()

    async def member_promote(self, member_id: int) -> None:
        raise NotCapableError()

    @property
    def leader_id(self) -> int:
        return self.member_id
