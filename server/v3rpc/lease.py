"""The Lease service (etcd's api/v3rpc/lease.go)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.errors import EtcdError
from server.etcdserver.api import Admission, Lessor
from server.lease.lessor import LeaseNotFoundError
from server.v3rpc.header import Header
from server.v3rpc.util import StreamAbort, abort_with, ends_on_bad_request, unary

__all__ = ["LeaseService"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class LeaseService(pb_grpc.LeaseServicer):
    def __init__(self, lessor: Lessor, auth: Admission, hdr: Header) -> None:
        self._le = lessor
        self._auth = auth
        self._hdr = hdr

    @unary
    async def LeaseGrant(self, request: pb.LeaseGrantRequest, context: Ctx) -> pb.LeaseGrantResponse:
        await self._auth.require_auth_info()  # auth: any user
        resp = await self._le.lease_grant(request)
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def LeaseRevoke(self, request: pb.LeaseRevokeRequest, context: Ctx) -> pb.LeaseRevokeResponse:
        await self._auth.require_auth_info()  # auth: any user; the apply checks the lease's keys
        resp = await self._le.lease_revoke(request)
        self._hdr.fill(resp.header)
        return resp

    @ends_on_bad_request
    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[pb.LeaseKeepAliveRequest], context: Ctx
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        try:
            async for req in request_iterator:
                try:
                    ttl = await self._le.lease_renew(req.ID)
                except LeaseNotFoundError:
                    ttl = 0
                except EtcdError as e:
                    await abort_with(context, e)
                resp = pb.LeaseKeepAliveResponse(ID=req.ID, TTL=ttl)
                self._hdr.fill(resp.header)
                yield resp
        except StreamAbort as e:
            await context.abort(e.code, e.message)

    @unary
    async def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: Ctx
    ) -> pb.LeaseTimeToLiveResponse:
        resp = await self._le.lease_time_to_live(request)
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def LeaseLeases(self, request: pb.LeaseLeasesRequest, context: Ctx) -> pb.LeaseLeasesResponse:
        resp = await self._le.lease_leases()
        self._hdr.fill(resp.header)
        return resp
