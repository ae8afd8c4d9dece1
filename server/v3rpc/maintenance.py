"""The Maintenance service (etcd's api/v3rpc/maintenance.go)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.backend.backend import Backend
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey
from server.backend.snapshot import write_etcd_db
from server.config import Config
from server.errors import EtcdError
from server.etcdserver.alarm import AlarmStore
from server.etcdserver.api import Admission, RaftStatus
from server.etcdserver.errors import NoLeaderError, NotCapableError
from server.etcdserver.quota import BackendQuota
from server.mvcc.kvstore import KVStore
from server.v3rpc.errors import to_grpc_status
from server.v3rpc.header import Header
from server.v3rpc.util import abort_with, unary
from server.version import SERVER_VERSION, STORAGE_VERSION

__all__ = ["MaintenanceService"]

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]
SNAPSHOT_SEND_BUFFER_SIZE = 32 * 1024
_SNAPSHOT_READ_SIZE = 1 << 20

# meta keys that differ between members holding the same data
_HASH_IGNORES = {MetaKey.CONSISTENT_INDEX.value, MetaKey.TERM.value}


def _ignore(bucket: Bucket, key: bytes) -> bool:
    return bucket is Bucket.META and key in _HASH_IGNORES


def _write_snapshot_db(backend: Backend, fd: int) -> int:
    with backend.read_committed() as view, os.fdopen(os.dup(fd), "wb") as out:
        total = write_etcd_db(view, out, STORAGE_VERSION)
        out.flush()
        return total


def _read_block(fd: int, offset: int, size: int, digest: hashlib._Hash) -> bytes:
    block = os.pread(fd, min(size, _SNAPSHOT_READ_SIZE), offset)
    if not block:
        raise EtcdError(f"snapshot file ended {size} bytes early")
    digest.update(block)
    return block


def alarm_string(m: pb.AlarmMember) -> str:
    """An alarm as etcd prints it in Status.errors (gogoproto's compact text form)."""
    return f"memberID:{m.memberID} alarm:{alarm_name(m.alarm)} "


def alarm_name(alarm: int) -> str:
    """The alarm's name; Go prints an unknown enum value as its number."""
    try:
        return pb.AlarmType.Name(alarm)  # type: ignore[arg-type]
    except ValueError:
        return str(alarm)


class MaintenanceServer(RaftStatus, Protocol):
    """What Maintenance reads and runs on the member: its storage, alarms and raft progress."""

    @property
    def cfg(self) -> Config: ...

    @property
    def backend(self) -> LmdbBackend: ...

    @property
    def kv(self) -> KVStore: ...

    @property
    def quota(self) -> BackendQuota: ...

    @property
    def alarms(self) -> AlarmStore: ...

    @property
    def auth(self) -> Admission: ...

    @property
    def committed_index(self) -> int: ...

    @property
    def applied_index(self) -> int: ...

    async def alarm(self, r: pb.AlarmRequest) -> pb.AlarmResponse: ...

    async def defragment(self) -> None: ...

    async def move_leader(self, target: int) -> None: ...


class MaintenanceService(pb_grpc.MaintenanceServicer):
    def __init__(self, server: MaintenanceServer, hdr: Header) -> None:
        self._s = server
        self._hdr = hdr

    @unary
    async def Alarm(self, request: pb.AlarmRequest, context: Ctx) -> pb.AlarmResponse:
        # auth: listing needs any user, raising or clearing the root role
        if request.action == pb.AlarmRequest.GET:
            await self._s.auth.require_auth_info()
        else:
            await self._s.auth.check_admin()
        resp = await self._s.alarm(request)
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def Status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusResponse:
        s = self._s
        await s.auth.require_auth_info()  # auth: any user
        resp = pb.StatusResponse(
            version=SERVER_VERSION,
            dbSize=s.backend.size(),
            dbSizeInUse=s.backend.size_in_use(),
            leader=s.leader_id,
            raftIndex=s.committed_index,
            raftTerm=s.term,
            raftAppliedIndex=s.applied_index,
            isLearner=s.is_learner,
            storageVersion=STORAGE_VERSION,
            dbSizeQuota=s.quota.quota_bytes,
        )
        resp.downgradeInfo.SetInParent()
        if s.leader_id == 0:
            resp.errors.append(to_grpc_status(NoLeaderError())[1])
        resp.errors.extend(alarm_string(m) for m in s.alarms.get())
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def Defragment(self, request: pb.DefragmentRequest, context: Ctx) -> pb.DefragmentResponse:
        await self._s.auth.check_admin()  # auth: root only (as Hash, HashKV, Snapshot, MoveLeader, Downgrade)
        await self._s.defragment()
        return pb.DefragmentResponse()

    @unary
    async def Hash(self, request: pb.HashRequest, context: Ctx) -> pb.HashResponse:
        s = self._s
        await s.auth.check_admin()
        s.backend.force_commit()
        resp = pb.HashResponse(hash=s.backend.hash(_ignore))
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def HashKV(self, request: pb.HashKVRequest, context: Ctx) -> pb.HashKVResponse:
        await self._s.auth.check_admin()
        h, rev = self._s.kv.hash_by_rev(request.revision)
        resp = pb.HashKVResponse(hash=h.hash, compact_revision=h.compact_revision, hash_revision=h.revision)
        resp.header.revision = rev
        self._hdr.fill(resp.header)
        return resp

    async def Snapshot(self, request: pb.SnapshotRequest, context: Ctx) -> AsyncIterator[pb.SnapshotResponse]:
        """The committed backend as etcd's bbolt database in 32 KiB chunks, then its SHA-256, as
        etcd sends it (restore checks the trailing digest). The database is written on a thread
        into a file next to the backend, then sent from it; the event loop only sends."""
        s = self._s
        try:
            await s.auth.check_admin()
        except EtcdError as e:
            await abort_with(context, e)
        await asyncio.wrap_future(s.backend.commit())  # the copy is of committed data
        fd, path = tempfile.mkstemp(
            prefix="snapshot-", suffix=".tmp", dir=os.path.dirname(s.cfg.backend_path)
        )
        try:
            total = await asyncio.to_thread(_write_snapshot_db, s.backend, fd)
            log.info("sending database snapshot to client", extra={"total-bytes": total})
            digest = hashlib.sha256()
            sent = 0
            while sent < total:
                block = await asyncio.to_thread(_read_block, fd, sent, total - sent, digest)
                for i in range(0, len(block), SNAPSHOT_SEND_BUFFER_SIZE):
                    chunk = block[i : i + SNAPSHOT_SEND_BUFFER_SIZE]
                    sent += len(chunk)
                    yield pb.SnapshotResponse(
                        remaining_bytes=total - sent, blob=chunk, version=STORAGE_VERSION
                    )
            yield pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest(), version=STORAGE_VERSION)
            log.info("sent database snapshot to client", extra={"total-bytes": total})
        finally:
            # a thread still writing or reading keeps the unlinked file until it is done
            os.unlink(path)
            os.close(fd)

    @unary
    async def MoveLeader(self, request: pb.MoveLeaderRequest, context: Ctx) -> pb.MoveLeaderResponse:
        await self._s.auth.check_admin()
        await self._s.move_leader(request.targetID)
        return pb.MoveLeaderResponse()

    @unary
    async def Downgrade(self, request: pb.DowngradeRequest, context: Ctx) -> pb.DowngradeResponse:
        await self._s.auth.check_admin()
        raise NotCapableError()
