"""Multi-member clusters as real processes: petcd or a real etcd v3.6, on free loopback ports.

    with Cluster("petcd", 3, tmp_path) as c:            # or Cluster("etcd", ...)
        c.endpoints                                      # "http://127.0.0.1:a,http://...:b,..."
        leader = c.wait_leader()
        leader.kill(); c.wait_leader(among=c.others(leader)); leader.start()
        new = c.add_member("m3", learner=True)           # etcdctl member add + start it
        c.wait_converged()                               # same applied index and hashkv everywhere

With proxied=True every member advertises a proxy port as its peer URL and c.net (a
petcd_harness.proxy.PeerNetwork) cuts and heals links: c.net.isolate(leader.name).

Usable by people: `python -m petcd_harness.raft_cluster up --size 3 [--kind etcd] [--proxied]`
starts a cluster and prints its endpoints until interrupted.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from petcd_harness.etcdctl import Etcdctl
from petcd_harness.paths import peer, petcd_command
from petcd_harness.procs import Member, free_port, spawn, wait_ready
from petcd_harness.proxy import PeerNetwork
from petcd_harness.wait import wait_until

__all__ = ["FAST_ELECTIONS", "Cluster", "ClusterMember"]

# short raft timings: elections in well under a second
FAST_ELECTIONS = ("--heartbeat-interval=50", "--election-timeout=500")
TOKEN = "petcd-test-cluster"

T = TypeVar("T")


def _pb() -> tuple[Any, Any]:
    from server.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    return rpc_pb2, rpc_pb2_grpc


@dataclass(eq=False)
class ClusterMember(Member):
    """One member of a Cluster: kill() is kill -9, stop() SIGTERM, start() (re)starts it on the
    same data directory with the same flags."""

    initial_cluster: str = ""
    cluster_state: str = "new"
    token: str = TOKEN
    advertise_peer_port: int = 0
    member_id: int = 0
    _channel: grpc.Channel | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{self.kind} member {self.name} {self.hex_id} {self.client_url} {state}>"

    @property
    def advertise_peer_url(self) -> str:
        return f"http://127.0.0.1:{self.advertise_peer_port or self.peer_port}"

    @property
    def hex_id(self) -> str:
        return f"{self.member_id:x}"

    def command(self) -> list[str]:
        exe = petcd_command() if self.kind == "petcd" else [peer("etcd")]
        flags = [
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.advertise_peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-state={self.cluster_state}",
            f"--initial-cluster-token={self.token}",
        ]
        return [*exe, *flags, *self.extra]

    def spawn(self) -> ClusterMember:
        """Start the process without waiting for it to serve (a member of a new cluster only
        serves once a quorum is up)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.close_channel()
        self.log_path = self.data_dir.parent / f"{self.kind}-{self.name}.log"
        self.proc = spawn(self.command(), self.log_path, self.env, self.supervised)
        if self.on_spawn is not None:
            self.on_spawn(self)
        return self

    def wait_ready(self, timeout: float = 30.0) -> ClusterMember:
        wait_ready(self.client_url, timeout, self.proc, self.log_path)
        if not self.member_id:
            self.member_id = int(self.status(timeout=5).header.member_id)
        return self

    def start(self, timeout: float = 30.0) -> ClusterMember:
        return self.spawn().wait_ready(timeout)

    def kill(self) -> None:
        self.close_channel()
        super().kill()

    def stop(self, timeout: float = 10.0) -> None:
        self.close_channel()
        super().stop(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit on its own (a removed member does); its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    # -- gRPC ---------------------------------------------------------------------------------

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.client_port}")
        return self._channel

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def kv(self) -> Any:
        return _pb()[1].KVStub(self.channel)

    def maintenance(self) -> Any:
        return _pb()[1].MaintenanceStub(self.channel)

    def status(self, timeout: float = 2.0) -> Any:
        pb, _ = _pb()
        return self.maintenance().Status(pb.StatusRequest(), timeout=timeout)

    def put(self, key: str | bytes, value: str | bytes, timeout: float = 5.0) -> int:
        """A put on this member; the revision it created."""
        pb, _ = _pb()
        k = key.encode() if isinstance(key, str) else key
        v = value.encode() if isinstance(value, str) else value
        return int(self.kv().Put(pb.PutRequest(key=k, value=v), timeout=timeout).header.revision)

    def get(self, key: str | bytes, serializable: bool = False, timeout: float = 5.0) -> Any:
        """The RangeResponse of a single-key get on this member."""
        pb, _ = _pb()
        k = key.encode() if isinstance(key, str) else key
        return self.kv().Range(pb.RangeRequest(key=k, serializable=serializable), timeout=timeout)

    def get_prefix(self, prefix: str | bytes, serializable: bool = False, timeout: float = 10.0) -> Any:
        pb, _ = _pb()
        p = prefix.encode() if isinstance(prefix, str) else prefix
        end = p[:-1] + bytes([p[-1] + 1])
        return self.kv().Range(
            pb.RangeRequest(key=p, range_end=end, serializable=serializable), timeout=timeout
        )

    def hashkv(self, revision: int = 0, timeout: float = 10.0) -> Any:
        pb, _ = _pb()
        return self.maintenance().HashKV(pb.HashKVRequest(revision=revision), timeout=timeout)

    def ctl(self) -> Etcdctl:
        return Etcdctl(self.client_url)


