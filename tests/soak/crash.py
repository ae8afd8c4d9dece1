"""Crash soak: kill -9 at random points of a concurrent write load, restart, and check that nothing
acknowledged was lost. tests/integration/test_crash_cycles.py runs the same code for 5 cycles.

    python -m tests.soak.crash --cycles 60                 # one member
    python -m tests.soak.crash --cycles 60 --cluster       # 3 members: a follower, then the
                                                           # leader, ... and every 5th cycle all
    python -m tests.soak.crash --cycles 5 --kind etcd      # the same against etcd v3.6

Every writer thread puts fresh keys (crash/<cycle>/<writer>/<n>), each key once, and records the
revision of every acknowledged put. After each restart:
- every acknowledged put is there, with the revision it was acknowledged with (on every member);
- every key found was attempted (nothing from nowhere);
- revisions are dense: the mod revisions of the keys are exactly 2..current (every revision is
  one of our puts, none lost in the middle, no put applied twice);
- the revision never goes back across restarts;
- in a cluster, every member has the same applied index and the same HashKV at that revision,
  and serves the same keys.

It prints one line per cycle and a summary; the exit code is non-zero on the first violation (the
data directory is kept for inspection then).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from server.api.etcdserverpb import rpc_pb2 as pb
from server.api.etcdserverpb import rpc_pb2_grpc as pb_grpc
from tests.framework.wait import wait_until
from tests.harness.cluster import FAST_ELECTIONS, Cluster, ClusterMember
from tests.harness.procs import Member

__all__ = ["CrashReport", "Ledger", "Writers", "run_cluster", "run_single"]

PREFIX = b"crash/"
PREFIX_END = b"crash0"
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
    ("grpc.max_receive_message_length", -1),
]


def target(url: str) -> str:
    return url.split("://", 1)[1]


@dataclass
class Ledger:
    """What the writers tried and what was acknowledged (key -> revision)."""

    attempted: set[bytes] = field(default_factory=set)
    acked: dict[bytes, int] = field(default_factory=dict)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Writers:
    """N threads putting fresh keys to random endpoints until stopped; a failed put has an unknown
    outcome (it may have been applied) and is never retried with the same key."""

    def __init__(self, endpoints: Sequence[str], ledger: Ledger, cycle: int, n: int, seed: int) -> None:
        self.endpoints = list(endpoints)
        self.ledger = ledger
        self.cycle = cycle
        self.stop_event = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(w, random.Random(seed * 1000 + w)), daemon=True)
            for w in range(n)
        ]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def _run(self, w: int, rng: random.Random) -> None:
        channels = [grpc.insecure_channel(target(u), options=CHANNEL_OPTIONS) for u in self.endpoints]
        stubs = [pb_grpc.KVStub(ch) for ch in channels]
        led = self.ledger
        i = 0
        try:
            while not self.stop_event.is_set():
                key = PREFIX + f"{self.cycle:04d}/{w:02d}/{i:07d}".encode()
                i += 1
                with led.lock:
                    led.attempted.add(key)
                try:
                    resp = rng.choice(stubs).Put(pb.PutRequest(key=key, value=b"v" * 64), timeout=3)
                except grpc.RpcError:
                    with led.lock:
                        led.failed += 1
                    time.sleep(0.05)
                    continue
                with led.lock:
                    led.acked[key] = int(resp.header.revision)
        finally:
            for ch in channels:
                ch.close()


@dataclass
class CrashReport:
    mode: str
    cycles: int = 0
    acked: int = 0
    attempted: int = 0
    failed_calls: int = 0
    revision: int = 0
    lost: int = 0
    seconds: float = 0.0
    kills: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        kills = ", ".join(f"{k}: {v}" for k, v in sorted(self.kills.items()))
        return (
            f"{self.mode}: {self.cycles} kill -9 cycles ({kills}), {self.acked} acknowledged puts "
            f"of {self.attempted} attempted ({self.failed_calls} failed calls), final revision "
            f"{self.revision}, lost {self.lost}, {self.seconds:.0f} s"
        )


def _range(member: Member, serializable: bool = False) -> Any:
    with grpc.insecure_channel(target(member.client_url), options=CHANNEL_OPTIONS) as ch:
        return pb_grpc.KVStub(ch).Range(
            pb.RangeRequest(key=PREFIX, range_end=PREFIX_END, serializable=serializable), timeout=30
        )


def check_store(resp: Any, ledger: Ledger, last_rev: int, where: str) -> int:
    """The checks of one member's view (a RangeResponse over the whole prefix); its revision."""
    found = {kv.key: int(kv.mod_revision) for kv in resp.kvs}
    rev = int(resp.header.revision)
    with ledger.lock:
        acked = dict(ledger.acked)
        attempted = set(ledger.attempted)
    lost = {k: r for k, r in acked.items() if found.get(k) != r}
    if lost:
        sample = [(k, r, found.get(k)) for k, r in list(lost.items())[:5]]
        raise AssertionError(
            f"{where}: {len(lost)} acknowledged puts lost or changed (key, acked rev, found rev): {sample}"
        )
    phantom = [k for k in found if k not in attempted]
    if phantom:
        raise AssertionError(f"{where}: keys nobody wrote: {phantom[:5]}")
    revs = sorted(found.values())
    if revs != list(range(2, rev + 1)):
        missing = sorted(set(range(2, rev + 1)) - set(revs))[:10]
        dup = len(revs) - len(set(revs))
        raise AssertionError(
            f"{where}: revisions not dense up to {rev}: {len(revs)} keys, missing {missing}, {dup} duplicates"
        )
    if rev < last_rev:
        raise AssertionError(f"{where}: revision went back from {last_rev} to {rev}")
    return rev


