"""The Lease service (etcd's api/v3rpc/lease.go)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.auth.errors import AuthOldRevisionError
from server.errors import EtcdError
from server.etcdserver.server import EtcdServer
from server.lease.lessor import LeaseNotFoundError
from server.v3rpc.header import fill
from server.v3rpc.util import abort_with, unary

__all__ = ["LeaseService"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class LeaseService(pb_grpc.LeaseServicer):
    def __init__(self, server: EtcdServer) -> None:
        self._s = server

    @unary
    async def LeaseGrant(self, request: pb.LeaseGrantRequest, context: Ctx) -> pb.LeaseGrantResponse:
        await self._s.auth.require_auth_info()  # auth: any user
        resp = await self._s.lease_grant(request)
        fill(self._s, resp.header)
        return resp

    @unary
    async def LeaseRevoke(self, request: pb.LeaseRevokeRequest, context: Ctx) -> pb.LeaseRevokeResponse:
        await self._s.auth.require_auth_info()  # auth: any user; the apply checks the lease's keys
        resp = await self._s.lease_revoke(request)
        fill(self._s, resp.header)
        return resp

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[pb.LeaseKeepAliveRequest], context: Ctx
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        async for req in request_iterator:
            try:
                if self._s.auth_store.enabled:  # auth: a user that may write every key of the lease
                    await self._s.auth.check_lease_renew(self._s.lessor.lookup(req.ID))
                ttl = await self._s.lease_renew(req.ID)
            except LeaseNotFoundError:
                ttl = 0
            except EtcdError as e:
                await abort_with(context, e)
            resp = pb.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl)
            fill(self._s, resp.header)
            yield resp

    @unary
    async def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: Ctx
    ) -> pb.LeaseTimeToLiveResponse:
        s = self._s
        # auth: any user; with keys, one that may read every key of the lease
        await s.auth.require_auth_info()
        auth_rev = await s.auth.check_lease_time_to_live(s.lessor.lookup(request.ID)) if request.keys else 0
        found = await s.lease_time_to_live(request.ID, request.keys)
        if request.keys and s.auth_store.enabled and auth_rev != s.auth_store.revision:
            raise AuthOldRevisionError()
        if found is None:
            resp = pb.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        else:
            ttl, granted, keys = found
            resp = pb.LeaseTimeToLiveResponse(ID=request.ID, TTL=ttl, grantedTTL=granted, keys=keys)
        fill(s, resp.header)
        return resp

    @unary
    async def LeaseLeases(self, request: pb.LeaseLeasesRequest, context: Ctx) -> pb.LeaseLeasesResponse:
        leases = self._s.lessor.leases()
        await self._s.auth.check_lease_leases(leases)  # auth: a user that may read every leased key
        resp = pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=le.id) for le in leases])
        fill(self._s, resp.header)
        return resp
