"""The server's domain errors (etcd's server/etcdserver/errors). Each is mapped to a gRPC status
and etcd's exact message in one table at the edge: server/v3rpc/errors.py."""

from __future__ import annotations

from server.errors import EtcdError

__all__ = [
    "ApplyFailedError",
    "BadLeaderTransfereeError",
    "CorruptError",
    "KeyNotFoundError",
    "LeaderChangedError",
    "LearnerNotReadyError",
    "NoLeaderError",
    "NoSpaceError",
    "NotCapableError",
    "NotEnoughStartedMembersError",
    "NotLeaderError",
    "ProposalDroppedError",
    "RequestTooLargeError",
    "StoppedError",
    "TimeoutError_",
    "TimeoutLeaderTransferError",
    "TooManyRequestsError",
    "UnhealthyError",
]


class RequestTooLargeError(EtcdError):
    """etcdserver: request is too large"""


class NoSpaceError(EtcdError):
    """etcdserver: no space (the NOSPACE alarm is active or the quota would be exceeded)"""


class KeyNotFoundError(EtcdError):
    """etcdserver: key not found (ignore_value / ignore_lease on an absent key)"""


class TooManyRequestsError(EtcdError):
    """etcdserver: too many requests (the apply loop is too far behind the log)"""


class StoppedError(EtcdError):
    """etcdserver: server stopped"""


class TimeoutError_(EtcdError):
    """etcdserver: request timed out"""


class NoLeaderError(EtcdError):
    """etcdserver: no leader"""


class NotLeaderError(EtcdError):
    """etcdserver: not leader"""


class LeaderChangedError(EtcdError):
    """etcdserver: leader changed"""


class UnhealthyError(EtcdError):
    """etcdserver: unhealthy cluster"""


class CorruptError(EtcdError):
    """etcdserver: corrupt cluster"""


class BadLeaderTransfereeError(EtcdError):
    """etcdserver: bad leader transferee"""


class NotCapableError(EtcdError):
    """etcdserver: not capable (the operation needs a capability this member lacks)"""


class NotEnoughStartedMembersError(EtcdError):
    """etcdserver: re-configuration failed due to not enough started members"""


class LearnerNotReadyError(EtcdError):
    """etcdserver: can only promote a learner member which is in sync with leader"""


class ProposalDroppedError(EtcdError):
    """raft proposal dropped (no leader, or a leadership transfer in progress)"""


class TimeoutLeaderTransferError(EtcdError):
    """etcdserver: request timed out, leader transfer took too long"""


class ApplyFailedError(EtcdError):
    """An entry could not be applied (a bug); reported to its client as UNKNOWN."""
