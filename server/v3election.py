"""The Election service (etcd's etcdserver/api/v3election): leader election per name, leadership
held by a lease, on top of the member's own KV, lease and watch API (server/concurrency.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.api.v3electionpb import v3election_pb2 as epb
from server.api.v3electionpb import v3election_pb2_grpc as epb_grpc
from server.concurrency import ClientError, Election, session
from server.v3client import Client, clientv3_errors

__all__ = ["ElectionService", "LeaderKeyMissingError"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class LeaderKeyMissingError(ClientError):
    message = '"leader" field must be provided'


class ElectionService(epb_grpc.ElectionServicer):
    def __init__(self, client: Client) -> None:
        self._c = client

    @clientv3_errors
    async def Campaign(self, request: epb.CampaignRequest, context: Ctx) -> epb.CampaignResponse:
        lease = await session(self._c, request.lease)
        e = Election.new(self._c, lease, request.name)
        await e.campaign(request.value)
        leader = epb.LeaderKey(name=request.name, key=e.key, rev=e.rev, lease=lease)
        return epb.CampaignResponse(header=e.header, leader=leader)

    @clientv3_errors
    async def Proclaim(self, request: epb.ProclaimRequest, context: Ctx) -> epb.ProclaimResponse:
        e = await self._resume(request.leader if request.HasField("leader") else None)
        await e.proclaim(request.value)
        return epb.ProclaimResponse(header=e.header)

    @clientv3_errors
    async def Leader(self, request: epb.LeaderRequest, context: Ctx) -> epb.LeaderResponse:
        resp = await Election.new(self._c, 0, request.name).leader()
        return epb.LeaderResponse(header=resp.header, kv=resp.kvs[0])

    async def Observe(self, request: epb.LeaderRequest, context: Ctx) -> AsyncIterator[epb.LeaderResponse]:
        async for header, kv in Election.new(self._c, 0, request.name).observe():
            yield epb.LeaderResponse(header=header, kv=kv)

    @clientv3_errors
    async def Resign(self, request: epb.ResignRequest, context: Ctx) -> epb.ResignResponse:
        e = await self._resume(request.leader if request.HasField("leader") else None)
        await e.resign()
        return epb.ResignResponse(header=e.header)

    async def _resume(self, leader: epb.LeaderKey | None) -> Election:
        if leader is None:
            raise LeaderKeyMissingError()
        lease = await session(self._c, leader.lease)
        return Election.resume(self._c, lease, leader.name, leader.key, leader.rev)
