"""Every gRPC method petcd serves, built once per member: the gRPC server, the front-end link
and the JSON gateway all run the same handlers (and interceptors)."""

from __future__ import annotations

from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.etcdserver.server import EtcdServer
from server.v3rpc.auth import AuthService
from server.v3rpc.cluster import ClusterService
from server.v3rpc.kv import KVService
from server.v3rpc.lease import LeaseService
from server.v3rpc.maintenance import MaintenanceService
from server.v3rpc.watch import WatchService

__all__ = ["Services", "services"]

# service name -> method name -> handler
Services = dict[str, dict[str, "grpc.RpcMethodHandler[Any, Any]"]]


class _Recorder:
    """Stands in for grpc.Server to capture what the generated add_*_to_server functions add."""

    def __init__(self) -> None:
        self.services: Services = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services[service] = dict(handlers)


def services(server: EtcdServer) -> Services:
    rec: Any = _Recorder()
    pb_grpc.add_KVServicer_to_server(KVService(server), rec)
    pb_grpc.add_WatchServicer_to_server(WatchService(server), rec)
    pb_grpc.add_LeaseServicer_to_server(LeaseService(server), rec)
    pb_grpc.add_ClusterServicer_to_server(ClusterService(server), rec)
    pb_grpc.add_MaintenanceServicer_to_server(MaintenanceService(server), rec)
    pb_grpc.add_AuthServicer_to_server(AuthService(server), rec)
    return rec.services  # type: ignore[no-any-return]


def add_to(grpc_server: grpc.aio.Server, svcs: Services) -> None:
    for name, handlers in svcs.items():
        grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
