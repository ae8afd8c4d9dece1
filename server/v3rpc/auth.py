"""The Auth service (etcd's api/v3rpc/auth.go) and the call credentials part of the
interceptor.

Auth responses carry the header filled when the entry was applied in etcd (cluster, member,
store revision, term); petcd fills the same fields when answering.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.auth.context import CallCredentials, from_metadata, set_credentials, with_common_name
from server.etcdserver.api import Authenticator
from server.v3rpc.header import Header
from server.v3rpc.util import unary

__all__ = ["AuthService", "CredentialsInterceptor"]

Ctx = grpc.aio.ServicerContext[Any, Any]


class CredentialsInterceptor:
    """Takes a call's credentials while auth is enabled: the token from the metadata (set in
    the task serving the call, before its handler runs), and, with --client-cert-auth, the
    verified client certificate's common name, which only the call's context tells (a wrapper
    reads it)."""

    def __init__(self, *, client_cert_auth: bool) -> None:
        self._client_cert_auth = client_cert_auth
        self._wrapped: dict[int, grpc.RpcMethodHandler[Any, Any]] = {}

    def intercept(self, handler: Any, details: grpc.HandlerCallDetails) -> Any:
        set_credentials(CallCredentials(from_metadata(details.invocation_metadata)))
        if not self._client_cert_auth:
            return handler
        wrapped = self._wrapped.get(id(handler))
        if wrapped is None:
            wrapped = self._wrapped[id(handler)] = _with_peer_cn(handler)
        return wrapped


def _with_peer_cn(handler: Any) -> Any:
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Ctx) -> Any:
            with_common_name(context)
            return await uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
    if handler.unary_stream is not None:
        us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
            with_common_name(context)
            async for resp in us(request, context):
                yield resp

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
    if handler.stream_stream is not None:
        ss: Any = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
            with_common_name(context)
            async for resp in ss(requests, context):
                yield resp

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)
    return handler


class AuthService(pb_grpc.AuthServicer):
    def __init__(self, auth: Authenticator, hdr: Header) -> None:
        self._auth = auth
        self._hdr = hdr

    def _done(self, resp: Any) -> Any:
        self._hdr.fill(resp.header)
        return resp

    @unary
    async def AuthEnable(self, request: pb.AuthEnableRequest, context: Ctx) -> pb.AuthEnableResponse:
        return self._done(await self._auth.auth_enable(request))  # type: ignore[no-any-return]

    @unary
    async def AuthDisable(self, request: pb.AuthDisableRequest, context: Ctx) -> pb.AuthDisableResponse:
        return self._done(await self._auth.auth_disable(request))  # type: ignore[no-any-return]

    @unary
    async def AuthStatus(self, request: pb.AuthStatusRequest, context: Ctx) -> pb.AuthStatusResponse:
        return self._done(await self._auth.auth_status(request))  # type: ignore[no-any-return]

    @unary
    async def Authenticate(self, request: pb.AuthenticateRequest, context: Ctx) -> pb.AuthenticateResponse:
        return self._done(await self._auth.authenticate(request))  # type: ignore[no-any-return]

    @unary
    async def UserAdd(self, request: pb.AuthUserAddRequest, context: Ctx) -> pb.AuthUserAddResponse:
        return self._done(await self._auth.user_add(request))  # type: ignore[no-any-return]

    @unary
    async def UserGet(self, request: pb.AuthUserGetRequest, context: Ctx) -> pb.AuthUserGetResponse:
        return self._done(await self._auth.user_get(request))  # type: ignore[no-any-return]

    @unary
    async def UserList(self, request: pb.AuthUserListRequest, context: Ctx) -> pb.AuthUserListResponse:
        return self._done(await self._auth.user_list(request))  # type: ignore[no-any-return]

    @unary
    async def UserDelete(self, request: pb.AuthUserDeleteRequest, context: Ctx) -> pb.AuthUserDeleteResponse:
        return self._done(await self._auth.user_delete(request))  # type: ignore[no-any-return]

    @unary
    async def UserChangePassword(
        self, request: pb.AuthUserChangePasswordRequest, context: Ctx
    ) -> pb.AuthUserChangePasswordResponse:
        return self._done(await self._auth.user_change_password(request))  # type: ignore[no-any-return]

    @unary
    async def UserGrantRole(
        self, request: pb.AuthUserGrantRoleRequest, context: Ctx
    ) -> pb.AuthUserGrantRoleResponse:
        return self._done(await self._auth.user_grant_role(request))  # type: ignore[no-any-return]

    @unary
    async def UserRevokeRole(
        self, request: pb.AuthUserRevokeRoleRequest, context: Ctx
    ) -> pb.AuthUserRevokeRoleResponse:
        return self._done(await self._auth.user_revoke_role(request))  # type: ignore[no-any-return]

    @unary
    async def RoleAdd(self, request: pb.AuthRoleAddRequest, context: Ctx) -> pb.AuthRoleAddResponse:
        return self._done(await self._auth.role_add(request))  # type: ignore[no-any-return]

    @unary
    async def RoleGet(self, request: pb.AuthRoleGetRequest, context: Ctx) -> pb.AuthRoleGetResponse:
        return self._done(await self._auth.role_get(request))  # type: ignore[no-any-return]

    @unary
    async def RoleList(self, request: pb.AuthRoleListRequest, context: Ctx) -> pb.AuthRoleListResponse:
        return self._done(await self._auth.role_list(request))  # type: ignore[no-any-return]

    @unary
    async def RoleDelete(self, request: pb.AuthRoleDeleteRequest, context: Ctx) -> pb.AuthRoleDeleteResponse:
        return self._done(await self._auth.role_delete(request))  # type: ignore[no-any-return]

    @unary
    async def RoleGrantPermission(
        self, request: pb.AuthRoleGrantPermissionRequest, context: Ctx
    ) -> pb.AuthRoleGrantPermissionResponse:
        return self._done(await self._auth.role_grant_permission(request))  # type: ignore[no-any-return]

    @unary
    async def RoleRevokePermission(
        self, request: pb.AuthRoleRevokePermissionRequest, context: Ctx
    ) -> pb.AuthRoleRevokePermissionResponse:
        return self._done(await self._auth.role_revoke_permission(request))  # type: ignore[no-any-return]
