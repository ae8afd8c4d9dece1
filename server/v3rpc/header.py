"""Response headers (etcd's api/v3rpc/header.go): cluster and member ID, raft term, and the
store revision unless the request already set the revision it was served at."""

from __future__ import annotations

from server.api.etcdserverpb import rpc_pb2 as pb
from server.etcdserver.server import EtcdServer

__all__ = ["fill"]


def fill(s: EtcdServer, h: pb.ResponseHeader) -> None:
    h.cluster_id = s.cluster.cluster_id
    h.member_id = s.member_id
    h.raft_term = s.term
    if h.revision == 0:
        h.revision = s.kv.rev()
