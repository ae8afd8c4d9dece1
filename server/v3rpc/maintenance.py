"""The Maintenance service (etcd's api/v3rpc/maintenance.go)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey
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

Ctx = grpc.aio.ServicerContext[Any, Any]
SNAPSHOT_SEND_BUFFER_SIZE = 32 * 1024

# meta keys that differ between members holding the same data
_HASH_IGNORES = {MetaKey.CONSISTENT_INDEX.value, MetaKey.TERM.value}


def _ignore(bucket: Bucket, key: bytes) -> bool:
    return bucket is Bucket.META and key in _HASH_IGNORES


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
        """A consistent copy of the backend in 32 KiB chunks, then its SHA-256 (etcd's format:
        restore checks the trailing digest)."""
        s = self._s
        try:
            await s.auth.check_admin()
        except EtcdError as e:
            await abort_with(context, e)
        fd, path = tempfile.mkstemp(prefix="snapshot-", dir=os.path.dirname(s.cfg.backend_path))
        try:
            with os.fdopen(fd, "w+b") as tmp:
                await asyncio.wrap_future(s.backend.commit())  # the copy is of committed data
                await asyncio.to_thread(s.backend.snapshot_to, tmp)
                total = tmp.tell()
                tmp.seek(0)
                digest = hashlib.sha256()
                sent = 0
                while sent < total:
                    chunk = tmp.read(SNAPSHOT_SEND_BUFFER_SIZE)
                    if not chunk:
                        break
                    sent += len(chunk)
                    digest.update(chunk)
                    yield pb.SnapshotResponse(
                        remaining_bytes=total - sent, blob=chunk, version=STORAGE_VERSION
                    )
            yield pb.SnapshotResponse(remaining_bytes=0, blob=digest.digest(), version=STORAGE_VERSION)
        finally:
            os.unlink(path)

    @unary
    async def MoveLeader(self, request: pb.MoveLeaderRequest, context: Ctx) -> pb.MoveLeaderResponse:
        await self._s.auth.check_admin()
        await self._s.move_leader(request.targetID)
        return pb.MoveLeaderResponse()

    @unary
    async def Downgrade(self, request: pb.DowngradeRequest, context: Ctx) -> pb.DowngradeResponse:
        await self._s.auth.check_admin()
        raise NotCapableError()
