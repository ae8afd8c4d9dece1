"""The server's domain errors (etcd's server/etcdserver/errors). Each is mapped to a gRPC status
and etcd's exact message in one table at the edge: server/v3rpc/errors.py."""

from __future__ import annotations

from server.errors import EtcdError

__all__ = [
    "BadLeaderTransfereeError",
    "CorruptError",
    "KeyNotFoundError",
    "LeaderChangedError",
    "NoLeaderError",
    "NoSpaceError",
    "NotCapableError",
    "NotLeaderError",
    "RequestTooLargeError",
    "StoppedError",
    "TimeoutError_",
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
