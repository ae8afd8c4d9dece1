"""Every gRPC service a member serves, by full name (etcd registers v3lock and v3election on its
gRPC server beside the v3 API); importing this module registers their descriptors."""

from __future__ import annotations

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from server.api.etcdserverpb import rpc_pb2 as _rpc_pb2  # noqa: F401 - registers the descriptors
from server.api.v3electionpb import v3election_pb2 as _v3election_pb2  # noqa: F401
from server.api.v3lockpb import v3lock_pb2 as _v3lock_pb2  # noqa: F401

__all__ = ["SERVICE_NAMES", "service"]

SERVICE_NAMES = (
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "v3lockpb.Lock",
    "v3electionpb.Election",
)


def service(name: str) -> ServiceDescriptor:
    return descriptor_pool.Default().FindServiceByName(name)
