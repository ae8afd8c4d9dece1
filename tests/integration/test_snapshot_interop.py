"""Data moves both ways between petcd and a real etcd v3.6 through etcd snapshot files, with
nothing lost (DIFFERENTIAL: etcd -> etcd runs the same checks as the control).

A history is written on the source (several generations of a key, single and range deletes, a
txn, a compaction with writes after it, binary keys, a value near the request size limit, 300
keys over many pages, leases with keys, auth users and roles, auth enabled); `etcdctl snapshot
save` takes the snapshot; etcdutl's and petcd's `snapshot status` must agree on it and
`bbolt check` must pass; `etcdutl snapshot restore` (etcd target) or `petcd snapshot restore`
(petcd target) builds the target's data dir; the target then serves, for every revision from
the compaction to the snapshot's, the same keys with the same create/mod revisions, versions and
leases (values too at the ends), refuses revisions below the compaction, answers HashKV at the
snapshot revision with the source's hash, keeps the leases (and one expires and deletes its key),
and lets the users log in with their passwords within their roles.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from server.api.authpb import auth_pb2 as authpb
from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from server.backend.bbolt import BboltReader
from tests.harness.etcdctl import Etcdctl
from tests.harness.paths import debian_etcd, peer, petcd_command
from tests.harness.procs import Member

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ALL = (b"\x00", b"\x00")  # every key (etcdctl's --prefix "")
BIG = 1536 * 1024 - 256  # near the default --max-request-bytes (1.5 MiB)
SHORT_TTL = 10
SOURCE_FLAGS = ("--bcrypt-cost=4", "--unsafe-no-fsync")


class Client:
    """One member over gRPC; as root once auth is enabled."""

    def __init__(self, m: Member) -> None:
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.ch = grpc.insecure_channel(m.client_url.split("://", 1)[1], options=opts)
        self.kv = pb_grpc.KVStub(self.ch)
        self.lease = pb_grpc.LeaseStub(self.ch)
        self.auth = pb_grpc.AuthStub(self.ch)
        self.maint = pb_grpc.MaintenanceStub(self.ch)
        self.token: str | None = None

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("token", self.token),) if self.token else ()

    def login(self, name: str, password: str) -> str:
        return str(
            self.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=30).token
        )

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        r = self.kv.Put(pb.PutRequest(key=key, value=value, lease=lease), metadata=self.md, timeout=30)
        return int(r.header.revision)

    def delete(self, key: bytes, end: bytes = b"") -> None:
        self.kv.DeleteRange(pb.DeleteRangeRequest(key=key, range_end=end), metadata=self.md, timeout=30)

    def range(self, key: bytes, end: bytes = b"", rev: int = 0, keys_only: bool = False) -> pb.RangeResponse:
        req = pb.RangeRequest(key=key, range_end=end, revision=rev, keys_only=keys_only)
        return self.kv.Range(req, metadata=self.md, timeout=30)

    def hash_kv(self, rev: int) -> pb.HashKVResponse:
        return self.maint.HashKV(pb.HashKVRequest(revision=rev), metadata=self.md, timeout=60)

    def close(self) -> None:
        self.ch.close()


@dataclass(frozen=True)
class History:
    compacted: int  # the compaction revision
    long_lease: int
    short_lease: int


def write_history(c: Client) -> History:
    for i in range(3):  # three generations of "gen"
        c.put(b"gen", b"g%d-a" % i)
        c.put(b"gen", b"g%d-b" % i)
        c.delete(b"gen")
    c.put(b"gen", b"g3")
    for i in range(1, 6):
        c.put(b"d/%d" % i, b"x")
    c.delete(b"d/2", b"d/4")  # one revision, two deletes
    cmp = pb.Compare(key=b"gen", target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)
    c.kv.Txn(
        pb.TxnRequest(
            compare=[cmp],
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=b"t/a", value=b"1")),
                pb.RequestOp(request_put=pb.PutRequest(key=b"t/b", value=b"2")),
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"d/1")),
            ],
            failure=[pb.RequestOp(request_put=pb.PutRequest(key=b"t/c", value=b"3"))],
        ),
        timeout=30,
    )
    for key in (b"\x00\x01\xff", b"\xff\xfe", b"k\x00x", "ключ".encode()):
        c.put(key, key * 3)
    for start in range(0, 300, 100):  # 300 keys in three revisions: the key bucket spans many pages
        ops = [
            pb.RequestOp(request_put=pb.PutRequest(key=b"many/%04d" % i, value=b"m" * 200))
            for i in range(start, start + 100)
        ]
        c.kv.Txn(pb.TxnRequest(success=ops), timeout=30)
    c.put(b"big", bytes(range(256)) * (BIG // 256))
    compacted = c.put(b"gen", b"g3-b")
    c.kv.Compact(pb.CompactionRequest(revision=compacted, physical=True), timeout=60)
    c.put(b"gen", b"after-compaction")
    c.delete(b"t/a")
    long_lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=30).ID
    c.put(b"l/1", b"leased", lease=long_lease)
    c.put(b"l/2", b"leased", lease=long_lease)
    # auth: root, and alice who may read and write p/ only
    c.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"), timeout=30)
    c.auth.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=30)
    c.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=30)
    c.auth.UserAdd(pb.AuthUserAddRequest(name="alice", password="alicepw"), timeout=30)
    c.auth.RoleAdd(pb.AuthRoleAddRequest(name="writer"), timeout=30)
    perm = authpb.Permission(permType=authpb.Permission.READWRITE, key=b"p/", range_end=b"p0")
    c.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="writer", perm=perm), timeout=30)
    c.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="writer"), timeout=30)
    c.auth.AuthEnable(pb.AuthEnableRequest(), timeout=30)
    c.token = c.login("root", "rootpw")
    c.put(b"p/1", b"after auth")
    short_lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=SHORT_TTL), metadata=c.md, timeout=30).ID
    c.put(b"s/1", b"expires", lease=short_lease)
    return History(compacted, long_lease, short_lease)


def snapshot_status(tool: list[str], path: Path) -> dict[str, object]:
    out = subprocess.run(
        [*tool, "snapshot", "status", str(path), "-w", "json"], capture_output=True, timeout=120
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def restore(kind: str, snap: Path, target: Member, *flags: str) -> None:
    tool = [peer("etcdutl")] if kind == "etcd" else petcd_command()
    cmd = [
        *tool, "snapshot", "restore", str(snap), f"--data-dir={target.data_dir}", f"--name={target.name}",
        f"--initial-cluster={target.name}={target.peer_url}", f"--initial-advertise-peer-urls={target.peer_url}",
        *flags,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")


def kvs(resp: pb.RangeResponse) -> list[tuple[bytes, int, int, int, int, bytes]]:
    return [(kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value) for kv in resp.kvs]


def wait_gone(c: Client, key: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while c.range(key).kvs:
        assert time.monotonic() < deadline, (
            f"{key!r} is still there after {timeout}s: its lease did not expire"
        )
        time.sleep(0.5)


def compare(src: Client, dst: Client, h: History, rev: int) -> None:
    dst.token = dst.login("root", "rootpw")  # the users came along, passwords and all
    head = dst.range(b"gen")
    assert head.header.revision >= rev
    # every revision from the compaction to the snapshot's: same keys and metadata
    for r in range(h.compacted, rev + 1):
        assert kvs(dst.range(*ALL, rev=r, keys_only=True)) == kvs(src.range(*ALL, rev=r, keys_only=True)), r
    for r in (h.compacted, rev):
        assert kvs(dst.range(*ALL, rev=r)) == kvs(src.range(*ALL, rev=r)), r
    assert len(src.range(*ALL, rev=rev).kvs) > 300
    for side in (src, dst):
        with pytest.raises(grpc.RpcError) as err:
            side.range(b"gen", rev=h.compacted - 1)
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "compacted" in str(err.value.details())
    want, got = src.hash_kv(rev), dst.hash_kv(rev)
    assert (got.hash, got.compact_revision) == (want.hash, want.compact_revision)
    # leases: the long one with its keys, the short one expires and deletes its key
    ttl = dst.lease.LeaseTimeToLive(
        pb.LeaseTimeToLiveRequest(ID=h.long_lease, keys=True), metadata=dst.md, timeout=30
    )
    assert (ttl.grantedTTL, sorted(ttl.keys)) == (3600, [b"l/1", b"l/2"])
    assert 0 < ttl.TTL <= 3600
    wait_gone(dst, b"s/1", 6 * SHORT_TTL)
    leases = dst.lease.LeaseLeases(pb.LeaseLeasesRequest(), metadata=dst.md, timeout=30)
    assert [lease.ID for lease in leases.leases] == [h.long_lease]
    # auth: alice logs in with her password and is held to her role
    alice = dst.login("alice", "alicepw")
    dst.kv.Put(pb.PutRequest(key=b"p/2", value=b"alice"), metadata=(("token", alice),), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        dst.kv.Put(pb.PutRequest(key=b"q", value=b"alice"), metadata=(("token", alice),), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError):
        dst.login("alice", "wrong")
    for side in (src, dst):
        role = side.auth.RoleGet(pb.AuthRoleGetRequest(role="writer"), metadata=side.md, timeout=30)
        assert [(p.permType, p.key, p.range_end) for p in role.perm] == [(2, b"p/", b"p0")]
    # and the target takes writes after the restored revision
    assert dst.put(b"new", b"1") > rev


@pytest.fixture
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Member]:
    kind = request.param
    m = Member(kind, tmp_path / "source", extra=SOURCE_FLAGS)
    with m:
        yield m


@pytest.mark.parametrize(
    ("source", "target"),
    [("petcd", "etcd"), ("etcd", "petcd"), ("petcd", "petcd"), ("etcd", "etcd")],
    ids=["petcd-to-etcd", "etcd-to-petcd", "petcd-to-petcd", "etcd-to-etcd(control)"],
    indirect=["source"],
)
def test_snapshot_moves_everything(source: Member, target: str, tmp_path: Path) -> None:
    src = Client(source)
    try:
        h = write_history(src)
        snap = tmp_path / "snapshot.db"
        Etcdctl(source.client_url).ok("--user=root:rootpw", "snapshot", "save", str(snap))
        # the file is etcd's: db || sha256(db), a bbolt file bbolt finds sound
        raw = snap.read_bytes()
        assert len(raw) % 512 == 32 and hashlib.sha256(raw[:-32]).digest() == raw[-32:]
        assert (
            subprocess.run([peer("bbolt"), "check", str(snap)], capture_output=True).stdout.strip() == b"OK"
        )
        with BboltReader.open(snap) as db:
            assert db.size == len(raw) - 32
        etcdutl_status = snapshot_status([peer("etcdutl")], snap)
        assert snapshot_status(petcd_command(), snap) == etcdutl_status
        assert etcdutl_status["version"] == "3.6.0"
        old = debian_etcd()
        if old is not None:  # etcdctl 3.4 still had `snapshot status` (python-etcd3's test uses it)
            r = subprocess.run(
                [old[1], "snapshot", "status", str(snap)], capture_output=True, env={"ETCDCTL_API": "3"}
            )
            assert r.returncode == 0, r.stderr
        rev = int(str(etcdutl_status["revision"]))
        dst_member = Member(target, tmp_path / "target")
        restore(target, snap, dst_member)
        with dst_member:
            dst = Client(dst_member)
            try:
                compare(src, dst, h, rev)
            finally:
                dst.close()
    finally:
        src.close()


@pytest.mark.parametrize("source", ["etcd"], indirect=True)
def test_bump_revision_as_etcdutl(source: Member, tmp_path: Path) -> None:
    """`--bump-revision N --mark-compacted` (what Kubernetes' restore guide asks for): both
    targets continue at the same revision, everything before it compacted, same HashKV."""
    c = Client(source)
    try:
        for i in range(20):
            c.put(b"k%d" % (i % 4), b"v%d" % i)
        c.delete(b"k1")
    finally:
        c.close()
    snap = tmp_path / "snapshot.db"
    Etcdctl(source.client_url).ok("snapshot", "save", str(snap))
    answers = []
    for kind in ("etcd", "petcd"):
        m = Member(kind, tmp_path / f"bumped-{kind}")
        restore(kind, snap, m, "--bump-revision=1000", "--mark-compacted")
        with m:
            cl = Client(m)
            try:
                head = cl.range(*ALL)
                with pytest.raises(grpc.RpcError) as err:
                    cl.range(*ALL, rev=head.header.revision - 1)
                h = cl.hash_kv(0)
                answers.append(
                    (
                        head.header.revision,
                        kvs(head),
                        err.value.code(),
                        h.hash,
                        h.compact_revision,
                        cl.put(b"n", b"1"),
                    )
                )
            finally:
                cl.close()
    assert answers[1] == answers[0]
    assert answers[0][0] == 22 + 1000 and answers[0][2] == grpc.StatusCode.OUT_OF_RANGE
