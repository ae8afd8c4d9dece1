"""The ceiling of Python + grpcio on this machine: a grpc.aio server answering the KV and
Maintenance RPCs that the benchmarks use with empty (but well-formed) responses, with petcd's
own server options. Whatever petcd spends beyond this is MVCC, durability and bookkeeping.

    python -m bench.null_server --listen 127.0.0.1:23790 [--listen unix-abstract:name ...]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.config import Config
from server.embed.etcd import grpc_server_options

Ctx = grpc.aio.ServicerContext[Any, Any]
HEADER = pb.ResponseHeader(cluster_id=1, member_id=1, revision=1, raft_term=1)


class NullKV(pb_grpc.KVServicer):
    async def Range(self, request: pb.RangeRequest, context: Ctx) -> pb.RangeResponse:
        return pb.RangeResponse(header=HEADER)

    async def Put(self, request: pb.PutRequest, context: Ctx) -> pb.PutResponse:
        return pb.PutResponse(header=HEADER)

    async def DeleteRange(self, request: pb.DeleteRangeRequest, context: Ctx) -> pb.DeleteRangeResponse:
        return pb.DeleteRangeResponse(header=HEADER)

    async def Txn(self, request: pb.TxnRequest, context: Ctx) -> pb.TxnResponse:
        return pb.TxnResponse(header=HEADER, succeeded=True)

    async def Compact(self, request: pb.CompactionRequest, context: Ctx) -> pb.CompactionResponse:
        return pb.CompactionResponse(header=HEADER)


class NullMaintenance(pb_grpc.MaintenanceServicer):
    async def Status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusResponse:
        return pb.StatusResponse(header=HEADER, version="3.6.0", leader=1)


async def serve(listen: list[str]) -> None:
    server = grpc.aio.server(options=grpc_server_options(Config()))
    pb_grpc.add_KVServicer_to_server(NullKV(), server)
    pb_grpc.add_MaintenanceServicer_to_server(NullMaintenance(), server)  # type: ignore[abstract]
    for address in listen:
        server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", action="append", help="grpc address (repeatable); default 127.0.0.1:23790")
    asyncio.run(serve(p.parse_args().listen or ["127.0.0.1:23790"]))


if __name__ == "__main__":
    main()
