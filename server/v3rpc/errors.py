"""Domain errors -> gRPC status, in one table (etcd's api/v3rpc/rpctypes and v3rpc/util.go).

Go clients map errors back by the exact message text, so every message here is etcd's byte for
byte. Validation errors raised by the gRPC layer itself are defined here too.
"""

from __future__ import annotations

import grpc

from server.auth import errors as ae
from server.backend.backend import BackendError
from server.errors import EtcdError
from server.etcdserver import errors as se
from server.etcdserver import membership as ms
from server.lease import lessor as le
from server.mvcc import kv as mvcc
from server.mvcc import watcher
from server.urls import BadURLsError

__all__ = ["GRPC_ERRORS", "WATCH_CANCEL_REASONS", "go_status_text", "to_grpc_status"]


class EmptyKeyError(EtcdError):
    pass


class ValueProvidedError(EtcdError):
    pass


class LeaseProvidedError(EtcdError):
    pass


class TooManyOpsError(EtcdError):
    pass


class DuplicateKeyError(EtcdError):
    pass


class InvalidSortOptionError(EtcdError):
    pass


class NotSupportedForLearnerError(EtcdError):
    pass


class RequestKeyNotFoundError(EtcdError):
    """An empty RequestOp in a txn."""


C = grpc.StatusCode

GRPC_ERRORS: dict[type[Exception], tuple[grpc.StatusCode, str]] = {
    # request validation
    EmptyKeyError: (C.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    RequestKeyNotFoundError: (C.INVALID_ARGUMENT, "etcdserver: key not found"),
    ValueProvidedError: (C.INVALID_ARGUMENT, "etcdserver: value is provided"),
    LeaseProvidedError: (C.INVALID_ARGUMENT, "etcdserver: lease is provided"),
    TooManyOpsError: (C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
    DuplicateKeyError: (C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
    InvalidSortOptionError: (C.INVALID_ARGUMENT, "etcdserver: invalid sort option"),
    NotSupportedForLearnerError: (C.FAILED_PRECONDITION, "etcdserver: rpc not supported for learner"),
    # mvcc
    mvcc.CompactedError: (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    mvcc.FutureRevError: (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"),
    # server
    se.RequestTooLargeError: (C.INVALID_ARGUMENT, "etcdserver: request is too large"),
    se.NoSpaceError: (C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    se.TooManyRequestsError: (C.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    se.KeyNotFoundError: (C.INVALID_ARGUMENT, "etcdserver: key not found"),
    se.NoLeaderError: (C.UNAVAILABLE, "etcdserver: no leader"),
    se.NotLeaderError: (C.FAILED_PRECONDITION, "etcdserver: not leader"),
    se.LeaderChangedError: (C.UNAVAILABLE, "etcdserver: leader changed"),
    se.StoppedError: (C.UNAVAILABLE, "etcdserver: server stopped"),
    se.TimeoutError_: (C.UNAVAILABLE, "etcdserver: request timed out"),
    se.UnhealthyError: (C.UNAVAILABLE, "etcdserver: unhealthy cluster"),
    se.CorruptError: (C.DATA_LOSS, "etcdserver: corrupt cluster"),
    se.NotCapableError: (C.FAILED_PRECONDITION, "etcdserver: not capable"),
    se.BadLeaderTransfereeError: (C.FAILED_PRECONDITION, "etcdserver: bad leader transferee"),
    se.NotEnoughStartedMembersError: (
        C.FAILED_PRECONDITION,
        "etcdserver: re-configuration failed due to not enough started members",
    ),
    se.LearnerNotReadyError: (
        C.FAILED_PRECONDITION,
        "etcdserver: can only promote a learner member which is in sync with leader",
    ),
    se.TimeoutLeaderTransferError: (
        C.UNAVAILABLE,
        "etcdserver: request timed out, leader transfer took too long",
    ),
    # etcd passes raft's error through untranslated
    se.ProposalDroppedError: (C.UNKNOWN, "raft proposal dropped"),
    # leases
    le.LeaseNotFoundError: (C.NOT_FOUND, "etcdserver: requested lease not found"),
    le.LeaseExistsError: (C.FAILED_PRECONDITION, "etcdserver: lease already exists"),
    le.LeaseTTLTooLargeError: (C.OUT_OF_RANGE, "etcdserver: too large lease TTL"),
    # membership
    ms.MemberNotFoundError: (C.NOT_FOUND, "etcdserver: member not found"),
    ms.MemberExistsError: (C.FAILED_PRECONDITION, "etcdserver: member ID already exist"),
    ms.PeerURLExistsError: (C.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"),
    ms.MemberNotLearnerError: (C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member"),
    ms.TooManyLearnersError: (C.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster"),
    BadURLsError: (C.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"),
    # auth
    ae.RootUserNotExistError: (C.FAILED_PRECONDITION, "etcdserver: root user does not exist"),
    ae.RootRoleNotExistError: (C.FAILED_PRECONDITION, "etcdserver: root user does not have root role"),
    ae.UserAlreadyExistError: (C.FAILED_PRECONDITION, "etcdserver: user name already exists"),
    ae.UserEmptyError: (C.INVALID_ARGUMENT, "etcdserver: user name is empty"),
    ae.UserNotFoundError: (C.FAILED_PRECONDITION, "etcdserver: user name not found"),
    ae.RoleAlreadyExistError: (C.FAILED_PRECONDITION, "etcdserver: role name already exists"),
    ae.RoleNotFoundError: (C.FAILED_PRECONDITION, "etcdserver: role name not found"),
    ae.RoleEmptyError: (C.INVALID_ARGUMENT, "etcdserver: role name is empty"),
    ae.AuthFailedError: (
        C.INVALID_ARGUMENT,
        "etcdserver: authentication failed, invalid user ID or password",
    ),
    ae.PermissionNotGivenError: (C.INVALID_ARGUMENT, "etcdserver: permission not given"),
    ae.PermissionDeniedError: (C.PERMISSION_DENIED, "etcdserver: permission denied"),
    ae.RoleNotGrantedError: (C.FAILED_PRECONDITION, "etcdserver: role is not granted to the user"),
    ae.PermissionNotGrantedError: (
        C.FAILED_PRECONDITION,
        "etcdserver: permission is not granted to the role",
    ),
    ae.AuthNotEnabledError: (C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"),
    ae.InvalidAuthTokenError: (C.UNAUTHENTICATED, "etcdserver: invalid auth token"),
    ae.InvalidAuthMgmtError: (C.INVALID_ARGUMENT, "etcdserver: invalid auth management"),
    ae.AuthOldRevisionError: (C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old"),
    # storage failures are reported, never swallowed
    BackendError: (C.UNAVAILABLE, "etcdserver: backend failure"),
}


# watch creation refusals: the watch is created canceled with mvcc's own words (no gRPC status)
WATCH_CANCEL_REASONS: dict[type[Exception], str] = {
    watcher.EmptyWatcherRangeError: "mvcc: watcher range is empty",
    watcher.DuplicateWatchIDError: "mvcc: duplicate watch ID provided on the WatchStream",
}


def to_grpc_status(e: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(e).__mro__:
        hit = GRPC_ERRORS.get(cls)
        if hit is not None:
            return hit
    return C.UNKNOWN, str(e)


def go_status_text(e: BaseException) -> str:
    """The error as grpc-go prints a status ("rpc error: code = PermissionDenied desc = ..."):
    what etcd puts in a canceled watch's cancel_reason."""
    code, message = to_grpc_status(e)
    name = "".join(part.capitalize() for part in code.name.split("_"))
    return f"rpc error: code = {name} desc = {message}"
