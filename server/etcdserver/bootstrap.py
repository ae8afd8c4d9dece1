"""Starting a member from its data directory (etcd's server/etcdserver/bootstrap.go).

WAL present                 -> restart: the newest snapshot the WAL knows, then the WAL's
                               hard state and entries; entries at or below the backend's
                               consistent index are not applied again.
no WAL, --initial-cluster-state=new
                            -> a new cluster: every founding member is a ConfChange entry
                               at term 1 (with the member record as context); a backend
                               restored from a snapshot keeps its data.
no WAL, --initial-cluster-state=existing
                            -> join: ask the running members (over the peer transport) for
                               the cluster ID and member list, find ourselves by our peer
                               URLs, and start with an empty log; the leader sends the rest.
"""

from __future__ import annotations

import logging
import os
import ssl
import struct
from dataclasses import dataclass

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.peerpb.peer_pb2 import PeerRequest
from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey, decode_uint64
from server.config import Config
from server.errors import EtcdError
from server.etcdserver.membership import Member, RaftCluster, initial_cluster_id, initial_members
from server.etcdserver.transport import TransportError, peer_request
from server.raft import Peer, RawNode, Snapshot
from server.raft.storage import MemoryStorage
from server.snap.errors import NoSnapshotError
from server.snap.snapshotter import Snapshotter
from server.wal.record import WALSnapshot
from server.wal.util import exist as wal_exists
from server.wal.wal import WAL, valid_snapshot_entries

__all__ = ["BootstrapError", "Bootstrapped", "bootstrap"]

log = logging.getLogger(__name__)

_META = struct.Struct(">QQ")


class BootstrapError(EtcdError):
    """The data directory or the flags do not allow this member to start."""


@dataclass
class Bootstrapped:
    member_id: int
    cluster: RaftCluster
    storage: MemoryStorage
    wal: WAL
    snapshotter: Snapshotter
    # raft's Config.applied: the snapshot index the log restarts from
    applied: int
    snapshot: Snapshot
    # a brand-new cluster: bootstrap() the node with these founding members
    founders: list[Member]


def encode_metadata(member_id: int, cluster_id: int) -> bytes:
    return _META.pack(member_id, cluster_id)


def decode_metadata(raw: bytes) -> tuple[int, int]:
    member_id, cluster_id = _META.unpack(raw)
    return int(member_id), int(cluster_id)


def consistent_index(backend: LmdbBackend) -> int:
    raw = backend.read_tx().get(Bucket.META, MetaKey.CONSISTENT_INDEX)
    return decode_uint64(raw) if raw else 0


async def bootstrap(
    cfg: Config, backend: LmdbBackend, peer_ssl: ssl.SSLContext | None = None
) -> Bootstrapped:
    os.makedirs(cfg.snap_dir, exist_ok=True)
    snapshotter = Snapshotter(cfg.snap_dir)
    if wal_exists(cfg.wal_path):
        return _restart(cfg, backend, snapshotter)
    if cfg.initial_cluster_state == "existing":
        return await _join(cfg, backend, snapshotter, peer_ssl)
    return _new_cluster(cfg, backend, snapshotter)


def _restart(cfg: Config, backend: LmdbBackend, snapshotter: Snapshotter) -> Bootstrapped:
    try:
        snapshot = snapshotter.load_newest_available(valid_snapshot_entries(cfg.wal_path))
    except NoSnapshotError:
        snapshot = Snapshot()
    md = snapshot.metadata
    if not snapshot.is_empty() and consistent_index(backend) < md.index:
        # the backend is older than the snapshot: the snapshot's database replaces it
        db = snapshotter.db_file_path(md.index)
        log.warning("backend is older than the snapshot; restoring the snapshot database", extra={"db": db})
        backend.replace_with(db)
    marker = WALSnapshot(md.index, md.term, md.conf_state) if not snapshot.is_empty() else None
    w = WAL.open(cfg.wal_path, marker, unsafe_no_sync=cfg.unsafe_no_fsync)
    metadata, hard_state, entries = w.read_all()
    member_id, cluster_id = decode_metadata(metadata)
    storage = MemoryStorage()
    if not snapshot.is_empty():
        storage.apply_snapshot(snapshot)
    storage.set_hard_state(hard_state)
    storage.append(entries)
    cluster = RaftCluster.load(backend, local_id=member_id, max_learners=cfg.max_learners)
    if cluster is None:
        cluster = RaftCluster(
            backend, local_id=member_id, cluster_id=cluster_id, max_learners=cfg.max_learners
        )
        cluster.save_identity()
    elif cluster.cluster_id != cluster_id:
        raise BootstrapError(
            f"cluster ID {cluster.cluster_id:x} in the backend differs from {cluster_id:x} in the WAL"
        )
    log.info(
        "restarting member",
        extra={"member": f"{member_id:x}", "cluster": f"{cluster_id:x}", "commit": hard_state.commit},
    )
    return Bootstrapped(member_id, cluster, storage, w, snapshotter, md.index, snapshot, [])


