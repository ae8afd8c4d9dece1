"""The auth store's refusals (etcd's server/auth/store.go errors).

server/v3rpc/errors.py maps each to etcd's gRPC status and exact message
(api/v3rpc/rpctypes/error.go); NoPasswordUserError has no mapping in etcd and reaches clients
as UNKNOWN with the store's own text, as it does there.
"""

from __future__ import annotations

from server.errors import EtcdError

__all__ = [
    "AuthFailedError",
    "AuthNotEnabledError",
    "AuthOldRevisionError",
    "InvalidAuthMgmtError",
    "InvalidAuthTokenError",
    "NoPasswordUserError",
    "PermissionDeniedError",
    "PermissionNotGivenError",
    "PermissionNotGrantedError",
    "RoleAlreadyExistError",
    "RoleEmptyError",
    "RoleNotFoundError",
    "RoleNotGrantedError",
    "RootRoleNotExistError",
    "RootUserNotExistError",
    "UserAlreadyExistError",
    "UserEmptyError",
    "UserNotFoundError",
]


class AuthError(EtcdError):
    """The root of the auth store's errors."""


class RootUserNotExistError(AuthError):
    pass


class RootRoleNotExistError(AuthError):
    pass


class UserAlreadyExistError(AuthError):
    pass


class UserEmptyError(AuthError):
    pass


class UserNotFoundError(AuthError):
    pass


class RoleAlreadyExistError(AuthError):
    pass


class RoleNotFoundError(AuthError):
    pass


class RoleEmptyError(AuthError):
    pass


class PermissionNotGivenError(AuthError):
    pass


class AuthFailedError(AuthError):
    pass


class NoPasswordUserError(AuthError):
    def __init__(self) -> None:
        super().__init__("auth: authentication failed, password was given for no password user")


class PermissionDeniedError(AuthError):
    pass


class RoleNotGrantedError(AuthError):
    pass


class PermissionNotGrantedError(AuthError):
    pass


class AuthNotEnabledError(AuthError):
    pass


class AuthOldRevisionError(AuthError):
    pass


class InvalidAuthTokenError(AuthError):
    pass


class InvalidAuthMgmtError(AuthError):
    pass