class Cluster:
    def __init__(
        self,
        kind: str = "petcd",
        size: int = 3,
        tmp_path: Path | None = None,
        extra_flags: Sequence[str] = FAST_ELECTIONS,
        proxied: bool = False,
        token: str = TOKEN,
        supervised: bool = False,
        on_spawn: Callable[[Member], None] | None = None,
    ) -> None:
        """supervised and on_spawn are passed to every member (see procs.Member)."""
        if tmp_path is None:
            raise ValueError("tmp_path is required")
        self.kind = kind
        self.size = size
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = tuple(extra_flags)
        self.proxied = proxied
        self.token = token
        self.supervised = supervised
        self.on_spawn = on_spawn
        self.net = PeerNetwork() if proxied else None
        self.members: list[ClusterMember] = []
        for i in range(size):
            self.members.append(self._new_member(f"m{i}"))
        spec = ",".join(f"{m.name}={m.advertise_peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = spec

    def _new_member(self, name: str) -> ClusterMember:
        return ClusterMember(
            self.kind,
            self.dir / f"{name}.etcd",
            name=name,
            extra=self.extra,
            token=self.token,
            advertise_peer_port=free_port() if self.proxied else 0,
            supervised=self.supervised,
            on_spawn=self._spawned,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Cluster:
        if self.net is not None:
            self.net.start()
            for m in self.members:
                self.net.add_route(m.name, m.advertise_peer_port, m.peer_port)
        for m in self.members:
            m.spawn()
        deadline = time.monotonic() + timeout
        for m in self.members:
            m.wait_ready(max(1.0, deadline - time.monotonic()))
            if self.net is not None:
                self.net.register_id(m.member_id, m.name)
        self.wait_leader(timeout=max(1.0, deadline - time.monotonic()))
        return self

    def _spawned(self, m: Member) -> None:
        if self.net is not None and m.proc is not None:
            self.net.register_pid(m.proc.pid, m.name)
        if self.on_spawn is not None:
            self.on_spawn(m)

    def stop(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.stop()
        if self.net is not None:
            self.net.stop()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- members ------------------------------------------------------------------------------

    def member(self, i: int | str) -> ClusterMember:
        if isinstance(i, int):
            return self.members[i]
        return next(m for m in self.members if m.name == i)

    def by_id(self, member_id: int) -> ClusterMember | None:
        return next((m for m in self.members if m.member_id == member_id), None)

    @property
    def running(self) -> list[ClusterMember]:
        return [m for m in self.members if m.running]

    def others(self, *excluded: ClusterMember) -> list[ClusterMember]:
        return [m for m in self.running if m not in excluded]

    @property
    def endpoints(self) -> str:
        """The client URLs of the running members, comma-separated (etcdctl --endpoints)."""
        return ",".join(m.client_url for m in self.running)

    def ctl(self, *members: ClusterMember) -> Etcdctl:
        """etcdctl against the given members (default: every running member)."""
        return Etcdctl(",".join(m.client_url for m in members) if members else self.endpoints)

    def logs(self) -> str:
        return "\n".join(f"===== {m.name} ({m.hex_id})\n{m.log()[-20000:]}" for m in self.members)

    # -- raft state ---------------------------------------------------------------------------

    def statuses(self, among: Iterable[ClusterMember] | None = None, timeout: float = 1.0) -> dict[str, Any]:
        """name -> StatusResponse of each member that answers."""
        out: dict[str, Any] = {}
        for m in among if among is not None else self.running:
            with contextlib.suppress(grpc.RpcError):
                out[m.name] = m.status(timeout)
        return out

    def leader(self, among: Iterable[ClusterMember] | None = None) -> ClusterMember | None:
        """The member every answering member of `among` (default: the running ones) names as
        leader, provided the leader itself is among them and claims it; None otherwise."""
        group = list(among) if among is not None else self.running
        st = self.statuses(group)
        if len(st) < len(group):
            return None
        leaders = {s.leader for s in st.values()}
        if len(leaders) != 1:
            return None
        lid = leaders.pop()
        m = self.by_id(lid)
        if m is None or m not in group or st[m.name].header.member_id != lid:
            return None
        return m

    def wait_leader(
        self, among: Iterable[ClusterMember] | None = None, timeout: float = 30.0
    ) -> ClusterMember:
        group = list(among) if among is not None else None
        return wait_until(lambda: self.leader(group), timeout, what="an agreed leader")

    def followers(self) -> list[ClusterMember]:
        lead = self.wait_leader()
        return [m for m in self.running if m is not lead]

    def wait_applied(
        self, among: Iterable[ClusterMember] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Until the members have applied the same raft index (and agree on leader and term)."""

        def same() -> dict[str, Any] | None:
            group = list(among) if among is not None else self.running
            st = self.statuses(group)
            if len(st) != len(group):
                return None
            keys = {(s.raftAppliedIndex, s.raftTerm, s.leader) for s in st.values()}
            if len(keys) == 1 and next(iter(keys))[2] != 0:
                return st
            return None

        return wait_until(same, timeout, what="equal applied indexes")

    def hashes(
        self, revision: int, among: Iterable[ClusterMember] | None = None
    ) -> dict[str, tuple[int, int]]:
        """name -> (hash, compact revision) of HashKV at revision."""
        out = {}
        for m in among if among is not None else self.running:
            r = m.hashkv(revision)
            out[m.name] = (int(r.hash), int(r.compact_revision))
        return out

    def wait_converged(
        self, among: Iterable[ClusterMember] | None = None, timeout: float = 60.0
    ) -> tuple[int, dict[str, tuple[int, int]]]:
        """Until the members have the same applied index and the same HashKV at the current
        revision; returns (revision, hashes)."""
        group = list(among) if among is not None else self.running
        deadline = time.monotonic() + timeout

        def same() -> tuple[int, dict[str, tuple[int, int]]] | None:
            self.wait_applied(group, timeout=max(0.5, deadline - time.monotonic()))
            rev = int(group[0].get("petcd-cluster-probe", serializable=True).header.revision)
            hashes = self.hashes(rev, group)
            return (rev, hashes) if len(set(hashes.values())) == 1 else None

        return wait_until(same, timeout, interval=0.2, what="equal hashkv on every member")

    def settle_for_reconfig(self, timeout: float = 30.0) -> None:
        """Wait until the strict reconfiguration check passes (every voter connected for 5 s,
        in etcd and in petcd), so that a membership change meets a healthy cluster. The probe
        adds a member with an existing peer URL: refused either way, with "unhealthy cluster"
        until the check passes, "Peer URLs already exists" after. Each member checks its own
        connections, so every running member is asked: the change may reach any of them."""
        probe = ("member", "add", "reconfig-probe", f"--peer-urls={self.running[0].advertise_peer_url}")
        wait_until(
            lambda: all(
                self.ctl(m)(*probe).error_line == "Error: etcdserver: Peer URLs already exists"
                for m in self.running
            ),
            timeout,
            interval=0.25,
            what="every member accepting membership changes",
        )

    # -- membership ---------------------------------------------------------------------------

    def add_member(self, name: str, learner: bool = False, start: bool = True) -> ClusterMember:
        """`etcdctl member add` a new member, then (start=True) start it with
        --initial-cluster-state existing and the --initial-cluster etcdctl printed."""
        m = self._new_member(name)
        if self.net is not None:
            self.net.add_route(m.name, m.advertise_peer_port, m.peer_port)
        args = ["member", "add", name, f"--peer-urls={m.advertise_peer_url}"]
        if learner:
            args.append("--learner")
        out = self.ctl().ok(*args)
        found = re.search(r"Member\s+([0-9a-f]+) added (?:as learner )?to cluster", out)
        spec = re.search(r'ETCD_INITIAL_CLUSTER="([^"]*)"', out)
        if not found or not spec:
            raise AssertionError(f"unexpected `member add` output:\n{out}")
        m.member_id = int(found.group(1), 16)
        m.initial_cluster = spec.group(1)
        m.cluster_state = "existing"
        self.members.append(m)
        if self.net is not None:
            self.net.register_id(m.member_id, m.name)
        if start:
            m.start()
        return m

    def remove_member(self, m: ClusterMember) -> str:
        others = [x for x in self.running if x is not m] or self.running
        return self.ctl(*others).ok("member", "remove", m.hex_id)

    def forget(self, m: ClusterMember) -> None:
        """Drop a (removed, stopped) member from this handle."""
        m.kill()
        self.members.remove(m)
        if self.net is not None:
            self.net.remove_route(m.name)


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import signal
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m petcd_harness.raft_cluster")
    ap.add_argument("command", choices=["up"])
    ap.add_argument("--size", type=int, default=3)
    ap.add_argument("--kind", choices=["petcd", "etcd"], default="petcd")
    ap.add_argument("--proxied", action="store_true", help="route peer traffic through a partitionable proxy")
    ap.add_argument("--data-dir", help="keep the data here (default: a temporary directory)")
    ap.add_argument("flags", nargs="*", help="extra member flags (after --)")
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        d = args.data_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="petcd-cluster-"))
        Path(d).mkdir(parents=True, exist_ok=True)
        c = stack.enter_context(
            Cluster(args.kind, args.size, Path(d), (*FAST_ELECTIONS, *args.flags), args.proxied)
        )
        print(f"ENDPOINTS={c.endpoints}", flush=True)
        for m in c.members:
            print(
                f"{m.name} id={m.hex_id} client={m.client_url} peer={m.advertise_peer_url} log={m.log_path}"
            )
        print(f"leader: {c.wait_leader().name}; data in {d}; Ctrl-C stops the cluster", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main())
