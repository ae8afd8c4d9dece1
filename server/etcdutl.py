"""`petcd snapshot restore`: a new data directory from a `snapshot save` file (etcdutl's
equivalent for petcd's own snapshot files).

A snapshot file is the backend database followed by the SHA-256 of it (the Maintenance.Snapshot
stream's last message). Restore checks the digest, copies the database into
<data-dir>/member/snap/db and gives it a new cluster identity from the flags, exactly as etcdutl
does: the key space, leases, alarms and auth survive; the membership is the one named by
--initial-cluster, so a restored member starts a new cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from collections.abc import Sequence

from server.backend.lmdb_backend import LmdbBackend
from server.backend.schema import Bucket, MetaKey
from server.config import Config, ConfigError
from server.etcdserver.membership import Member, RaftCluster, initial_cluster_id, initial_members

__all__ = ["RestoreError", "restore", "snapshot_restore"]

SHA256_SIZE = 32


class RestoreError(Exception):
    pass


def _verified_db(snapshot_path: str, skip_hash_check: bool) -> bytes:
    with open(snapshot_path, "rb") as f:
        data = f.read()
    has_hash = len(data) % 512 == SHA256_SIZE
    if has_hash:
        db, digest = data[:-SHA256_SIZE], data[-SHA256_SIZE:]
        if not skip_hash_check and hashlib.sha256(db).digest() != digest:
            raise RestoreError(f"snapshot {snapshot_path} is corrupt: its SHA-256 does not match")
        return db
    if not skip_hash_check:
        raise RestoreError(
            f"snapshot {snapshot_path} has no SHA-256 (not from `snapshot save`); use --skip-hash-check to restore anyway"
        )
    return data


def restore(snapshot_path: str, cfg: Config, *, skip_hash_check: bool = False) -> None:
    cfg.validate()
    if os.path.exists(cfg.data_dir) and os.listdir(cfg.data_dir):
        raise RestoreError(f"data-dir {cfg.data_dir!r} exists")
    db = _verified_db(snapshot_path, skip_hash_check)
    os.makedirs(os.path.dirname(cfg.backend_path), exist_ok=True)
    tmp = cfg.backend_path + ".restore.tmp"
    with open(tmp, "wb") as f:
        f.write(db)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, cfg.backend_path)
    backend = LmdbBackend(cfg.backend_path)
    try:
        tx = backend.batch_tx()
        for bucket in (Bucket.MEMBERS, Bucket.MEMBERS_REMOVED, Bucket.CLUSTER):
            for key, _ in list(backend.read_tx().iterate(bucket)):
                tx.delete(bucket, key)
        for key in (MetaKey.CONSISTENT_INDEX, MetaKey.TERM, MetaKey.CONF_STATE, b"memberID"):
            tx.delete(Bucket.META, key)
        members = initial_members(cfg)
        local_id = members[cfg.name][0]
        cluster = RaftCluster(backend, local_id=local_id, cluster_id=initial_cluster_id(cfg))
        cluster.save_identity()
        for _, (mid, urls) in sorted(members.items()):
            cluster.add_member(Member(id=mid, peer_urls=urls))
        backend.force_commit()
    finally:
        backend.close()


def snapshot_restore(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="petcd snapshot restore", description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--data-dir", default="")
    p.add_argument("--name", default="default")
    p.add_argument("--initial-cluster", default="")
    p.add_argument("--initial-cluster-token", default="etcd-cluster")
    p.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380")
    p.add_argument("--skip-hash-check", action="store_true")
    args = p.parse_args(list(argv))
    cfg = Config(
        name=args.name,
        data_dir=args.data_dir,
        initial_cluster=args.initial_cluster,
        initial_cluster_token=args.initial_cluster_token,
        initial_advertise_peer_urls=tuple(u for u in args.initial_advertise_peer_urls.split(",") if u),
    )
    try:
        restore(args.file, cfg, skip_hash_check=args.skip_hash_check)
    except (RestoreError, ConfigError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        if isinstance(e, RestoreError) and os.path.exists(cfg.backend_path) and "exists" not in str(e):
            shutil.rmtree(cfg.data_dir, ignore_errors=True)
        return 1
    print(
        f"restored snapshot {args.file} into {cfg.data_dir} (member {cfg.name}, cluster {initial_cluster_id(cfg):x})"
    )
    return 0
