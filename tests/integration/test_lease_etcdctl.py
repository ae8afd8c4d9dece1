"""Leases with real clients: etcdctl sessions compared between petcd and a real etcd v3.6 where
the output is deterministic, plus behaviour over time (expiry, keep-alive, restarts), checked on
petcd and, where cheap, on etcd too so the expectations are etcd's.

We test these aspects:
- etcdctl output of lease grant / timetolive (--keys, -wjson) / list / revoke / keep-alive --once,
  put --lease, a key moved from one lease to another, unknown leases, TTL bounds (the minimum TTL
  for `grant 1`, too large TTLs), get -wjson of a key with a lease;
- expiry: the keys of a TTL-2 lease vanish after it expires, and a watcher sees all their DELETE
  events in ONE revision;
- `etcdctl lease keep-alive` keeps a lease alive past its TTL; after it stops, the lease expires;
- restarts of petcd (SIGTERM and kill -9) keep leases and their keys; a restarted member gives
  every lease a fresh TTL (no mass expiry right after start), then expires them normally;
- LeaseGrant with a client-chosen ID, and "etcdserver: lease already exists" for a duplicate.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.framework.differential import Differential
from tests.framework.wait import wait_until
from tests.harness.etcdctl import Etcdctl
from tests.harness.normalize import Normalizer
from tests.harness.paths import peer
from tests.harness.procs import Member

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

T = TypeVar("T")


# -- differential sessions --------------------------------------------------------------------------


class Session:
    """One side of an etcdctl session: runs commands, substituting {L0}, {L1}... with the IDs of
    the leases granted so far (hex), and normalizes outputs: ports, member/cluster IDs, lease IDs
    (by grant order), remaining TTLs (checked to be within 3 s of the granted TTL), key order."""

    def __init__(self, m: Member) -> None:
        self.m = m
        self.ctl = Etcdctl(m.client_url)
        header = self.ctl("endpoint", "status", "-wjson").json()[0]["Status"]["header"]
        self.norm = (
            Normalizer()
            .name(m.client_port, "<client-port>")
            .name(m.peer_port, "<peer-port>")
            .name(int(header["member_id"]), "<member-id>")
            .name(int(header["cluster_id"]), "<cluster-id>")
        )
        self.leases: list[int] = []

    def run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        args = tuple(a.format(**{f"L{i}": f"{lid:x}" for i, lid in enumerate(self.leases)}) for a in args)
        r = self.ctl(*args, input=stdin)
        for m in re.finditer(r"lease ([0-9a-f]{16}) granted", r.out):
            self._learn(int(m.group(1), 16))
        if r.out.startswith("{") and '"ID":' in r.out and args[:2] == ("lease", "grant"):
            self._learn(int(r.json()["ID"]))
        return r.rc, self._normalize(r.out), self.norm(r.error_line)

    def _learn(self, lease_id: int) -> None:
        self.norm.name(lease_id, f"<lease-{len(self.leases)}>")
        self.leases.append(lease_id)

    def _normalize(self, out: str) -> str:
        out = self.norm(out)
        out = re.sub(
            r"granted with TTL\((\d+)s\), remaining\((\d+)s\)",
            lambda m: f"granted with TTL({m.group(1)}s), remaining({_ttl(int(m.group(1)), int(m.group(2)))})",
            out,
        )
        out = re.sub(
            r'"ttl":(-?\d+),"granted-ttl":(\d+)',
            lambda m: f'"ttl":{_ttl(int(m.group(2)), int(m.group(1)))},"granted-ttl":{m.group(2)}',
            out,
        )
        # etcd lists a lease's keys and its leases in map order
        out = re.sub(
            r"attached keys\(\[([^]]*)\]\)",
            lambda m: f"attached keys([{' '.join(sorted(m.group(1).split()))}])",
            out,
        )
        out = re.sub(
            r'"keys":\[([^]]*)\]', lambda m: f'"keys":[{",".join(sorted(m.group(1).split(",")))}]', out
        )
        if out.startswith("found ") and " leases\n" in out:
            first, _, rest = out.partition("\n")
            out = first + "\n" + "".join(sorted(ln + "\n" for ln in rest.splitlines()))
        out = re.sub(
            r'"leases":\[([^]]*)\]',
            lambda m: '"leases":[' + ",".join(sorted(re.findall(r"\{[^}]*\}", m.group(1)))) + "]",
            out,
        )
        return out


def _ttl(granted: int, remaining: int) -> str:
    if remaining == -1:
        return "-1"
    return "R" if granted - 3 <= remaining <= granted else f"{remaining}?"


def run_session(pair: Differential, cmds: list[tuple[str, ...]]) -> list[str]:
    sp, se = Session(pair[0]), Session(pair[1])
    mismatches = []
    for cmd in cmds:

        def step(m: Member, cmd: tuple[str, ...] = cmd) -> tuple[int, str, str]:
            return (sp if m is pair[0] else se).run(*cmd)

        got, want = pair.run_concurrently(step)
        if got != want:
            mismatches.append(f"etcdctl {' '.join(cmd)}\n  petcd: {got}\n  etcd:  {want}")
    return mismatches


def test_lease_commands_differential(pair: Differential) -> None:
    cmds = [
        ("lease", "grant", "100"),  # L0
        ("lease", "grant", "1"),  # L1: etcd's minimum TTL
        ("lease", "grant", "0"),  # L2
        ("lease", "grant", "60", "-wjson"),  # L3
        ("lease", "grant", "9000000001"),
        ("lease", "grant", "9000000000"),  # L4: the maximum
        ("lease", "timetolive", "{L1}"),
        ("lease", "timetolive", "{L2}", "-wjson"),
        ("lease", "timetolive", "{L4}"),
        # the 2 s leases would expire during the session: revoke them now
        ("lease", "revoke", "{L1}"),
        ("lease", "revoke", "{L2}"),
        ("put", "k1", "v1", "--lease={L0}"),
        ("put", "k2", "v2", "--lease={L0}"),
        ("put", "k3", "v3", "--lease={L3}"),
        ("put", "k0", "v0"),
        ("get", "k1", "-wjson"),
        ("lease", "timetolive", "{L0}"),
        ("lease", "timetolive", "{L0}", "--keys"),
        ("lease", "timetolive", "{L0}", "--keys", "-wjson"),
        ("lease", "timetolive", "{L3}", "--keys"),
        ("lease", "list"),
        ("lease", "list", "-wjson"),
        ("lease", "keep-alive", "--once", "{L0}"),
        ("lease", "keep-alive", "--once", "{L0}", "-wjson"),
        # a key moves from one lease to another
        ("put", "k1", "moved", "--lease={L3}"),
        ("lease", "timetolive", "{L0}", "--keys"),
        ("lease", "timetolive", "{L3}", "--keys"),
        # a put without --lease detaches the key
        ("put", "k2", "no lease"),
        ("lease", "timetolive", "{L0}", "--keys"),
        ("get", "k2", "-wjson"),
        ("lease", "revoke", "{L0}"),
        ("lease", "timetolive", "{L0}"),
        ("lease", "timetolive", "{L0}", "-wjson"),
        ("lease", "revoke", "{L0}"),
        ("lease", "keep-alive", "--once", "{L0}"),
        ("get", "", "--prefix", "--keys-only"),
        ("lease", "revoke", "{L3}"),
        ("get", "", "--prefix"),
        # unknown leases
        ("put", "k9", "v", "--lease=1234"),
        ("put", "k9", "v", "--lease=ffffffffffffffff"),
        ("lease", "timetolive", "1234", "--keys"),
        ("lease", "revoke", "1234"),
        ("lease", "keep-alive", "--once", "1234"),
        ("lease", "grant", "notanumber"),
        ("lease", "list"),
        ("get", "k9"),
    ]
    mismatches = run_session(pair, cmds)
    assert not mismatches, "\n".join(mismatches)


def test_lease_in_txn_differential(pair: Differential) -> None:
    sp, se = Session(pair[0]), Session(pair[1])
    mismatches = []
    steps: list[tuple[tuple[str, ...], str | None]] = [
        (("lease", "grant", "100"), None),
        (("txn",), "\nput t1 a --lease={L0}\nput t2 b --lease={L0}\n\n\n"),
        (("lease", "timetolive", "{L0}", "--keys"), None),
        (("txn", "-wjson"), "\nput t1 c --lease=1234\n\n\n"),
        (("txn",), 'lease("t1") = "{L0}"\n\nget t1\n\nget t2\n\n'),
        (("txn", "-wjson"), 'lease("t2") = "0"\n\nget t1\n\nget t2\n\n'),
        (("lease", "revoke", "{L0}"), None),
        (("get", "t", "--prefix"), None),
    ]
    for args, stdin in steps:

        def step(m: Member, args: tuple[str, ...] = args, stdin: str | None = stdin) -> tuple[int, str, str]:
            side = sp if m is pair[0] else se
            text = None if stdin is None else stdin.replace("{L0}", f"{side.leases[0]:x}")
            return side.run(*args, stdin=text)

        got, want = pair.run_concurrently(step)
        if got != want:
            mismatches.append(f"etcdctl {' '.join(args)} <<< {stdin!r}\n  petcd: {got}\n  etcd:  {want}")
    assert not mismatches, "\n".join(mismatches)


# -- behaviour over time ----------------------------------------------------------------------------


def grant(ctl: Etcdctl, ttl: int) -> int:
    out = ctl.ok("lease", "grant", str(ttl))
    m = re.match(r"lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)", out)
    assert m, out
    return int(m.group(1), 16)


def keys(ctl: Etcdctl, prefix: str) -> list[str]:
    return ctl.ok("get", prefix, "--prefix", "--keys-only").split()


def timetolive(ctl: Etcdctl, lease_id: int) -> dict[str, Any]:
    ttl: dict[str, Any] = json.loads(ctl.ok("lease", "timetolive", f"{lease_id:x}", "--keys", "-wjson"))
    return ttl


class Watch:
    """`etcdctl watch -wjson` in the background; one JSON response per line."""

    def __init__(self, m: Member, tmp: Path, *args: str) -> None:
        self.path = tmp / f"watch-{m.kind}-{m.client_port}-{time.monotonic_ns()}.out"
        with open(self.path, "wb") as out:
            self.proc = subprocess.Popen(
                [peer("etcdctl"), f"--endpoints={m.client_url}", "watch", "-wjson", *args],
                stdout=out,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "ETCDCTL_API": "3"},
            )

    def responses(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.startswith("{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def test_expiry_deletes_all_keys_in_one_revision(pair: Differential, tmp_path: Path) -> None:
    """A TTL-2 lease with 5 keys: after expiry the keys are gone, the lease too, and a watcher got
    one response with the 5 DELETE events, all at the same revision (petcd and etcd alike)."""

    def scenario(m: Member) -> dict[str, Any]:
        ctl = Etcdctl(m.client_url)
        ctl.ok("put", "exp/keep", "no lease")
        start = int(ctl("get", "exp/keep", "-wjson").json()["header"]["revision"])
        w = Watch(m, tmp_path, f"--rev={start + 1}", "--prefix", "exp/")
        try:
            lid = grant(ctl, 2)
            for i in range(5):
                ctl.ok("put", f"exp/{i}", str(i), f"--lease={lid:x}")
            t0 = time.monotonic()
            wait_until(lambda: keys(ctl, "exp/") == ["exp/keep"], 10, what="the lease's keys to be deleted")
            elapsed = time.monotonic() - t0
            deletes = wait_until(
                lambda: [r for r in w.responses() if any(ev.get("type") == 1 for ev in r["Events"])],
                10,
                what="the watcher to see the deletes",
            )
            ttl = timetolive(ctl, lid)
        finally:
            w.stop()
        return {
            "elapsed": elapsed,
            "delete_responses": len(deletes),
            "delete_events": [
                (ev.get("type"), ev["kv"]["mod_revision"]) for r in deletes for ev in r["Events"]
            ],
            "header_rev": [r["Header"]["revision"] for r in deletes],
            "ttl": ttl["ttl"],
        }

    got, want = pair.run_concurrently(scenario)
    for name, res in (("petcd", got), ("etcd", want)):
        revs = {rev for _, rev in res["delete_events"]}
        assert res["delete_responses"] == 1 and len(res["delete_events"]) == 5, (name, res)
        assert len(revs) == 1 and res["header_rev"] == list(revs), (name, res)
        assert res["ttl"] == -1, (name, res)
        assert 1.0 <= res["elapsed"] <= 6.0, (name, res)
    assert got["delete_events"] == want["delete_events"]


def test_keep_alive_keeps_the_lease(pair: Differential) -> None:
    """`etcdctl lease keep-alive` on a TTL-2 lease keeps its key well past 2 s; once it stops the
    lease expires within its TTL (plus the expiry check's slack)."""

    def scenario(m: Member) -> dict[str, Any]:
        ctl = Etcdctl(m.client_url)
        lid = grant(ctl, 2)
        ctl.ok("put", "ka/k", "v", f"--lease={lid:x}")
        ka = subprocess.Popen(
            [peer("etcdctl"), f"--endpoints={m.client_url}", "lease", "keep-alive", f"{lid:x}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        alive_until = time.monotonic() + 4.5
        checks = 0
        try:
            while time.monotonic() < alive_until:
                assert keys(ctl, "ka/") == ["ka/k"], f"{m.kind}: the key expired despite keep-alive"
                assert timetolive(ctl, lid)["ttl"] >= 0
                checks += 1
                time.sleep(0.25)
        finally:
            ka.send_signal(signal.SIGTERM)
            out = ka.communicate(timeout=10)[0].decode()
        stopped = time.monotonic()
        wait_until(
            lambda: keys(ctl, "ka/") == [], 8, what=f"{m.kind}: the key to expire after keep-alive stopped"
        )
        return {
            "expired_after": time.monotonic() - stopped,
            "checks": checks,
            "lines": sorted({re.sub(r"[0-9a-f]{16}", "<id>", ln) for ln in out.splitlines()}),
        }

    got, want = pair.run_concurrently(scenario)
    for name, res in (("petcd", got), ("etcd", want)):
        assert res["checks"] >= 8 and res["expired_after"] <= 4.5, (name, res)
    assert got["lines"] == want["lines"] == ["lease <id> keepalived with TTL(2)"]


def test_min_ttl_and_lease_ids_grpc(pair: Differential) -> None:
    """LeaseGrant over gRPC: TTL 1 becomes etcd's minimum; a client-chosen ID is kept; granting it
    again fails with FAILED_PRECONDITION "etcdserver: lease already exists"; revoking an unknown
    lease fails with NOT_FOUND "etcdserver: requested lease not found"."""

    def scenario(m: Member) -> list[Any]:
        out: list[Any] = []
        with grpc.insecure_channel(m.client_url.split("://", 1)[1]) as ch:
            lease = pb_grpc.LeaseStub(ch)

            def call(fn: Callable[..., Any], req: Any) -> Any:
                try:
                    r = fn(req, timeout=10)
                except grpc.RpcError as e:
                    return ["error", e.code().name, e.details()]
                return ["ok", getattr(r, "ID", None), getattr(r, "TTL", None), getattr(r, "grantedTTL", None)]

            out.append(call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=1, ID=0x1234)))
            out.append(call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=1, ID=0x1234)))
            out.append(call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=30, ID=0x1234)))
            out.append(call(lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=0x1234)))
            out.append(call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=-5, ID=0x42)))
            out.append(call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=9_000_000_001, ID=0x43)))
            out.append(call(lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=0x1234)))
            out.append(call(lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=0x1234)))
            out.append(call(lease.LeaseGrant, pb.LeaseGrantRequest(TTL=30, ID=0x1234)))  # free again
            leases = pb_grpc.LeaseStub(ch).LeaseLeases(pb.LeaseLeasesRequest(), timeout=10)
            out.append(sorted(le.ID for le in leases.leases))
        return out

    got, want = pair.run_concurrently(scenario)
    assert want[0] == ["ok", 0x1234, 2, None]  # etcd's minimum TTL with the default election timeout
    assert want[1] == ["error", "FAILED_PRECONDITION", "etcdserver: lease already exists"]
    assert got == want


