"""Auth with the real etcdctl: users, roles, permissions, auth enable/disable and which RPC each
kind of user may call, as a DIFFERENTIAL session against petcd and a real etcd v3.6 side by
side (same commands, compared exit codes, normalized stdout and final error lines), plus
petcd-only checks of tokens (TTL, invalid tokens, tokens after a permission change), the JSON
gateway and client-certificate auth.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.framework.differential import Differential, normalizer
from tests.harness.etcdctl import Etcdctl
from tests.harness.normalize import Normalizer
from tests.harness.procs import Member, free_port
from tests.integration.test_differential_etcdctl import Cmd, c, txn_input

# bcrypt's cost only changes how long hashing takes
pytestmark = [pytest.mark.integration, pytest.mark.flags("--bcrypt-cost=4")]

ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"
BOB = "--user=bob:bobpw"

# the setup every auth session starts with (before auth is enabled)
SETUP: list[Cmd] = [
    c("auth", "enable"),  # no root user yet
    c("user", "add", "root:rootpw"),
    c("auth", "enable"),  # etcdctl adds role root and grants it
    c("auth", "status"),  # no user
    c(ROOT, "auth", "status"),
    c(ROOT, "auth", "status", "-wjson"),
    c(ROOT, "user", "add", "alice:alicepw"),
    c(ROOT, "user", "add", "bob:bobpw"),
    c(ROOT, "role", "add", "r1"),
    c(ROOT, "role", "add", "r2"),
    c(ROOT, "role", "grant-permission", "r1", "read", "a"),
    c(ROOT, "role", "grant-permission", "r1", "write", "b", "c"),
    c(ROOT, "role", "grant-permission", "--prefix", "r1", "readwrite", "p/"),
    c(ROOT, "role", "grant-permission", "--from-key", "r1", "read", "z"),
    c(ROOT, "role", "grant-permission", "r2", "readwrite", "x"),
    c(ROOT, "role", "get", "r1"),
    c(ROOT, "role", "get", "r1", "-wjson"),
    c(ROOT, "role", "get", "root"),
    c(ROOT, "role", "list"),
    c(ROOT, "user", "grant-role", "alice", "r1"),
    c(ROOT, "user", "grant-role", "bob", "r2"),
    c(ROOT, "user", "grant-role", "bob", "r2"),  # granted again: no change
    c(ROOT, "user", "get", "alice", "--detail"),
    c(ROOT, "user", "list"),
    c(ROOT, "auth", "status"),
]

SESSIONS: dict[str, list[Cmd]] = {
    "kv": [
        c(ALICE, "get", "a"),
        c(ALICE, "put", "a", "1"),
        c(ROOT, "put", "a", "1"),
        c(ALICE, "get", "a"),
        c(ALICE, "get", "a", "b"),
        c(ALICE, "put", "b", "1"),
        c(ALICE, "put", "bb", "2"),
        c(ALICE, "put", "c", "3"),
        c(ALICE, "get", "b"),
        c(ALICE, "del", "b"),
        c(ALICE, "del", "b", "c", "--range"),
        c(ALICE, "del", "bb", "--prev-kv"),
        c(ALICE, "put", "p/1", "x"),
        c(ALICE, "get", "--prefix", "p/"),
        c(ALICE, "put", "p/1", "y", "--prev-kv"),
        c(ALICE, "put", "b", "1", "--prev-kv"),
        c(ALICE, "del", "--prefix", "p/"),
        c(ALICE, "get", "z"),
        c(ALICE, "get", "--from-key", "z"),
        c(ALICE, "get", "--from-key", "y"),
        c(ALICE, "get", "", "--prefix"),
        c(BOB, "put", "x", "bob"),
        c(BOB, "get", "x", "-wjson"),
        c(BOB, "get", "a"),
        c("get", "a"),
        c("put", "a", "2"),
        c("--user=alice:wrong", "get", "a"),
        c("--user=nobody:x", "get", "a"),
        c(ROOT, "get", "", "--prefix"),
    ],
    "txn": [
        c(ROOT, "put", "a", "1"),
        c(ALICE, "txn", stdin=txn_input(['value("a") = "1"'], ["put b ok"], ["get a"])),
        c(ALICE, "txn", stdin=txn_input(['value("a") = "2"'], ["put b ok"], ["get a"])),
        c(ALICE, "txn", stdin=txn_input(['value("b") = "1"'], ["put b ok"], [])),
        c(ALICE, "txn", stdin=txn_input(['value("a") = "1"'], ["put c no"], [])),
        c(ALICE, "txn", stdin=txn_input(['value("a") = "1"'], ["get b"], [])),
        c(ALICE, "txn", stdin=txn_input([], ["get a", "put p/q 1"], ["del x"])),
        c(ALICE, "txn", stdin=txn_input([], ["get a"], ["del b"])),
        c(ALICE, "txn", "-wjson", stdin=txn_input(['version("a") > "0"'], ["get a"], [])),
    ],
    "admin_rpcs": [
        c(ALICE, "compaction", "2"),
        c("compaction", "2"),
        c(ROOT, "put", "k", "v"),
        c(ROOT, "compaction", "2"),
        c(ALICE, "member", "list", "-wjson"),
        c("member", "list"),
        c(ALICE, "member", "add", "x", "--peer-urls=http://127.0.0.1:9"),
        c(ALICE, "member", "remove", "1234"),
        c(ALICE, "member", "update", "1234", "--peer-urls=http://127.0.0.1:9"),
        c(ALICE, "member", "promote", "1234"),
        c("member", "remove", "1234"),
        c(ROOT, "member", "remove", "1234"),
        c(ALICE, "endpoint", "status", "-wjson"),
        c("endpoint", "status", "-wjson"),
        c(ALICE, "defrag"),
        c(ALICE, "alarm", "list"),
        c("alarm", "list"),
        c(ALICE, "alarm", "disarm"),
        c(ROOT, "alarm", "disarm"),
        c(ALICE, "endpoint", "hashkv"),
        c("endpoint", "hashkv"),
        c(ALICE, "move-leader", "1"),
        c(ALICE, "endpoint", "health", "-wjson"),
        c("endpoint", "health", "-wjson"),
    ],
    "leases": [
        c("lease", "grant", "100"),
        c(ALICE, "lease", "list"),
        c("lease", "list"),
        c("lease", "timetolive", "1"),
        c(ALICE, "lease", "timetolive", "1"),
        c(ALICE, "lease", "revoke", "1"),
        c("lease", "revoke", "1"),
    ],
    "management": [
        c(ALICE, "user", "list"),
        c(ALICE, "user", "get", "alice"),
        c(ALICE, "user", "get", "root"),
        c(ALICE, "role", "get", "r1"),
        c(ALICE, "role", "get", "r2"),
        c(ALICE, "role", "get", "root"),
        c(ALICE, "role", "list"),
        c(ALICE, "user", "add", "eve:x"),
        c(ALICE, "auth", "disable"),
        c(ROOT, "user", "delete", "root"),
        c(ROOT, "role", "delete", "root"),
        c(ROOT, "user", "revoke-role", "root", "root"),
        c(ROOT, "user", "add", "alice:x"),
        c(ROOT, "role", "add", "r1"),
        c(ROOT, "user", "get", "nobody"),
        c(ROOT, "role", "get", "nope"),
        c(ROOT, "user", "grant-role", "alice", "nope"),
        c(ROOT, "user", "grant-role", "nobody", "r1"),
        c(ROOT, "user", "revoke-role", "alice", "nope"),
        c(ROOT, "user", "revoke-role", "nobody", "r1"),
        c(ROOT, "role", "revoke-permission", "r1", "q"),
        c(ROOT, "role", "revoke-permission", "nope", "q"),
        c(ROOT, "role", "grant-permission", "r1", "read", "b", "a"),
        c(ROOT, "role", "grant-permission", "nope", "read", "a"),
        c(ROOT, "role", "grant-permission", "r1", "readwrite", "a"),  # updates READ to READWRITE
        c(ROOT, "role", "get", "r1"),
        c(ROOT, "role", "add", ""),
        c(ROOT, "user", "delete", "nobody"),
        c(ROOT, "role", "delete", "nope"),
        # permission changes take effect at once
        c(ALICE, "put", "a", "now"),
        c(ROOT, "role", "revoke-permission", "r1", "a"),
        c(ALICE, "get", "a"),
        c(ROOT, "role", "revoke-permission", "r1", "b", "c"),
        c(ALICE, "put", "b", "1"),
        c(ROOT, "role", "revoke-permission", "r1", "p/", "--prefix"),
        c(ROOT, "role", "revoke-permission", "r1", "z", "--from-key"),
        c(ROOT, "role", "get", "r1"),
        c(ROOT, "user", "revoke-role", "bob", "r2"),
        c(BOB, "get", "x"),
        c(ROOT, "user", "grant-role", "bob", "root"),
        c(BOB, "get", "x"),
        c(BOB, "user", "list"),
        c(ROOT, "user", "revoke-role", "bob", "root"),
        c(ROOT, "role", "delete", "r2"),
        c(ROOT, "user", "get", "bob"),
        c(ROOT, "user", "passwd", "alice", "--interactive=false", stdin="newpw\n"),
        c(ALICE, "get", "z"),
        c("--user=alice:newpw", "get", "z"),
        c(ROOT, "user", "delete", "bob"),
        c(BOB, "get", "x"),
        c(ROOT, "user", "add", "nopw", "--no-password"),
        c("--user=nopw:x", "get", "a"),
        c(ROOT, "user", "get", "nopw"),
        c(ROOT, "auth", "status"),
        c(ROOT, "auth", "disable"),
        c("auth", "status"),
        c("get", "a"),
        c("user", "list"),
        c("user", "delete", "root"),
        c("role", "delete", "root"),
        c("role", "list"),
        c("auth", "enable"),  # no root user any more
        c("auth", "status", "-wjson"),
    ],
}


def _clean(text: str) -> str:
    text = re.sub(r'"took":"[^"]*"', '"took":"T"', text)
    return re.sub(r"took = [^\n]*", "took = T", text)


def session_mismatches(p: Member, e: Member, cmds: list[Cmd]) -> list[str]:
    """Run the same etcdctl commands against petcd and etcd; what differed."""
    ctl_p, ctl_e = Etcdctl(p.client_url), Etcdctl(e.client_url)
    norm_p, norm_e = normalizer(p), normalizer(e)
    mismatches = []
    for cmd in cmds:
        rp, re_ = ctl_p(*cmd.args, input=cmd.stdin), ctl_e(*cmd.args, input=cmd.stdin)
        got = (rp.rc, _clean(norm_p(rp.out)), _clean(norm_p(rp.error_line)))
        want = (re_.rc, _clean(norm_e(re_.out)), _clean(norm_e(re_.error_line)))
        if got != want:
            mismatches.append(f"etcdctl {' '.join(cmd.args)}\n  petcd: {got}\n  etcd:  {want}")
    return mismatches


@pytest.mark.parametrize("session", SESSIONS, ids=list(SESSIONS))
def test_auth_session(pair: Differential, session: str) -> None:
    mismatches = session_mismatches(pair.petcd, pair.etcd, [*SETUP, *SESSIONS[session]])
    assert not mismatches, "\n".join(mismatches)


# -- gRPC-level details: tokens, watch, lease streams, snapshot (differential) ----------------------


def _grpc_probe(m: Member) -> list[object]:
    """What a raw gRPC client sees: status codes and messages, watch cancel reasons."""
    ctl = Etcdctl(m.client_url)
    for cmd in SETUP:
        ctl(*cmd.args, input=cmd.stdin)
    ctl.ok(ROOT, "put", "a", "1")
    seen: list[object] = []
    with grpc.insecure_channel(m.client_url.split("://", 1)[1]) as ch:
        auth, kv = pb_grpc.AuthStub(ch), pb_grpc.KVStub(ch)
        cluster, maint = pb_grpc.ClusterStub(ch), pb_grpc.MaintenanceStub(ch)
        lease, watch = pb_grpc.LeaseStub(ch), pb_grpc.WatchStub(ch)

        def call(name: str, fn: object, req: object, token: str | None = None, key: str = "token") -> object:
            md = [(key, token)] if token is not None else []
            try:
                resp = fn(req, metadata=md, timeout=10)  # type: ignore[operator]
                seen.append((name, "OK"))
                return resp
            except grpc.RpcError as e:
                seen.append((name, e.code().name, e.details()))
                return None

        tok = auth.Authenticate(pb.AuthenticateRequest(name="alice", password="alicepw")).token
        root = auth.Authenticate(pb.AuthenticateRequest(name="root", password="rootpw")).token
        seen.append(("token form", bool(re.fullmatch(r"[A-Za-z]{16}\.\d+", tok))))
        call("range a", kv.Range, pb.RangeRequest(key=b"a"), tok)
        call("range b", kv.Range, pb.RangeRequest(key=b"b"), tok)
        call("range a serializable", kv.Range, pb.RangeRequest(key=b"a", serializable=True), tok)
        for bad in ("bogus", "abc.1", "abc.x", "a.b.c"):
            call(f"range {bad}", kv.Range, pb.RangeRequest(key=b"a"), bad)
        call("member list bogus", cluster.MemberList, pb.MemberListRequest(), "bogus")
        call(
            "member list bearer", cluster.MemberList, pb.MemberListRequest(), "Bearer " + tok, "authorization"
        )
        call("member list authorization", cluster.MemberList, pb.MemberListRequest(), tok, "authorization")
        call(
            "authenticate with a bad token",
            auth.Authenticate,
            pb.AuthenticateRequest(name="alice", password="alicepw"),
            "bogus",
        )
        call("auth status bogus", auth.AuthStatus, pb.AuthStatusRequest(), "bogus")
        call("auth status alice", auth.AuthStatus, pb.AuthStatusRequest(), tok)
        call("user get self", auth.UserGet, pb.AuthUserGetRequest(name="alice"), tok)
        call("no password", auth.Authenticate, pb.AuthenticateRequest(name="alice", password="x"))
        call("snapshot alice", lambda r, **kw: list(maint.Snapshot(r, **kw)), pb.SnapshotRequest(), tok)
        call("hash alice", maint.Hash, pb.HashRequest(), tok)
        call("hash root", maint.Hash, pb.HashRequest(), root)
        call("status none", maint.Status, pb.StatusRequest())
        call("defragment none", maint.Defragment, pb.DefragmentRequest())
        call("alarm get alice", maint.Alarm, pb.AlarmRequest(action=pb.AlarmRequest.GET), tok)
        call(
            "alarm activate alice",
            maint.Alarm,
            pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE),
            tok,
        )
        call(
            "txn nested put c",
            kv.Txn,
            pb.TxnRequest(
                success=[
                    pb.RequestOp(
                        request_txn=pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"c"))])
                    )
                ]
            ),
            tok,
        )
        call("put ignore_value", kv.Put, pb.PutRequest(key=b"b", ignore_value=True), tok)
        # leases: a user may keep alive / revoke / look into a lease only if it may use its keys
        lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=100), metadata=(("token", root),)).ID
        kv.Put(pb.PutRequest(key=b"a", value=b"leased", lease=lid), metadata=(("token", root),))
        call("ttl keys alice", lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=lid, keys=True), tok)
        call("ttl alice", lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=lid), tok)
        call("leases alice", lease.LeaseLeases, pb.LeaseLeasesRequest(), tok)
        call("put b with the lease", kv.Put, pb.PutRequest(key=b"b", lease=lid), tok)
        call("revoke alice", lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=lid), tok)
        call(
            "keepalive alice",
            lambda r, **kw: [x.TTL > 0 for x in lease.LeaseKeepAlive(iter([r]), **kw)],
            pb.LeaseKeepAliveRequest(ID=lid),
            tok,
        )
        call(
            "keepalive root",
            lambda r, **kw: [x.TTL > 0 for x in lease.LeaseKeepAlive(iter([r]), **kw)],
            pb.LeaseKeepAliveRequest(ID=lid),
            root,
        )
        call("revoke root", lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=lid), root)
        # watches: refused ones are created and canceled at once, with the reason
        for who, token in (("alice", tok), ("nobody", None), ("bogus", "bogus")):
            reqs = [
                pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"b")),
                pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"p/", range_end=b"p0")),
            ]
            md = (("token", token),) if token else ()
            stream = watch.Watch(iter(reqs), metadata=md, timeout=5)
            try:
                for _ in reqs:
                    r = next(stream)
                    seen.append((f"watch {who}", r.created, r.canceled, r.watch_id, r.cancel_reason))
            except grpc.RpcError as e:
                seen.append((f"watch {who}", e.code().name, e.details()))
            stream.cancel()
        # the token lives --auth-token-ttl seconds after its last use
        old = auth.Authenticate(pb.AuthenticateRequest(name="alice", password="alicepw")).token
        time.sleep(4.5)
        call("range expired", kv.Range, pb.RangeRequest(key=b"a"), old)
    return seen


def test_grpc_details_match_etcd(tmp_path: Path) -> None:
    flags = ("--bcrypt-cost=4", "--auth-token-ttl=3")
    with Member.petcd(tmp_path, *flags) as p, Member.etcd(tmp_path, *flags) as e:
        got, want = _grpc_probe(p), _grpc_probe(e)
    mismatches = [f"petcd: {g}\n  etcd: {w}" for g, w in zip(got, want, strict=True) if g != w]
    assert not mismatches, "\n".join(mismatches)


# -- the JSON gateway: Authorization header = token (differential) --------------------------------


def _gateway_probe(http_url: str) -> list[object]:
    def post(path: str, body: dict[str, object], token: str | None = None) -> tuple[int, object]:
        req = urllib.request.Request(http_url + path, data=json.dumps(body).encode(), method="POST")
        if token is not None:
            req.add_header("Authorization", token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, doc = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            status, doc = e.code, json.loads(e.read())
        if isinstance(doc, dict):
            doc.pop("header", None)
            if "token" in doc:
                doc["token"] = bool(re.fullmatch(r"[A-Za-z]{16}\.\d+", str(doc["token"])))
        return status, doc

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    seen: list[object] = []
    seen.append(post("/v3/auth/user/add", {"name": "root", "password": "rootpw"}))
    seen.append(post("/v3/auth/user/grant", {"user": "root", "role": "root"}))
    seen.append(post("/v3/auth/role/add", {"name": "r"}))
    seen.append(post("/v3/auth/role/grant", {"name": "r", "perm": {"key": b64("a"), "permType": "READ"}}))
    seen.append(post("/v3/auth/user/add", {"name": "alice", "password": "pw"}))
    seen.append(post("/v3/auth/user/grant", {"user": "alice", "role": "r"}))
    seen.append(post("/v3/auth/enable", {}))
    seen.append(post("/v3/auth/status", {}))
    seen.append(post("/v3/auth/authenticate", {"name": "root", "password": "rootpw"}))

    def token(name: str, password: str) -> str:
        body = json.dumps({"name": name, "password": password}).encode()
        req = urllib.request.Request(http_url + "/v3/auth/authenticate", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.loads(resp.read())["token"])

    root, alice = token("root", "rootpw"), token("alice", "pw")
    seen.append(post("/v3/auth/authenticate", {"name": "alice", "password": "nope"}))
    seen.append(post("/v3/kv/put", {"key": b64("a"), "value": b64("1")}, root))
    seen.append(post("/v3/kv/put", {"key": b64("a"), "value": b64("2")}, alice))
    seen.append(post("/v3/kv/put", {"key": b64("a"), "value": b64("2")}))
    seen.append(post("/v3/kv/put", {"key": b64("a"), "value": b64("2")}, "bogus"))
    seen.append(post("/v3/kv/range", {"key": b64("a")}, alice))
    seen.append(post("/v3/kv/range", {"key": b64("a")}, "Bearer " + alice))
    seen.append(post("/v3/auth/status", {}, root))
    seen.append(post("/v3/auth/user/list", {}, alice))
    seen.append(post("/v3/auth/role/get", {"role": "r"}, alice))
    seen.append(post("/v3/auth/user/get", {"name": "alice"}, alice))
    seen.append(post("/v3/maintenance/status", {}, alice)[0])
    seen.append(post("/v3/maintenance/status", {}))
    seen.append(post("/v3/auth/disable", {}, root))
    seen.append(post("/v3/auth/status", {}))
    return seen


def test_gateway_auth_matches_etcd(tmp_path: Path) -> None:
    http_url = f"http://127.0.0.1:{free_port()}"
    with (
        Member.petcd(tmp_path, "--bcrypt-cost=4", f"--listen-client-http-urls={http_url}"),
        Member.etcd(tmp_path, "--bcrypt-cost=4") as e,
    ):
        got, want = _gateway_probe(http_url), _gateway_probe(e.client_url)
    mismatches = [f"petcd: {g}\n  etcd: {w}" for g, w in zip(got, want, strict=True) if g != w]
    assert not mismatches, "\n".join(mismatches)


# -- a 3-member petcd cluster: auth changes and tokens are replicated ----------------------------


def test_tokens_and_permissions_across_members(tmp_path: Path) -> None:
    from tests.harness.cluster import FAST_ELECTIONS, Cluster

    with Cluster("petcd", 3, tmp_path, extra_flags=(*FAST_ELECTIONS, "--bcrypt-cost=4")) as cl:
        m0, m1, m2 = cl.members
        ctl0 = Etcdctl(m0.client_url)
        for cmd in SETUP:
            ctl0(*cmd.args, input=cmd.stdin)
        assert "Authentication Status: true" in Etcdctl(m2.client_url).ok(ROOT, "auth", "status")
        ctl0.ok(ROOT, "put", "a", "1")

        def stub(m: Member) -> pb_grpc.KVStub:
            return pb_grpc.KVStub(grpc.insecure_channel(m.client_url.split("://", 1)[1]))

        with grpc.insecure_channel(m0.client_url.split("://", 1)[1]) as ch:
            tok = (
                pb_grpc.AuthStub(ch)
                .Authenticate(pb.AuthenticateRequest(name="alice", password="alicepw"))
                .token
            )
            root = (
                pb_grpc.AuthStub(ch)
                .Authenticate(pb.AuthenticateRequest(name="root", password="rootpw"))
                .token
            )
        # a token minted through one member works on every member
        for m in (m0, m1, m2):
            assert (
                stub(m).Range(pb.RangeRequest(key=b"a"), metadata=(("token", tok),), timeout=10).kvs[0].value
                == b"1"
            )
        # a permission revoked through one member is refused by the others
        Etcdctl(m1.client_url).ok(ROOT, "role", "revoke-permission", "r1", "a")
        for m in (m0, m2):
            with pytest.raises(grpc.RpcError) as err:
                stub(m).Range(pb.RangeRequest(key=b"a"), metadata=(("token", tok),), timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # the leader revokes expired leases as root, with auth enabled
        lease = pb_grpc.LeaseStub(grpc.insecure_channel(m2.client_url.split("://", 1)[1]))
        lid = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), metadata=(("token", root),), timeout=10).ID
        stub(m2).Put(
            pb.PutRequest(key=b"p/leased", value=b"v", lease=lid), metadata=(("token", root),), timeout=10
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            kvs = (
                stub(m1).Range(pb.RangeRequest(key=b"p/leased"), metadata=(("token", root),), timeout=10).kvs
            )
            if not kvs:
                break
            time.sleep(0.5)
        assert not kvs, "the expired lease's key is still there"
        assert cl.ctl().ok(ROOT, "get", "p/", "--prefix") == ""


# -- client certificates: the common name is the user (differential) ------------------------------

CERT_SESSION: list[tuple[str, tuple[str, ...]]] = [
    # (whose certificate, etcdctl arguments)
    ("root", ("user", "add", "root", "--no-password")),
    ("root", ("auth", "enable")),
    ("root", ("user", "add", "alice", "--no-password")),
    ("root", ("role", "add", "r")),
    ("root", ("role", "grant-permission", "r", "read", "a")),
    ("root", ("user", "grant-role", "alice", "r")),
    ("root", ("put", "a", "1")),
    ("root", ("user", "get", "alice")),
    ("alice", ("get", "a", "--print-value-only")),
    ("alice", ("put", "a", "2")),
    ("alice", ("user", "list")),
    ("alice", ("member", "list", "-wjson")),
    ("alice", ("--user=alice:x", "get", "a")),
    ("nobody", ("get", "a")),
    ("nobody", ("endpoint", "health", "-wjson")),
    ("nobody", ("member", "list", "-wjson")),
    ("root", ("auth", "status")),
    ("root", ("auth", "disable")),
    ("nobody", ("get", "a", "--print-value-only")),
]


def _cert_session(kind: str, tmp: Path, ca: object) -> list[object]:
    import subprocess

    import trustme

    from tests.harness.paths import peer, petcd_command

    assert isinstance(ca, trustme.CA)
    tmp.mkdir()
    files: dict[str, dict[str, str]] = {}
    for name in ("server", "root", "alice", "nobody"):
        cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name)
        paths = {"cacert": tmp / "ca.pem", "cert": tmp / f"{name}.pem", "key": tmp / f"{name}-key.pem"}
        ca.cert_pem.write_to_path(str(paths["cacert"]))
        cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
        cert.private_key_pem.write_to_path(str(paths["key"]))
        files[name] = {k: str(v) for k, v in paths.items()}
    port, peer_port = free_port(), free_port()
    url, purl = f"https://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    exe = petcd_command() if kind == "petcd" else [peer("etcd")]
    flags = [
        "--name=c",
        f"--data-dir={tmp / 'data'}",
        f"--listen-client-urls={url}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={purl}",
        f"--initial-advertise-peer-urls={purl}",
        f"--initial-cluster=c={purl}",
        f"--cert-file={files['server']['cert']}",
        f"--key-file={files['server']['key']}",
        f"--trusted-ca-file={files['server']['cacert']}",
        "--client-cert-auth",
        "--bcrypt-cost=4",
    ]
    with open(tmp / "log", "wb") as log:
        proc = subprocess.Popen([*exe, *flags], stdout=log, stderr=subprocess.STDOUT)
    try:
        ctl = Etcdctl(url)

        def as_(who: str) -> list[str]:
            f = files[who]
            return [f"--cacert={f['cacert']}", f"--cert={f['cert']}", f"--key={f['key']}"]

        deadline = time.monotonic() + 30
        while ctl(*as_("root"), "endpoint", "health").rc != 0:
            assert time.monotonic() < deadline, "member not healthy over TLS"
            time.sleep(0.2)
        norm = Normalizer().name(port, "<port>").name(peer_port, "<peer-port>")
        seen: list[object] = []
        for who, args in CERT_SESSION:
            r = ctl(*as_(who), *args)
            out = re.sub(r'"(took|cluster_id|member_id|ID|raft_term)":("[^"]*"|\d+)', r'"\1":X', norm(r.out))
            seen.append((who, args, r.rc, out, norm(r.error_line)))
        return seen
    finally:
        proc.terminate()
        proc.wait(10)


def test_client_certificate_auth_matches_etcd(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    got = _cert_session("petcd", tmp_path / "petcd", ca)
    want = _cert_session("etcd", tmp_path / "etcd", ca)
    mismatches = [f"petcd: {g}\n  etcd: {w}" for g, w in zip(got, want, strict=True) if g != w]
    assert not mismatches, "\n".join(mismatches)
