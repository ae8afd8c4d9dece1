"""The member's side of auth (etcd's v3_server.go Authenticator, AuthInfoFromCtx,
requireAuthInfo, doSerialize, the lease checks and checkMembershipOperationPermission).

The credentials of the call being served come from server/auth/context.py. The Auth API's
requests are proposals: they change (or read) the auth store on every member when applied.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from server.api.etcdserverpb import raft_internal_pb2 as rpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.apply_auth import LeasedKeys, LeaseLookup, check_txn
from server.auth.context import credentials
from server.auth.errors import AuthError, AuthOldRevisionError, InvalidAuthTokenError, UserEmptyError
from server.auth.store import ROOT_USER, AuthInfo, AuthStore, hash_password
from server.etcdserver.wait import WaitTime

__all__ = ["ServerAuth"]

T = TypeVar("T")


class ServerAuth:
    """request: propose an InternalRaftRequest and return its response (raising its error);
    applied: the member's applied-index waiter; linearizable_read: wait until the member has
    applied everything committed before the call."""

    def __init__(
        self,
        store: AuthStore,
        *,
        leases: LeaseLookup,
        request: Callable[[rpb.InternalRaftRequest], Awaitable[Any]],
        linearizable_read: Callable[[], Awaitable[None]],
        applied: WaitTime,
        request_timeout: float,
        client_cert_auth: bool,
    ) -> None:
        self.store = store
        self._leases = leases
        self._propose = request
        self._linearizable_read = linearizable_read
        self._applied = applied
        self._timeout = request_timeout
        self._client_cert_auth = client_cert_auth

    # -- who is calling -------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    async def auth_info(self) -> AuthInfo | None:
        """etcd's AuthInfoFromCtx: None when auth is off or the call carries no credentials;
        InvalidAuthTokenError for a token this member does not know (once it has applied the
        entry the token names)."""
        store = self.store
        if not store.enabled:
            return None
        creds = credentials()
        if creds.token is not None:
            index = store.tokens.index_of(creds.token)
            if index is None or not await self._wait_applied(index):
                raise InvalidAuthTokenError()
            ai = store.auth_info_from_token(creds.token)
            if ai is None:
                raise InvalidAuthTokenError()
            return ai
        if creds.common_name is not None and self._client_cert_auth:
            return store.auth_info_from_cn(creds.common_name)
        return None

    async def _wait_applied(self, index: int) -> bool:
        """etcd's indexWaiter: until this member has applied index (False after the request
        timeout: the token names an entry this member never applied)."""
        try:
            await asyncio.wait_for(self._applied.wait(index), self._timeout)
            return True
        except TimeoutError:
            return False

    async def require_auth_info(self) -> None:
        if not self.store.enabled:
            return
        if await self.auth_info() is None:
            raise UserEmptyError()

    async def check_admin(self) -> None:
        """v3rpc's AuthAdmin.isPermitted, and checkMembershipOperationPermission."""
        ai = await self.auth_info()
        self.store.is_admin_permitted(ai)

    async def fill_header(self, r: rpb.InternalRaftRequest) -> None:
        """The proposer's user and auth revision travel in the entry (not for Authenticate)."""
        if r.HasField("authenticate"):
            return
        ai = await self.auth_info()
        if ai is not None:
            r.header.username = ai.username
            r.header.auth_revision = ai.revision

    def root_header(self) -> rpb.RequestHeader:
        """For the member's own proposals that etcd makes as root (revoking expired leases)."""
        return rpb.RequestHeader(username=ROOT_USER, auth_revision=self.store.revision)

    # -- serialized (not proposed) reads: etcd's doSerialize ------------------------------------

    async def serialized(self, chk: Callable[[AuthInfo], None], get: Callable[[], T]) -> T:
        """Check, read, then refuse the answer if the auth store changed meanwhile."""
        ai = await self.auth_info() or AuthInfo("", 0)
        chk(ai)
        resp = get()
        if ai.revision != 0 and ai.revision != self.store.revision:
            raise AuthOldRevisionError()
        return resp

    def txn_check(self, r: pb.TxnRequest) -> Callable[[AuthInfo], None]:
        return lambda ai: check_txn(self.store, ai, self._leases, r)

    async def watch_denied(self, creq: pb.WatchCreateRequest) -> AuthError | None:
        """Why the caller may not watch creq's range, or None."""
        try:
            ai = await self.auth_info() or AuthInfo("", 0)
            self.store.is_range_permitted(ai, creq.key or b"\x00", creq.range_end)
        except AuthError as e:
            return e
        return None

    # -- leases ---------------------------------------------------------------------------------

    async def _lease_user(self) -> AuthInfo | None:
        """None: no check needed (auth off, or an admin); else the user to check keys for."""
        if not self.store.enabled:
            return None
        ai = await self.auth_info()
        if ai is None:
            raise UserEmptyError()
        try:
            self.store.is_admin_permitted(ai)
            return None
        except AuthError:
            return ai

    async def check_lease_renew(self, lease: LeasedKeys | None) -> None:
        rev = self.store.revision
        ai = await self._lease_user()
        if ai is None:
            return
        for key in sorted(lease.keys) if lease is not None else ():
            self.store.is_put_permitted(ai, key)
        if rev != self.store.revision:
            raise AuthOldRevisionError()

    async def check_lease_time_to_live(self, lease: LeasedKeys | None) -> int:
        rev = self.store.revision
        ai = await self._lease_user()
        if ai is not None:
            for key in sorted(lease.keys) if lease is not None else ():
                self.store.is_range_permitted(ai, key, b"")
        return rev

    async def check_lease_leases(self, leases: Iterable[LeasedKeys]) -> None:
        rev = self.store.revision
        ai = await self._lease_user()
        if ai is None:
            return
        for lease in leases:
            for key in sorted(lease.keys):
                self.store.is_range_permitted(ai, key, b"")
        if rev != self.store.revision:
            raise AuthOldRevisionError()

    # -- the Auth API (etcd's Authenticator) ----------------------------------------------------

    async def _request(self, **field: Any) -> Any:
        return await self._propose(rpb.InternalRaftRequest(**field))

    async def auth_enable(self, r: pb.AuthEnableRequest) -> pb.AuthEnableResponse:
        resp: pb.AuthEnableResponse = await self._request(auth_enable=r)
        return resp

    async def auth_disable(self, r: pb.AuthDisableRequest) -> pb.AuthDisableResponse:
        resp: pb.AuthDisableResponse = await self._request(auth_disable=r)
        return resp

    async def auth_status(self, r: pb.AuthStatusRequest) -> pb.AuthStatusResponse:
        resp: pb.AuthStatusResponse = await self._request(auth_status=r)
        return resp

    async def authenticate(self, r: pb.AuthenticateRequest) -> pb.AuthenticateResponse:
        await self._linearizable_read()
        store = self.store
        while True:
            # bcrypt is slow: off the event loop (the store only reads the stored hash)
            user = store.get_user(r.name)
            if (
                store.enabled
                and user is not None
                and not (user.HasField("options") and user.options.no_password)
            ):
                checked = await asyncio.to_thread(store.check_password, r.name, r.password)
            else:
                checked = store.check_password(r.name, r.password)
            internal = rpb.InternalAuthenticateRequest(
                name=r.name, simple_token=store.tokens.gen_token_prefix()
            )
            resp: pb.AuthenticateResponse = await self._request(authenticate=internal)
            if checked == store.revision:
                return resp

    async def _hashed(self, password: str) -> str:
        hashed = await asyncio.to_thread(hash_password, password, self.store.bcrypt_cost)
        return base64.b64encode(hashed).decode()

    async def user_add(self, r: pb.AuthUserAddRequest) -> pb.AuthUserAddResponse:
        if not r.HasField("options") or not r.options.no_password:
            r.hashedPassword = await self._hashed(r.password)
            r.password = ""
        resp: pb.AuthUserAddResponse = await self._request(auth_user_add=r)
        return resp

    async def user_delete(self, r: pb.AuthUserDeleteRequest) -> pb.AuthUserDeleteResponse:
        resp: pb.AuthUserDeleteResponse = await self._request(auth_user_delete=r)
        return resp

    async def user_change_password(
        self, r: pb.AuthUserChangePasswordRequest
    ) -> pb.AuthUserChangePasswordResponse:
        if r.password:
            r.hashedPassword = await self._hashed(r.password)
            r.password = ""
        resp: pb.AuthUserChangePasswordResponse = await self._request(auth_user_change_password=r)
        return resp

    async def user_grant_role(self, r: pb.AuthUserGrantRoleRequest) -> pb.AuthUserGrantRoleResponse:
        resp: pb.AuthUserGrantRoleResponse = await self._request(auth_user_grant_role=r)
        return resp

    async def user_get(self, r: pb.AuthUserGetRequest) -> pb.AuthUserGetResponse:
        resp: pb.AuthUserGetResponse = await self._request(auth_user_get=r)
        return resp

    async def user_list(self, r: pb.AuthUserListRequest) -> pb.AuthUserListResponse:
        resp: pb.AuthUserListResponse = await self._request(auth_user_list=r)
        return resp

    async def user_revoke_role(self, r: pb.AuthUserRevokeRoleRequest) -> pb.AuthUserRevokeRoleResponse:
        resp: pb.AuthUserRevokeRoleResponse = await self._request(auth_user_revoke_role=r)
        return resp

    async def role_add(self, r: pb.AuthRoleAddRequest) -> pb.AuthRoleAddResponse:
        resp: pb.AuthRoleAddResponse = await self._request(auth_role_add=r)
        return resp

    async def role_grant_permission(
        self, r: pb.AuthRoleGrantPermissionRequest
    ) -> pb.AuthRoleGrantPermissionResponse:
        resp: pb.AuthRoleGrantPermissionResponse = await self._request(auth_role_grant_permission=r)
        return resp

    async def role_get(self, r: pb.AuthRoleGetRequest) -> pb.AuthRoleGetResponse:
        resp: pb.AuthRoleGetResponse = await self._request(auth_role_get=r)
        return resp

    async def role_list(self, r: pb.AuthRoleListRequest) -> pb.AuthRoleListResponse:
        resp: pb.AuthRoleListResponse = await self._request(auth_role_list=r)
        return resp

    async def role_revoke_permission(
        self, r: pb.AuthRoleRevokePermissionRequest
    ) -> pb.AuthRoleRevokePermissionResponse:
        resp: pb.AuthRoleRevokePermissionResponse = await self._request(auth_role_revoke_permission=r)
        return resp

    async def role_delete(self, r: pb.AuthRoleDeleteRequest) -> pb.AuthRoleDeleteResponse:
        resp: pb.AuthRoleDeleteResponse = await self._request(auth_role_delete=r)
        return resp
