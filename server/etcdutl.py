"""`petcd snapshot restore` and `petcd snapshot status`: etcdutl's snapshot commands for petcd.

restore builds a new data directory from a snapshot file: etcd's (what `etcdctl snapshot save`
stores, from etcd or from petcd; a bbolt database) or petcd's older snapshots (LMDB). It checks
the trailing SHA-256 (unless --skip-hash-check), copies etcd's buckets into petcd's backend and
gives the member a new cluster identity from the flags, as etcdutl does: the key space with its
revisions, leases, alarms and auth survive; the membership is --initial-cluster's. The directory
is built under a temporary name beside the target and renamed at the end, so a restore that
fails leaves nothing behind.

status prints what etcdutl's does (hash, revision, total keys, total size, version) in its
formats: simple, table, json, fields.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c
from google.protobuf.message import DecodeError

from server.api.authpb.auth_pb2 import Role, User
from server.api.etcdserverpb.rpc_pb2 import AlarmMember
from server.api.leasepb.lease_pb2 import Lease
from server.api.mvccpb.kv_pb2 import KeyValue
from server.backend.backend import BackendError
from server.backend.bbolt import BboltError, BboltReader
from server.backend.lmdb_backend import LmdbBackend, fsync_path
from server.backend.schema import Bucket, MetaKey
from server.backend.snapshot import SnapshotError, SnapshotFile, import_buckets, read_buckets
from server.config import Config, ConfigError
from server.etcdserver.membership import Member, RaftCluster, initial_cluster_id, initial_members
from server.mvcc.revision import (
    MARKED_REV_BYTES_LEN,
    REV_BYTES_LEN,
    TOMBSTONE_MARK,
    Revision,
    bytes_to_rev,
    is_tombstone,
    rev_to_bytes,
)

__all__ = ["RestoreError", "Status", "main", "restore", "status"]


class RestoreError(Exception):
    pass


# the errors a bad file, bad flags or a full disk end in: reported as one line
_FAILURES = (RestoreError, SnapshotError, BboltError, BackendError, ConfigError, OSError)


# -- restore ------------------------------------------------------------------------------------


class _Checker:
    """Refuses records petcd could not load at start (etcd's encodings), and remembers the
    newest revision of the key bucket."""

    _RECORDS: dict[Bucket, type[Lease | User | Role]] = {
        Bucket.LEASE: Lease,
        Bucket.AUTH_USERS: User,
        Bucket.AUTH_ROLES: Role,
    }

    def __init__(self, path: str) -> None:
        self._path = path
        self._last_revision = b""

    def __call__(self, bucket: Bucket, key: bytes, value: bytes) -> None:
        try:
            if bucket is Bucket.KEY:
                self._revision(key, value)
            elif bucket is Bucket.ALARM:
                AlarmMember.FromString(key)
            elif (record := self._RECORDS.get(bucket)) is not None:
                record.FromString(value)
        except DecodeError as e:
            raise SnapshotError(
                f"{self._path}: bucket {bucket.bucket_name.decode()}: key {key!r} holds a damaged record ({e})"
            ) from e

    def _revision(self, key: bytes, value: bytes) -> None:
        n = len(key)
        if not (
            (n == REV_BYTES_LEN or (n == MARKED_REV_BYTES_LEN and key[REV_BYTES_LEN:] == TOMBSTONE_MARK))
            and key[8:9] == b"_"
        ):
            raise SnapshotError(f"{self._path}: bucket key: {key!r} is not a revision")
        if value:  # empty: a revision marker etcdutl's --bump-revision leaves
            KeyValue.FromString(value)
        self._last_revision = key  # keys come in order: the last is the newest

    @property
    def latest(self) -> Revision:
        return bytes_to_rev(self._last_revision) if self._last_revision else Revision(0, 0)


def restore(
    snapshot_path: str,
    cfg: Config,
    *,
    skip_hash_check: bool = False,
    bump_revision: int = 0,
    mark_compacted: bool = False,
) -> list[bytes]:
    """Restore into cfg.data_dir; returns the names of buckets petcd does not know (not copied)."""
    if (bump_revision == 0) == mark_compacted:
        raise RestoreError("--mark-compacted required if --revision-bump > 0")
    cfg.validate()
    data_dir = os.path.normpath(cfg.data_dir)
    if os.path.exists(data_dir) and (not os.path.isdir(data_dir) or os.listdir(data_dir)):
        raise RestoreError(f"data-dir {data_dir!r} not empty or could not be read")
    snap = SnapshotFile.open(snapshot_path, skip_hash_check=skip_hash_check)
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(data_dir)}.restore-", dir=parent)
    try:
        tmp_cfg = cfg.with_(data_dir=tmp)
        backend = LmdbBackend(tmp_cfg.backend_path)
        try:
            checker = _Checker(snapshot_path)
            skipped = import_buckets(snap, backend, checker)
            _new_membership(backend, tmp_cfg)
            if bump_revision:
                _bump(backend, checker.latest, bump_revision)
            backend.force_commit()
        finally:
            backend.close()
        if os.path.isdir(data_dir):
            os.rmdir(data_dir)  # empty (checked above)
        os.rename(tmp, data_dir)
        fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return skipped


def _new_membership(backend: LmdbBackend, cfg: Config) -> None:
    """Forget the old cluster (members, IDs, raft position); record the one of cfg."""
    tx = backend.batch_tx()
    for bucket in (Bucket.MEMBERS, Bucket.MEMBERS_REMOVED, Bucket.CLUSTER):
        for key, _ in list(backend.read_tx().iterate(bucket)):
            tx.delete(bucket, key)
    for key in (MetaKey.CONSISTENT_INDEX, MetaKey.TERM, MetaKey.CONF_STATE, b"memberID"):
        tx.delete(Bucket.META, key)
    members = initial_members(cfg)
    cluster = RaftCluster(backend, local_id=members[cfg.name][0], cluster_id=initial_cluster_id(cfg))
    cluster.save_identity()
    for _, (mid, urls) in sorted(members.items()):
        cluster.add_member(Member(id=mid, peer_urls=urls))


def _bump(backend: LmdbBackend, latest: Revision, amount: int) -> None:
    """etcdutl's --bump-revision --mark-compacted: an empty record at the newest revision plus
    amount, scheduled as the compaction revision, so clients never see the revision go back."""
    rev = rev_to_bytes(Revision(latest.main + amount, 0))
    tx = backend.batch_tx()
    tx.put(Bucket.KEY, rev, b"")
    tx.put(Bucket.META, MetaKey.SCHEDULED_COMPACT_REV, rev)


# -- status -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    hash: int
    revision: int
    total_key: int
    total_size: int
    version: str


def status(snapshot_path: str) -> Status:
    """etcdutl's snapshot status: CRC-32C over every bucket's name and pairs in order, the newest
    revision, the number of live keys, the database's size and meta/storageVersion."""
    snap = SnapshotFile.open(snapshot_path, skip_hash_check=True)
    h = revision = 0
    version = ""
    live: set[bytes] = set()
    with contextlib.closing(read_buckets(snap)) as buckets:
        for name, pairs in buckets:
            h = crc32c.crc32c(name, h)
            for key, value in pairs:
                h = crc32c.crc32c(value, crc32c.crc32c(key, h))
                if name == Bucket.KEY.bucket_name:
                    if len(key) < REV_BYTES_LEN:
                        raise SnapshotError(f"{snapshot_path}: bucket key: {key!r} is not a revision")
                    revision = bytes_to_rev(key).main
                    try:
                        kv_key = KeyValue.FromString(value).key
                    except DecodeError as e:
                        raise SnapshotError(
                            f"{snapshot_path}: bucket key: {key!r} holds a damaged record"
                        ) from e
                    (live.discard if is_tombstone(key) else live.add)(kv_key)
                elif name == Bucket.META.bucket_name and key == MetaKey.STORAGE_VERSION.value:
                    version = value.decode(errors="replace")
    size = snap.db_size
    if snap.format == "bbolt":
        with BboltReader.open(snapshot_path) as db:
            size = db.size
    return Status(h, revision, len(live), size, version)


def humanize_bytes(n: int) -> str:
    """go-humanize's Bytes (SI units), as etcdutl prints sizes."""
    if n < 10:
        return f"{n} B"
    e = math.floor(math.log(n) / math.log(1000))
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    suffix = ["B", "kB", "MB", "GB", "TB", "PB", "EB"][e]
    return f"{val:.1f} {suffix}" if val < 10 else f"{val:.0f} {suffix}"


def _table(header: list[str], row: list[str]) -> str:
    """etcdutl's table (tablewriter: centred upper-case header, right-aligned cells)."""
    widths = [max(len(h), len(c)) for h, c in zip(header, row, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centre(s: str, w: int) -> str:
        left = (w - len(s)) // 2
        return " " * left + s + " " * (w - len(s) - left)

    head = "|" + "|".join(f" {centre(h.upper(), w)} " for h, w in zip(header, widths, strict=True)) + "|"
    body = "|" + "|".join(f" {c.rjust(w)} " for c, w in zip(row, widths, strict=True)) + "|"
    return "\n".join([rule, head, rule, body, rule])


def format_status(st: Status, write_out: str) -> str:
    row = [f"{st.hash:x}", str(st.revision), str(st.total_key), humanize_bytes(st.total_size), st.version]
    if write_out == "simple":
        return ", ".join(row)
    if write_out == "table":
        return _table(["hash", "revision", "total keys", "total size", "version"], row)
    if write_out == "json":
        doc = {
            "hash": st.hash,
            "revision": st.revision,
            "totalKey": st.total_key,
            "totalSize": st.total_size,
            "version": st.version,
        }
        return json.dumps(doc, separators=(",", ":"))
    if write_out == "fields":
        return "\n".join(
            f'"{k}" : {v}'
            for k, v in (
                ("Hash", st.hash),
                ("Revision", st.revision),
                ("Keys", st.total_key),
                ("Size", st.total_size),
                ("Version", st.version),
            )
        )
    raise RestoreError(f"unsupported output format {write_out!r} for snapshot status")


# -- command line -------------------------------------------------------------------------------


def _restore_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="petcd snapshot restore", description="Restores a snapshot to a new data dir"
    )
    p.add_argument("file")
    p.add_argument("--data-dir", default="")
    p.add_argument("--name", default="default")
    p.add_argument("--initial-cluster", default="")
    p.add_argument("--initial-cluster-token", default="etcd-cluster")
    p.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380")
    p.add_argument("--skip-hash-check", action="store_true")
    p.add_argument("--bump-revision", type=int, default=0)
    p.add_argument("--mark-compacted", action="store_true")
    args = p.parse_args(list(argv))
    # a restore stopped by SIGTERM removes its temporary directory as a failed one does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cfg = Config(
            name=args.name,
            data_dir=args.data_dir,
            initial_cluster=args.initial_cluster,
            initial_cluster_token=args.initial_cluster_token,
            initial_advertise_peer_urls=tuple(u for u in args.initial_advertise_peer_urls.split(",") if u),
        )
        skipped = restore(
            args.file,
            cfg,
            skip_hash_check=args.skip_hash_check,
            bump_revision=args.bump_revision,
            mark_compacted=args.mark_compacted,
        )
    except _FAILURES as e:
        print(f"Error: {_one_line(e)}", file=sys.stderr)
        return 1
    for name in skipped:
        print(
            f"note: bucket {name.decode(errors='replace')!r} is not one petcd keeps; not restored",
            file=sys.stderr,
        )
    print(
        f"restored snapshot {args.file} into {cfg.data_dir} (member {cfg.name}, cluster {initial_cluster_id(cfg):x})"
    )
    return 0


def _status_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="petcd snapshot status", description="Gets backend snapshot status of a given file"
    )
    p.add_argument("file")
    p.add_argument("-w", "--write-out", default="simple", choices=["simple", "table", "json", "fields"])
    args = p.parse_args(list(argv))
    try:
        print(format_status(status(args.file), args.write_out))
    except _FAILURES as e:
        print(f"Error: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return " ".join(str(e).split())


def main(argv: Sequence[str]) -> int:
    """`petcd snapshot <restore|status> ...`"""
    commands = {"restore": _restore_main, "status": _status_main}
    if not argv or argv[0] not in commands:
        print("usage: petcd snapshot {restore,status} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
