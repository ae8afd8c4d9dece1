"""The auth store (etcd's server/auth/store.go): users, roles and key permissions, persisted
in the backend exactly like etcd's (bucket "auth": authEnabled = 0x01/0x00 and authRevision as
8 bytes big-endian; "authUsers": name -> authpb.User; "authRoles": name -> authpb.Role).

Every mutation runs while a replicated entry is applied, so every member reaches the same
state; the revision is bumped (and stored) by every change except enabling auth, and is what
clients' tokens are checked against (ErrAuthOldRevision). The store keeps users and roles in
memory as well, and the merged permissions of each user (range_perm_cache.py).

The root rules are etcd's: auth can only be enabled when user "root" exists and has role
"root"; while enabled, user root and role root cannot be deleted and root cannot lose role
root. Role root grants everything and is never stored with permissions: granting it needs no
role "root" to exist, and RoleGet reports it as READWRITE over every key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import bcrypt

from server.api.authpb import auth_pb2 as authpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.auth.errors import (
    AuthFailedError,
    AuthNotEnabledError,
    AuthOldRevisionError,
    InvalidAuthMgmtError,
    NoPasswordUserError,
    PermissionDeniedError,
    PermissionNotGivenError,
    PermissionNotGrantedError,
    RoleAlreadyExistError,
    RoleEmptyError,
    RoleNotFoundError,
    RoleNotGrantedError,
    RootRoleNotExistError,
    RootUserNotExistError,
    UserAlreadyExistError,
    UserEmptyError,
    UserNotFoundError,
)
from server.auth.range_perm_cache import (
    UnifiedRangePermissions,
    check_key_interval,
    check_key_point,
    is_valid_permission_range,
    merged_perms,
)
from server.auth.simple_token import TokenSimple
from server.auth.token_provider import TokenProvider
from server.backend.backend import Backend
from server.backend.schema import Bucket, decode_uint64, encode_uint64

__all__ = [
    "ROOT_ROLE",
    "ROOT_USER",
    "AuthInfo",
    "AuthStore",
    "check_password_hash",
    "hash_password",
]

log = logging.getLogger(__name__)

ROOT_USER = "root"
ROOT_ROLE = "root"
AUTH_ENABLED_KEY = b"authEnabled"
AUTH_REVISION_KEY = b"authRevision"
BCRYPT_MIN_COST, BCRYPT_MAX_COST, BCRYPT_DEFAULT_COST = 4, 31, 10

READ = authpb.Permission.READ
WRITE = authpb.Permission.WRITE


def root_perm() -> authpb.Permission:
    return authpb.Permission(permType=authpb.Permission.READWRITE, key=b"", range_end=b"\x00")


@dataclass(frozen=True, slots=True)
class AuthInfo:
    username: str
    revision: int


def hash_password(password: str, cost: int) -> bytes:
    """bcrypt as Go's x/crypto/bcrypt writes it ("$2a$" prefix; the algorithm is the same)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost))
    return b"$2a$" + hashed[4:] if hashed.startswith(b"$2b$") else hashed


def check_password_hash(hashed: bytes, password: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed)
    except ValueError:
        return False


def _has_root_role(u: authpb.User) -> bool:
    return ROOT_ROLE in u.roles


