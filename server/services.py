"""The client services of one member, built once: the gRPC servers, the front-end link and the
JSON gateway all run these handlers. etcd's v3rpc.Server registers KV, Watch, Lease, Cluster,
Maintenance and Auth; its embed/serve.go adds v3lock and v3election beside them, built over an
in-process client of the member. So here: the v3rpc services, then Lock and Election above them.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.api.v3electionpb import v3election_pb2_grpc as election_grpc
from server.api.v3lockpb import v3lock_pb2_grpc as lock_grpc
from server.etcdserver.server import EtcdServer
from server.v3client import LocalClient
from server.v3election import ElectionService
from server.v3lock import LockService
from server.v3rpc.auth import AuthService
from server.v3rpc.cluster import ClusterService
from server.v3rpc.header import Header
from server.v3rpc.kv import KVService
from server.v3rpc.lease import LeaseService
from server.v3rpc.maintenance import MaintenanceService
from server.v3rpc.registry import Services, checked
from server.v3rpc.watch import WatchService

__all__ = ["Servicers", "servicers", "services"]


@dataclass(frozen=True)
class Servicers:
    kv: KVService
    watch: WatchService
    lease: LeaseService
    cluster: ClusterService
    maintenance: MaintenanceService
    auth: AuthService
    lock: LockService
    election: ElectionService


def servicers(s: EtcdServer) -> Servicers:
    """The services over one member, each given the parts of it that it uses (Lock and
    Election over an in-process client, as etcd's v3lock and v3election)."""
    cfg = s.cfg
    hdr = Header(s, s.kv.rev)
    client = LocalClient(s, s, s.kv, s.auth, hdr, kv_wake=s.kv_wake, max_txn_ops=cfg.max_txn_ops)
    return Servicers(
        kv=KVService(s, s.auth, hdr, max_txn_ops=cfg.max_txn_ops),
        watch=WatchService(
            s.kv,
            s.auth,
            hdr,
            kv_wake=s.kv_wake,
            progress_notify_interval_s=cfg.watch_progress_notify_interval_s,
            max_bytes=cfg.max_recv_bytes,
        ),
        lease=LeaseService(s, s.auth, hdr),
        cluster=ClusterService(s, s.auth, hdr),
        maintenance=MaintenanceService(s, hdr),
        auth=AuthService(s.auth, hdr),
        lock=LockService(client),
        election=ElectionService(client),
    )


def services(server: EtcdServer) -> Services:
    sv = servicers(server)
    return checked(
        [
            (pb_grpc.add_KVServicer_to_server, sv.kv),
            (pb_grpc.add_WatchServicer_to_server, sv.watch),
            (pb_grpc.add_LeaseServicer_to_server, sv.lease),
            (pb_grpc.add_ClusterServicer_to_server, sv.cluster),
            (pb_grpc.add_MaintenanceServicer_to_server, sv.maintenance),
            (pb_grpc.add_AuthServicer_to_server, sv.auth),
            (lock_grpc.add_LockServicer_to_server, sv.lock),
            (election_grpc.add_ElectionServicer_to_server, sv.election),
        ],
        server.cfg.max_recv_bytes,
    )