def _new_cluster(cfg: Config, backend: LmdbBackend, snapshotter: Snapshotter) -> Bootstrapped:
    members = initial_members(cfg)
    member_id = members[cfg.name][0]
    cluster_id = initial_cluster_id(cfg)
    restored = RaftCluster.load(backend, local_id=member_id, max_learners=cfg.max_learners)
    if restored is not None and restored.cluster_id != cluster_id:
        raise BootstrapError(
            f"the data directory belongs to cluster {restored.cluster_id:x}, not {cluster_id:x}: "
            "remove it or restore a snapshot into a new one"
        )
    cluster = RaftCluster(backend, local_id=member_id, cluster_id=cluster_id, max_learners=cfg.max_learners)
    cluster.save_identity()
    founders = [
        Member(id=mid, peer_urls=urls) for _, (mid, urls) in sorted(members.items(), key=lambda kv: kv[1][0])
    ]
    w = WAL.create(cfg.wal_path, encode_metadata(member_id, cluster_id), unsafe_no_sync=cfg.unsafe_no_fsync)
    log.info("starting a new cluster", extra={"member": f"{member_id:x}", "cluster": f"{cluster_id:x}"})
    return Bootstrapped(member_id, cluster, MemoryStorage(), w, snapshotter, 0, Snapshot(), founders)


async def _join(
    cfg: Config, backend: LmdbBackend, snapshotter: Snapshotter, peer_ssl: ssl.SSLContext | None
) -> Bootstrapped:
    members = initial_members(cfg)
    mine = set(cfg.initial_advertise_peer_urls)
    answer: pb.MemberListResponse | None = None
    errors: list[str] = []
    for name, (_, urls) in members.items():
        if name == cfg.name:
            continue
        for url in urls:
            try:
                resp = await peer_request(
                    url, PeerRequest(member_list=pb.MemberListRequest()), ssl_ctx=peer_ssl
                )
                if resp.HasField("error"):
                    raise TransportError(f"asked for the members: {resp.error.message}")
                answer = resp.member_list
                break
            except (OSError, TransportError, TimeoutError) as e:
                errors.append(f"{url}: {e}")
        if answer is not None:
            break
    if answer is None:
        raise BootstrapError(
            f"cannot fetch cluster info from peer urls: {'; '.join(errors) or 'no other members'}"
        )
    cluster_id = answer.header.cluster_id
    remote = [Member.from_pb(m) for m in answer.members]
    me = next((m for m in remote if set(m.peer_urls) == mine), None)
    if me is None:
        raise BootstrapError(
            f"member with peer URLs {sorted(mine)} is not in the cluster: add it with `etcdctl member add` first"
        )
    cluster = RaftCluster(backend, local_id=me.id, cluster_id=cluster_id, max_learners=cfg.max_learners)
    cluster.save_identity()
    for m in remote:
        cluster.add_member(m)
    w = WAL.create(cfg.wal_path, encode_metadata(me.id, cluster_id), unsafe_no_sync=cfg.unsafe_no_fsync)
    log.info("joining an existing cluster", extra={"member": f"{me.id:x}", "cluster": f"{cluster_id:x}"})
    return Bootstrapped(me.id, cluster, MemoryStorage(), w, snapshotter, 0, Snapshot(), [])


def founding_peers(founders: list[Member]) -> list[Peer]:
    return [Peer(id=m.id, context=m.to_json()) for m in founders]


def new_raw_node(b: Bootstrapped, cfg: Config) -> RawNode:
    from server.etcdserver.raft_node import RaftNode

    node = RawNode(
        RaftNode.config(
            b.member_id,
            b.storage,
            election_ticks=cfg.election_ticks,
            pre_vote=cfg.pre_vote,
            applied=b.applied,
        )
    )
    if b.founders:
        node.bootstrap(founding_peers(b.founders))
    return node
