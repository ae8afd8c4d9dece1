"""Cluster membership (etcd's server/etcdserver/api/membership).

IDs are derived exactly as etcd derives them, so the same flags give the same IDs:
    member ID  = first 8 bytes (big-endian) of sha1(sorted peer URLs joined + cluster token)
    cluster ID = first 8 bytes (big-endian) of sha1(the sorted member IDs, 8 bytes BE each)
A member added at runtime also hashes the time of the addition.

Members are stored in the backend's members bucket as etcd does: key = hex ID, value = JSON
{"id", "peerURLs", "name", "clientURLs", "isLearner"}; removed IDs in members_removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.api.etcdserverpb import rpc_pb2 as pb
from server.backend.backend import Backend
from server.backend.schema import Bucket
from server.errors import EtcdError
from server.urls import parse_initial_cluster

if TYPE_CHECKING:
    from server.config import Config

__all__ = [
    "Member",
    "MemberExistsError",
    "MemberNotFoundError",
    "MemberNotLearnerError",
    "PeerURLExistsError",
    "RaftCluster",
    "TooManyLearnersError",
    "compute_cluster_id",
    "compute_member_id",
    "initial_cluster_id",
    "initial_members",
]

_U64 = struct.Struct(">Q")
CLUSTER_ID_KEY = b"clusterID"
CLUSTER_VERSION_KEY = b"clusterVersion"


class MemberExistsError(EtcdError):
    """membership: ID exists"""


class MemberNotFoundError(EtcdError):
    """membership: ID not found (or removed)"""


class PeerURLExistsError(EtcdError):
    """membership: peerURL exists"""


class MemberNotLearnerError(EtcdError):
    """membership: can only promote a learner member"""


class TooManyLearnersError(EtcdError):
    """membership: too many learner members in cluster"""


def compute_member_id(peer_urls: list[str], cluster_token: str, now_unix: int | None = None) -> int:
    b = "".join(sorted(peer_urls)).encode() + cluster_token.encode()
    if now_unix is not None:
        b += str(now_unix).encode()
    return int(_U64.unpack(hashlib.sha1(b).digest()[:8])[0])


def compute_cluster_id(member_ids: list[int]) -> int:
    b = b"".join(_U64.pack(i) for i in sorted(member_ids))
    return int(_U64.unpack(hashlib.sha1(b).digest()[:8])[0])


def initial_members(cfg: Config) -> dict[str, tuple[int, tuple[str, ...]]]:
    """name -> (member ID, peer URLs) of the initial cluster."""
    return {
        name: (compute_member_id(urls, cfg.initial_cluster_token), tuple(urls))
        for name, urls in parse_initial_cluster(cfg.initial_cluster).items()
    }


def initial_cluster_id(cfg: Config) -> int:
    return compute_cluster_id([mid for mid, _ in initial_members(cfg).values()])


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    def to_json(self) -> bytes:
        doc = {
            "id": self.id,
            "peerURLs": list(self.peer_urls),
            "name": self.name,
            "clientURLs": list(self.client_urls),
        }
        if self.is_learner:
            doc["isLearner"] = True
        return json.dumps(doc, separators=(",", ":")).encode()

    def to_pb(self) -> pb.Member:
        return pb.Member(
            ID=self.id,
            name=self.name,
            peerURLs=list(self.peer_urls),
            clientURLs=list(self.client_urls),
            isLearner=self.is_learner,
        )

    @classmethod
    def from_pb(cls, m: pb.Member) -> Member:
        return cls(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner)

    @classmethod
    def from_json(cls, raw: bytes) -> Member:
        doc = json.loads(raw)
        return cls(
            id=int(doc["id"]),
            name=doc.get("name", ""),
            peer_urls=tuple(doc.get("peerURLs") or ()),
            client_urls=tuple(doc.get("clientURLs") or ()),
            is_learner=bool(doc.get("isLearner", False)),
        )


def _member_key(member_id: int) -> bytes:
    return f"{member_id:x}".encode()


class RaftCluster:
    """The member set as applied from the log; persisted in the backend on every change."""

    def __init__(self, backend: Backend, *, local_id: int, cluster_id: int, max_learners: int = 1) -> None:
        self._backend = backend
        self.local_id = local_id
        self.cluster_id = cluster_id
        self.max_learners = max_learners
        self.members: dict[int, Member] = {}
        self.removed: set[int] = set()
        self.version = ""

    @classmethod
    def load(cls, backend: Backend, *, local_id: int, max_learners: int = 1) -> RaftCluster | None:
        """The cluster stored in the backend, or None for a fresh data directory."""
        raw_cid = backend.read_tx().get(Bucket.CLUSTER, CLUSTER_ID_KEY)
        if raw_cid is None:
            return None
        cid = _U64.unpack(raw_cid)[0]
        cluster = cls(backend, local_id=local_id, cluster_id=cid, max_learners=max_learners)
        cluster.reload()
        return cluster

    def reload(self) -> None:
        """Read the member set back from the backend (after it was replaced by a snapshot)."""
        tx = self._backend.read_tx()
        self.members = {}
        self.removed = set()
        for _, raw in tx.iterate(Bucket.MEMBERS):
            m = Member.from_json(raw)
            self.members[m.id] = m
        for key, _ in tx.iterate(Bucket.MEMBERS_REMOVED):
            self.removed.add(int(key, 16))
        version = tx.get(Bucket.CLUSTER, CLUSTER_VERSION_KEY)
        self.version = version.decode() if version else ""

    def save_identity(self) -> None:
        self._backend.batch_tx().put(Bucket.CLUSTER, CLUSTER_ID_KEY, _U64.pack(self.cluster_id))

    def set_version(self, version: str) -> None:
        self.version = version
        self._backend.batch_tx().put(Bucket.CLUSTER, CLUSTER_VERSION_KEY, version.encode())

    def sorted_members(self) -> list[Member]:
        return sorted(self.members.values(), key=lambda m: m.id)

    def member(self, member_id: int) -> Member | None:
        return self.members.get(member_id)

    def voter_ids(self) -> list[int]:
        return sorted(m.id for m in self.members.values() if not m.is_learner)

    # -- validation (before proposing) and application (from the log) ------------------------------

    def is_removed(self, member_id: int) -> bool:
        return member_id in self.removed

    def validate_remove(self, member_id: int) -> None:
        if member_id in self.removed:
            raise MemberNotFoundError()
        self._existing(member_id)

    def validate_add(self, member: Member) -> None:
        if member.id in self.removed or member.id in self.members:
            raise MemberExistsError()
        urls = {u for m in self.members.values() for u in m.peer_urls}
        if urls & set(member.peer_urls):
            raise PeerURLExistsError()
        if member.is_learner and sum(m.is_learner for m in self.members.values()) >= self.max_learners:
            raise TooManyLearnersError()

    def add_member(self, member: Member) -> None:
        """Add (or re-add, when a log entry is applied again) a member; a member already known
        keeps the attributes it published."""
        known = self.members.get(member.id)
        if known is not None and not member.name:
            member = dataclasses.replace(member, name=known.name, client_urls=known.client_urls)
        self.members[member.id] = member
        self._save(member)

    def remove_member(self, member_id: int) -> None:
        self.members.pop(member_id, None)
        self.removed.add(member_id)
        tx = self._backend.batch_tx()
        tx.delete(Bucket.MEMBERS, _member_key(member_id))
        tx.put(Bucket.MEMBERS_REMOVED, _member_key(member_id), b"removed")

    def update_raft_attributes(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        m = self._existing(member_id)
        self._replace(dataclasses.replace(m, peer_urls=peer_urls))

    def update_attributes(self, member_id: int, name: str, client_urls: tuple[str, ...]) -> None:
        m = self.members.get(member_id)
        if m is None:
            return
        self._replace(dataclasses.replace(m, name=name, client_urls=client_urls))

    def promote(self, member_id: int) -> None:
        m = self._existing(member_id)
        self._replace(dataclasses.replace(m, is_learner=False))

    def validate_promote(self, member_id: int) -> None:
        m = self._existing(member_id)
        if not m.is_learner:
            raise MemberNotLearnerError()

    def _existing(self, member_id: int) -> Member:
        m = self.members.get(member_id)
        if m is None:
            raise MemberNotFoundError()
        return m

    def _replace(self, m: Member) -> None:
        self.members[m.id] = m
        self._save(m)

    def _save(self, m: Member) -> None:
        self._backend.batch_tx().put(Bucket.MEMBERS, _member_key(m.id), m.to_json())
