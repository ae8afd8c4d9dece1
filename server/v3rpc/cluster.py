"""The Cluster service (etcd's api/v3rpc/member.go)."""

from __future__ import annotations

from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.etcdserver.api import Admission, Membership
from server.urls import validate_urls
from server.v3rpc.header import Header
from server.v3rpc.util import unary

__all__ = ["ClusterService"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class ClusterService(pb_grpc.ClusterServicer):
    def __init__(self, cluster: Membership, auth: Admission, hdr: Header) -> None:
        self._c = cluster
        self._auth = auth
        self._hdr = hdr

    def _header(self) -> pb.ResponseHeader:
        return self._hdr.new()  # etcd's member responses carry no revision

    def _members(self) -> list[pb.Member]:
        return [m.to_pb() for m in self._c.members()]

    @unary
    async def MemberList(self, request: pb.MemberListRequest, context: Ctx) -> pb.MemberListResponse:
        await self._auth.require_auth_info()  # auth: any user; changes need the root role
        return pb.MemberListResponse(header=self._header(), members=self._members())

    @unary
    async def MemberAdd(self, request: pb.MemberAddRequest, context: Ctx) -> pb.MemberAddResponse:
        validate_urls(list(request.peerURLs))  # etcd checks the URLs before the permission
        await self._auth.check_admin()
        member = await self._c.member_add(list(request.peerURLs), request.isLearner)
        return pb.MemberAddResponse(header=self._header(), member=member.to_pb(), members=self._members())

    @unary
    async def MemberRemove(self, request: pb.MemberRemoveRequest, context: Ctx) -> pb.MemberRemoveResponse:
        await self._auth.check_admin()
        await self._c.member_remove(request.ID)
        return pb.MemberRemoveResponse(header=self._header(), members=self._members())

    @unary
    async def MemberUpdate(self, request: pb.MemberUpdateRequest, context: Ctx) -> pb.MemberUpdateResponse:
        await self._auth.check_admin()
        await self._c.member_update(request.ID, list(request.peerURLs))
        return pb.MemberUpdateResponse(header=self._header(), members=self._members())

    @unary
    async def MemberPromote(self, request: pb.MemberPromoteRequest, context: Ctx) -> pb.MemberPromoteResponse:
        await self._auth.check_admin()
        await self._c.member_promote(request.ID)
        return pb.MemberPromoteResponse(header=self._header(), members=self._members())