def test_restart_keeps_leases_and_keys(tmp_path: Path) -> None:
    """petcd stopped with SIGTERM, then with kill -9: leases and their keys survive; after the
    restart every lease has a fresh TTL (a lease that was about to expire is not expired right
    away), and leases then expire normally."""
    with Member.petcd(tmp_path) as m:
        ctl = Etcdctl(m.client_url)
        long_lease = grant(ctl, 60)
        short = [grant(ctl, 6) for _ in range(3)]
        ctl.ok("put", "r/long", "v", f"--lease={long_lease:x}")
        for i, lid in enumerate(short):
            ctl.ok("put", f"r/short{i}", "v", f"--lease={lid:x}")
        ctl.ok("put", "r/plain", "v")
        all_keys = ["r/long", "r/plain", "r/short0", "r/short1", "r/short2"]

        for how in ("sigterm", "kill9"):
            # let the short leases run down to their last 2 seconds
            wait_until(lambda: timetolive(ctl, short[0])["ttl"] <= 2, 10, what="the short leases to run down")
            if how == "sigterm":
                m.stop()
            else:
                m.kill()
            m.start()
            restarted = time.monotonic()
            assert keys(ctl, "r/") == all_keys, f"after {how}: keys lost right after the restart"
            listed = ctl.ok("lease", "list").splitlines()
            assert listed[0] == "found 4 leases", (how, listed)
            assert sorted(int(x, 16) for x in listed[1:]) == sorted([long_lease, *short])
            for i, lid in enumerate(short):
                ttl = timetolive(ctl, lid)
                assert ttl["granted-ttl"] == 6 and ttl["ttl"] >= 5, f"after {how}: no fresh TTL: {ttl}"
                assert ttl["keys"] == [b64(f"r/short{i}")], (how, ttl)
            ttl = timetolive(ctl, long_lease)
            assert ttl["granted-ttl"] == 60 and ttl["ttl"] >= 58, (how, ttl)
            # no mass expiry right after the start: the short leases live on for a while
            until = restarted + 2.0
            time.sleep(max(0.0, until - time.monotonic()))
            assert keys(ctl, "r/") == all_keys, f"after {how}: leases expired right after the restart"

        # not kept alive, the short leases expire normally: about 6 s after the restart
        wait_until(lambda: keys(ctl, "r/") == ["r/long", "r/plain"], 12, what="the short leases to expire")
        assert time.monotonic() - restarted >= 4.0
        assert ctl.ok("lease", "list").splitlines()[0] == "found 1 leases"
        assert timetolive(ctl, long_lease)["keys"] == [b64("r/long")]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()
