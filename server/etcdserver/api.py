"""What the gRPC services see of a member (etcd's v3_server.go interfaces: RaftKV, Lessor,
Authenticator, and the getters of raft's state). EtcdServer implements them all; each service
holds only the ones it calls, so it can be built over a fake in a unit test.
"""

from __future__ import annotations

from typing import Protocol

from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.errors import AuthError
from server.auth.store import AuthInfo
from server.etcdserver.membership import Member

__all__ = ["Admission", "Authenticator", "Lessor", "Membership", "RaftKV", "RaftStatus"]


class RaftStatus(Protocol):
    """Identity and raft state, as response headers and the interceptor need them."""

    @property
    def cluster_id(self) -> int: ...

    @property
    def member_id(self) -> int: ...

    @property
    def term(self) -> int: ...

    @property
    def leader_id(self) -> int: ...

    @property
    def is_learner(self) -> bool: ...


class RaftKV(Protocol):
    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse: ...

    async def put(self, r: pb.PutRequest) -> pb.PutResponse: ...

    async def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse: ...

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse: ...

    async def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse: ...


class Lessor(Protocol):
    """The Lease API; permission checks included (etcd's EtcdServer lease methods)."""

    async def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse: ...

    async def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse: ...

    async def lease_renew(self, lease_id: int) -> int:
        """The lease's new TTL; LeaseNotFoundError if there is no such lease."""

    async def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse: ...

    async def lease_leases(self) -> pb.LeaseLeasesResponse: ...


class Membership(Protocol):
    """The Cluster API (etcd's EtcdServer member methods)."""

    def members(self) -> list[Member]:
        """The cluster's members, by ID."""

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> Member: ...

    async def member_remove(self, member_id: int) -> None: ...

    async def member_update(self, member_id: int, peer_urls: list[str]) -> None: ...

    async def member_promote(self, member_id: int) -> None: ...


class Admission(Protocol):
    """Who may call: the checks the services make before calling the server."""

    @property
    def enabled(self) -> bool:
        """Auth is enabled."""

    async def auth_info(self) -> AuthInfo | None: ...

    async def require_auth_info(self) -> None: ...

    async def check_admin(self) -> None: ...

    async def watch_denied(self, creq: pb.WatchCreateRequest) -> AuthError | None: ...


class Authenticator(Admission, Protocol):
    """The Auth API (etcd's Authenticator)."""

    async def auth_enable(self, r: pb.AuthEnableRequest) -> pb.AuthEnableResponse: ...

    async def auth_disable(self, r: pb.AuthDisableRequest) -> pb.AuthDisableResponse: ...

    async def auth_status(self, r: pb.AuthStatusRequest) -> pb.AuthStatusResponse: ...

    async def authenticate(self, r: pb.AuthenticateRequest) -> pb.AuthenticateResponse: ...

    async def user_add(self, r: pb.AuthUserAddRequest) -> pb.AuthUserAddResponse: ...

    async def user_delete(self, r: pb.AuthUserDeleteRequest) -> pb.AuthUserDeleteResponse: ...

    async def user_change_password(
        self, r: pb.AuthUserChangePasswordRequest
    ) -> pb.AuthUserChangePasswordResponse: ...

    async def user_grant_role(self, r: pb.AuthUserGrantRoleRequest) -> pb.AuthUserGrantRoleResponse: ...

    async def user_get(self, r: pb.AuthUserGetRequest) -> pb.AuthUserGetResponse: ...

    async def user_list(self, r: pb.AuthUserListRequest) -> pb.AuthUserListResponse: ...

    async def user_revoke_role(self, r: pb.AuthUserRevokeRoleRequest) -> pb.AuthUserRevokeRoleResponse: ...

    async def role_add(self, r: pb.AuthRoleAddRequest) -> pb.AuthRoleAddResponse: ...

    async def role_grant_permission(
        self, r: pb.AuthRoleGrantPermissionRequest
    ) -> pb.AuthRoleGrantPermissionResponse: ...

    async def role_get(self, r: pb.AuthRoleGetRequest) -> pb.AuthRoleGetResponse: ...

    async def role_list(self, r: pb.AuthRoleListRequest) -> pb.AuthRoleListResponse: ...

    async def role_revoke_permission(
        self, r: pb.AuthRoleRevokePermissionRequest
    ) -> pb.AuthRoleRevokePermissionResponse: ...

    async def role_delete(self, r: pb.AuthRoleDeleteRequest) -> pb.AuthRoleDeleteResponse: ...