def run_single(
    tmp: Path,
    cycles: int,
    *,
    kind: str = "petcd",
    writers: int = 8,
    seed: int = 1,
    max_run: float = 1.5,
    log: Callable[[str], None] = print,
) -> CrashReport:
    rng = random.Random(seed)
    report = CrashReport(f"{kind} single member", kills={"member": 0})
    t0 = time.monotonic()
    member = Member.petcd(tmp) if kind == "petcd" else Member.etcd(tmp)
    ledger = Ledger()
    last_rev = 1
    member.start()
    try:
        for cycle in range(cycles):
            with Writers([member.client_url], ledger, cycle, writers, seed * 7919 + cycle):
                time.sleep(rng.uniform(0.2, max_run))
                member.kill()  # kill -9 while the writers are mid-call
                report.kills["member"] += 1
                time.sleep(rng.uniform(0, 0.3))
                member.start()
            # the member was restarted under the writers' retries; now quiet: check it
            rev = check_store(
                wait_until(lambda: _range(member), 30, what="a range after restart"),
                ledger,
                last_rev,
                f"cycle {cycle}",
            )
            last_rev = rev
            report.cycles += 1
            log(f"cycle {cycle + 1}/{cycles}: revision {rev}, {len(ledger.acked)} acknowledged, all present")
        member.stop()
    finally:
        member.kill()
    report.acked, report.attempted, report.failed_calls = (
        len(ledger.acked),
        len(ledger.attempted),
        ledger.failed,
    )
    report.revision, report.seconds = last_rev, time.monotonic() - t0
    return report


def _converge_and_check(c: Cluster, ledger: Ledger, last_rev: int, where: str) -> int:
    rev, hashes = c.wait_converged(timeout=60)
    if len(set(hashes.values())) != 1 or len(hashes) != len(c.members):
        raise AssertionError(f"{where}: hashkv differs at revision {rev}: {hashes}")
    leader = c.wait_leader()
    rev = check_store(_range(leader), ledger, last_rev, f"{where} (leader {leader.name})")
    c.wait_applied(timeout=30)
    for m in c.members:
        if m is leader:
            continue
        r = wait_until(lambda m=m: _range(m, serializable=True), 30, what=f"a range on {m.name}")  # type: ignore[misc]
        check_store(r, ledger, last_rev, f"{where} ({m.name})")
    return rev


def run_cluster(
    tmp: Path,
    cycles: int,
    *,
    kind: str = "petcd",
    writers: int = 8,
    seed: int = 1,
    all_every: int = 5,
    max_run: float = 1.5,
    log: Callable[[str], None] = print,
) -> CrashReport:
    """Cycle i kills a follower (even i) or the leader (odd i), and every all_every-th cycle all
    three members at once (0: never), while writers keep writing to every member."""
    rng = random.Random(seed)
    report = CrashReport(f"{kind} 3-member cluster", kills={"follower": 0, "leader": 0, "all": 0})
    t0 = time.monotonic()
    ledger = Ledger()
    last_rev = 1
    with Cluster(kind, 3, tmp, FAST_ELECTIONS) as c:
        endpoints = [m.client_url for m in c.members]
        for cycle in range(cycles):
            if all_every and (cycle + 1) % all_every == 0:
                what = "all"
            else:
                what = "follower" if cycle % 2 == 0 else "leader"
            with Writers(endpoints, ledger, cycle, writers, seed * 7919 + cycle):
                time.sleep(rng.uniform(0.2, max_run))
                leader = c.wait_leader()
                victims: list[ClusterMember]
                if what == "all":
                    victims = list(c.members)
                elif what == "leader":
                    victims = [leader]
                else:
                    victims = [rng.choice([m for m in c.members if m is not leader])]
                for v in victims:
                    v.kill()
                report.kills[what] += 1
                # the survivors (if any) keep taking writes for a while
                time.sleep(rng.uniform(0.1, 1.0))
                for v in victims:
                    v.spawn()
                for v in victims:
                    v.wait_ready(60)
                time.sleep(rng.uniform(0.1, 0.5))
            rev = _converge_and_check(c, ledger, last_rev, f"cycle {cycle} ({what} killed)")
            last_rev = rev
            report.cycles += 1
            log(
                f"cycle {cycle + 1}/{cycles} ({what} killed): revision {rev}, "
                f"{len(ledger.acked)} acknowledged, all present on every member, hashkv equal"
            )
    report.acked, report.attempted, report.failed_calls = (
        len(ledger.acked),
        len(ledger.attempted),
        ledger.failed,
    )
    report.revision, report.seconds = last_rev, time.monotonic() - t0
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.soak.crash", description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--cluster", action="store_true", help="a 3-member cluster instead of one member")
    ap.add_argument("--kind", choices=["petcd", "etcd"], default="petcd")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--all-every", type=int, default=5, help="cluster: kill all members every Nth cycle")
    ap.add_argument("--data-dir", help="keep the data here (default: a temporary directory)")
    args = ap.parse_args(argv)
    tmp = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="petcd-crash-soak-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if args.cluster:
            report = run_cluster(
                tmp,
                args.cycles,
                kind=args.kind,
                writers=args.writers,
                seed=args.seed,
                all_every=args.all_every,
            )
        else:
            report = run_single(tmp, args.cycles, kind=args.kind, writers=args.writers, seed=args.seed)
    except (AssertionError, TimeoutError) as e:
        print(f"FAILED: {e}\ndata and logs kept in {tmp}", file=sys.stderr)
        return 1
    print(report.summary())
    if not args.data_dir:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
