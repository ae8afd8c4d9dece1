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
    "InvalidAuthMethodError",
    "InvalidAuthMgmtError",
    "InvalidAuthOptsError",
    "InvalidAuthTokenError",
    "KeyMismatchError",
    "MissingKeyError",
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
    "VerifyOnlyError",
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


# --auth-token problems: they stop the member at start (etcd: "failed to create token
# provider"), except VerifyOnlyError, which an Authenticate meets (UNKNOWN with this text).


class InvalidAuthOptsError(AuthError):
    def __init__(self, detail: str = "") -> None:
        super().__init__("auth: invalid auth options" + (f": {detail}" if detail else ""))


class InvalidAuthMethodError(AuthError):
    def __init__(self) -> None:
        super().__init__("auth: invalid auth signature method")


class MissingKeyError(AuthError):
    def __init__(self) -> None:
        super().__init__("auth: missing key data")


class KeyMismatchError(AuthError):
    def __init__(self) -> None:
        super().__init__("auth: public and private keys don't match")


class VerifyOnlyError(AuthError):
    def __init__(self) -> None:
        super().__init__("auth: token signing attempted with verify-only key")
