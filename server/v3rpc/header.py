"""Response headers (etcd's api/v3rpc/header.go): cluster and member ID, raft term, and the
store revision unless the request already set the revision it was served at."""

from __future__ import annotations

from collections.abc import Callable

from server.api.etcdserverpb import rpc_pb2 as pb
from server.etcdserver.api import RaftStatus

__all__ = ["Header"]


class Header:
    def __init__(self, status: RaftStatus, rev: Callable[[], int]) -> None:
        self._status = status
        self._rev = rev

    def term(self) -> int:
        return self._status.term

    def fill(self, h: pb.ResponseHeader) -> None:
        s = self._status
        h.cluster_id = s.cluster_id
        h.member_id = s.member_id
        h.raft_term = s.term
        if h.revision == 0:
            h.revision = self._rev()

    def new(self, rev: int = 0) -> pb.ResponseHeader:
        """A header at rev; 0: no revision (etcd's member responses carry none)."""
        s = self._status
        return pb.ResponseHeader(
            cluster_id=s.cluster_id, member_id=s.member_id, revision=rev, raft_term=s.term
        )
