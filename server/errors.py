"""The root of petcd's domain errors.

Every error raised on purpose below the gRPC edge (MVCC, leases, membership, auth, the server)
derives from EtcdError; server/v3rpc/errors.py maps each class to etcd's gRPC code and exact
message. Anything else reaching the edge is a bug and is reported as UNKNOWN.
"""

from __future__ import annotations

__all__ = ["EtcdError"]


class EtcdError(Exception):
    """A refusal or failure etcd reports to clients."""