class AuthStore:
    def __init__(
        self,
        backend: Backend,
        tokens: TokenProvider | None = None,
        bcrypt_cost: int = BCRYPT_DEFAULT_COST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not BCRYPT_MIN_COST <= bcrypt_cost <= BCRYPT_MAX_COST:
            log.warning("use default bcrypt cost instead of the invalid given cost %d", bcrypt_cost)
            bcrypt_cost = BCRYPT_DEFAULT_COST
        self.bcrypt_cost = bcrypt_cost
        self.tokens: TokenProvider = tokens if tokens is not None else TokenSimple(clock=clock)
        self._be = backend
        self.enabled = False
        self.revision = 0
        self._users: dict[str, authpb.User] = {}
        self._roles: dict[str, authpb.Role] = {}
        self._perm_cache: dict[str, UnifiedRangePermissions] = {}
        self.recover()
        if self.revision == 0:
            self._commit_revision()

    # -- persistence ----------------------------------------------------------------------------

    def recover(self) -> None:
        """(Re)load everything from the backend: at start and after installing a snapshot."""
        tx = self._be.read_tx()
        enabled = tx.get(Bucket.AUTH, AUTH_ENABLED_KEY)
        rev = tx.get(Bucket.AUTH, AUTH_REVISION_KEY)
        self.revision = decode_uint64(rev) if rev and len(rev) == 8 else 0
        self._users = {}
        for _, raw in tx.iterate(Bucket.AUTH_USERS):
            u = authpb.User.FromString(raw)
            self._users[u.name.decode("utf-8", "surrogateescape")] = u
        self._roles = {}
        for _, raw in tx.iterate(Bucket.AUTH_ROLES):
            r = authpb.Role.FromString(raw)
            self._roles[r.name.decode("utf-8", "surrogateescape")] = r
        self._refresh_range_perm_cache()
        was = self.enabled
        self.enabled = enabled == b"\x01"
        if self.enabled and not was:
            self.tokens.enable()
        elif was and not self.enabled:
            self.tokens.disable()

    def _commit_revision(self) -> None:
        self.revision += 1
        self._be.batch_tx().put(Bucket.AUTH, AUTH_REVISION_KEY, encode_uint64(self.revision))

    def _put_user(self, u: authpb.User) -> None:
        self._users[u.name.decode("utf-8", "surrogateescape")] = u
        self._be.batch_tx().put(Bucket.AUTH_USERS, u.name, u.SerializeToString())

    def _delete_user(self, name: str) -> None:
        del self._users[name]
        self._be.batch_tx().delete(Bucket.AUTH_USERS, name.encode("utf-8", "surrogateescape"))

    def _put_role(self, r: authpb.Role) -> None:
        self._roles[r.name.decode("utf-8", "surrogateescape")] = r
        self._be.batch_tx().put(Bucket.AUTH_ROLES, r.name, r.SerializeToString())

    def _delete_role(self, name: str) -> None:
        del self._roles[name]
        self._be.batch_tx().delete(Bucket.AUTH_ROLES, name.encode("utf-8", "surrogateescape"))

    def _refresh_range_perm_cache(self) -> None:
        self._perm_cache = {name: merged_perms(u, self._roles.get) for name, u in self._users.items()}

    def get_user(self, name: str) -> authpb.User | None:
        return self._users.get(name)

    def get_role(self, name: str) -> authpb.Role | None:
        return self._roles.get(name)

    def _sorted_users(self) -> list[authpb.User]:
        return sorted(self._users.values(), key=lambda u: u.name)

    # -- enable / disable -----------------------------------------------------------------------

    def auth_enable(self) -> None:
        if self.enabled:
            log.info("authentication is already enabled; ignored auth enable request")
            return
        u = self._users.get(ROOT_USER)
        if u is None:
            raise RootUserNotExistError()
        if not _has_root_role(u):
            raise RootRoleNotExistError()
        self._be.batch_tx().put(Bucket.AUTH, AUTH_ENABLED_KEY, b"\x01")
        self.enabled = True
        self.tokens.enable()
        self._refresh_range_perm_cache()
        log.info("enabled authentication")

    def auth_disable(self) -> None:
        if not self.enabled:
            return
        self._be.batch_tx().put(Bucket.AUTH, AUTH_ENABLED_KEY, b"\x00")
        self._commit_revision()
        self.enabled = False
        self.tokens.disable()
        log.info("disabled authentication")

    # -- authentication -------------------------------------------------------------------------

    def check_password(self, username: str, password: str) -> int:
        """The auth revision at which the password was right (etcd's CheckPassword)."""
        if not self.enabled:
            raise AuthNotEnabledError()
        user = self._users.get(username)
        if user is None:
            raise AuthFailedError()
        if user.HasField("options") and user.options.no_password:
            raise NoPasswordUserError()
        revision = self.revision
        if not check_password_hash(user.password, password):
            log.info("invalid password", extra={"user-name": username})
            raise AuthFailedError()
        return revision

    def authenticate(self, username: str, prefix: str, index: int) -> pb.AuthenticateResponse:
        """Install a token for username (the apply of an Authenticate entry)."""
        if not self.enabled:
            raise AuthNotEnabledError()
        user = self._users.get(username)
        if user is None:
            raise AuthFailedError()
        if user.HasField("options") and user.options.no_password:
            raise AuthFailedError()
        return pb.AuthenticateResponse(token=self.tokens.assign(username, prefix, index, self.revision))

    def auth_info_from_token(self, token: str) -> AuthInfo | None:
        hit = self.tokens.info(token, self.revision)
        return None if hit is None else AuthInfo(*hit)

    def auth_info_from_cn(self, common_name: str) -> AuthInfo:
        return AuthInfo(common_name, self.revision)

    # -- users ----------------------------------------------------------------------------------

    def _select_password(self, password: str, hashed_password: str) -> bytes:
        if password and not hashed_password:
            # entries of etcd < 3.5 carry the plain password
            return hash_password(password, self.bcrypt_cost)
        try:
            return base64.b64decode(hashed_password.encode(), validate=True)
        except (binascii.Error, ValueError):
            raise NoPasswordUserError() from None

    def user_add(self, r: pb.AuthUserAddRequest) -> pb.AuthUserAddResponse:
        if not r.name:
            raise UserEmptyError()
        if r.name in self._users:
            raise UserAlreadyExistError()
        options = authpb.UserAddOptions()
        if r.HasField("options"):
            options.CopyFrom(r.options)
        password = b""
        if not options.no_password:
            password = self._select_password(r.password, r.hashedPassword)
        self._put_user(authpb.User(name=r.name.encode(), password=password, options=options))
        self._commit_revision()
        self._refresh_range_perm_cache()
        log.info("added a user", extra={"user-name": r.name})
        return pb.AuthUserAddResponse()

    def user_delete(self, r: pb.AuthUserDeleteRequest) -> pb.AuthUserDeleteResponse:
        if self.enabled and r.name == ROOT_USER:
            raise InvalidAuthMgmtError()
        if r.name not in self._users:
            raise UserNotFoundError()
        self._delete_user(r.name)
        self._commit_revision()
        self._refresh_range_perm_cache()
        self.tokens.invalidate_user(r.name)
        return pb.AuthUserDeleteResponse()

    def user_change_password(self, r: pb.AuthUserChangePasswordRequest) -> pb.AuthUserChangePasswordResponse:
        user = self._users.get(r.name)
        if user is None:
            raise UserNotFoundError()
        password = b""
        if not user.HasField("options") or not user.options.no_password:
            password = self._select_password(r.password, r.hashedPassword)
        updated = authpb.User(name=r.name.encode(), roles=list(user.roles), password=password)
        if user.HasField("options"):
            updated.options.CopyFrom(user.options)
        self._put_user(updated)
        self._commit_revision()
        self._refresh_range_perm_cache()
        self.tokens.invalidate_user(r.name)
        return pb.AuthUserChangePasswordResponse()

    def user_grant_role(self, r: pb.AuthUserGrantRoleRequest) -> pb.AuthUserGrantRoleResponse:
        user = self._users.get(r.user)
        if user is None:
            raise UserNotFoundError()
        if r.role != ROOT_ROLE and r.role not in self._roles:
            raise RoleNotFoundError()
        if r.role in user.roles:
            return pb.AuthUserGrantRoleResponse()
        updated = authpb.User()
        updated.CopyFrom(user)
        roles = sorted([*user.roles, r.role])
        del updated.roles[:]
        updated.roles.extend(roles)
        self._put_user(updated)
        self._commit_revision()
        self._refresh_range_perm_cache()
        return pb.AuthUserGrantRoleResponse()

    def user_get(self, r: pb.AuthUserGetRequest) -> pb.AuthUserGetResponse:
        user = self._users.get(r.name)
        if user is None:
            raise UserNotFoundError()
        return pb.AuthUserGetResponse(roles=list(user.roles))

    def user_list(self, r: pb.AuthUserListRequest) -> pb.AuthUserListResponse:
        return pb.AuthUserListResponse(users=[u.name.decode() for u in self._sorted_users()])

    def user_revoke_role(self, r: pb.AuthUserRevokeRoleRequest) -> pb.AuthUserRevokeRoleResponse:
        if self.enabled and r.name == ROOT_USER and r.role == ROOT_ROLE:
            raise InvalidAuthMgmtError()
        user = self._users.get(r.name)
        if user is None:
            raise UserNotFoundError()
        roles = [role for role in user.roles if role != r.role]
        if len(roles) == len(user.roles):
            raise RoleNotGrantedError()
        updated = authpb.User(name=user.name, password=user.password, roles=roles)
        if user.HasField("options"):
            updated.options.CopyFrom(user.options)
        self._put_user(updated)
        self._commit_revision()
        self._refresh_range_perm_cache()
        return pb.AuthUserRevokeRoleResponse()

    def has_role(self, user: str, role: str) -> bool:
        u = self._users.get(user)
        return u is not None and role in u.roles

    # -- roles ----------------------------------------------------------------------------------

    def role_add(self, r: pb.AuthRoleAddRequest) -> pb.AuthRoleAddResponse:
        if not r.name:
            raise RoleEmptyError()
        if r.name in self._roles:
            raise RoleAlreadyExistError()
        self._put_role(authpb.Role(name=r.name.encode()))
        self._commit_revision()
        log.info("created a role", extra={"role-name": r.name})
        return pb.AuthRoleAddResponse()

    def role_get(self, r: pb.AuthRoleGetRequest) -> pb.AuthRoleGetResponse:
        role = self._roles.get(r.role)
        if role is None:
            raise RoleNotFoundError()
        resp = pb.AuthRoleGetResponse()
        if r.role == ROOT_ROLE:
            resp.perm.append(root_perm())
        else:
            resp.perm.extend(role.keyPermission)
        return resp

    def role_list(self, r: pb.AuthRoleListRequest) -> pb.AuthRoleListResponse:
        roles = sorted(self._roles.values(), key=lambda ro: ro.name)
        return pb.AuthRoleListResponse(roles=[ro.name.decode() for ro in roles])

    def role_delete(self, r: pb.AuthRoleDeleteRequest) -> pb.AuthRoleDeleteResponse:
        if self.enabled and r.role == ROOT_ROLE:
            raise InvalidAuthMgmtError()
        if r.role not in self._roles:
            raise RoleNotFoundError()
        self._delete_role(r.role)
        for user in self._sorted_users():
            roles = [role for role in user.roles if role != r.role]
            if len(roles) == len(user.roles):
                continue
            updated = authpb.User(name=user.name, password=user.password, roles=roles)
            if user.HasField("options"):
                updated.options.CopyFrom(user.options)
            self._put_user(updated)
        self._commit_revision()
        self._refresh_range_perm_cache()
        return pb.AuthRoleDeleteResponse()

    def role_grant_permission(
        self, r: pb.AuthRoleGrantPermissionRequest
    ) -> pb.AuthRoleGrantPermissionResponse:
        if not r.HasField("perm"):
            raise PermissionNotGivenError()
        if not is_valid_permission_range(r.perm.key, r.perm.range_end):
            raise InvalidAuthMgmtError()
        role = self._roles.get(r.name)
        if role is None:
            raise RoleNotFoundError()
        updated = authpb.Role()
        updated.CopyFrom(role)
        perms = updated.keyPermission
        # the first permission whose key is >= the new one's (sort.Search)
        idx = next((i for i, p in enumerate(perms) if p.key >= r.perm.key), len(perms))
        if idx < len(perms) and perms[idx].key == r.perm.key and perms[idx].range_end == r.perm.range_end:
            perms[idx].permType = r.perm.permType
        else:
            merged = [
                *perms,
                authpb.Permission(key=r.perm.key, range_end=r.perm.range_end, permType=r.perm.permType),
            ]
            # Go's sort.Sort is not stable; permissions with equal keys keep insertion order here
            merged.sort(key=lambda p: p.key)
            del perms[:]
            perms.extend(merged)
        self._put_role(updated)
        self._commit_revision()
        self._refresh_range_perm_cache()
        return pb.AuthRoleGrantPermissionResponse()

    def role_revoke_permission(
        self, r: pb.AuthRoleRevokePermissionRequest
    ) -> pb.AuthRoleRevokePermissionResponse:
        role = self._roles.get(r.role)
        if role is None:
            raise RoleNotFoundError()
        kept = [p for p in role.keyPermission if p.key != r.key or p.range_end != r.range_end]
        if len(kept) == len(role.keyPermission):
            raise PermissionNotGrantedError()
        self._put_role(authpb.Role(name=role.name, keyPermission=kept))
        self._commit_revision()
        self._refresh_range_perm_cache()
        return pb.AuthRoleRevokePermissionResponse()

    # -- permission checks ----------------------------------------------------------------------

    def _is_op_permitted(self, ai: AuthInfo | None, key: bytes, range_end: bytes, perm_type: int) -> None:
        if not self.enabled:
            return
        if ai is None or ai.revision == 0:
            raise UserEmptyError()
        if ai.revision < self.revision:
            log.warning("request auth revision is less than current node auth revision")
            raise AuthOldRevisionError()
        user = self._users.get(ai.username)
        if user is None:
            raise PermissionDeniedError()
        if _has_root_role(user):
            return
        perms = self._perm_cache.get(ai.username)
        if perms is not None:
            if not range_end:
                if check_key_point(perms, key, perm_type):
                    return
            elif check_key_interval(perms, key, range_end, perm_type):
                return
        raise PermissionDeniedError()

    def is_put_permitted(self, ai: AuthInfo | None, key: bytes) -> None:
        self._is_op_permitted(ai, key, b"", WRITE)

    def is_range_permitted(self, ai: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._is_op_permitted(ai, key, range_end, READ)

    def is_delete_range_permitted(self, ai: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self._is_op_permitted(ai, key, range_end, WRITE)

    def is_admin_permitted(self, ai: AuthInfo | None) -> None:
        if not self.enabled:
            return
        if ai is None or not ai.username:
            raise UserEmptyError()
        u = self._users.get(ai.username)
        if u is None:
            raise UserNotFoundError()
        if not _has_root_role(u):
            raise PermissionDeniedError()
