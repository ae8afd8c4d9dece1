"""The datastore under kube-apiserver: petcd or a real etcd v3.6, one member or a Raft cluster,
plain or mutual TLS.

    with Datastore("petcd", members=3, dir=tmp / "ds", tls=True) as ds:
        ds.endpoints                     # "https://127.0.0.1:a,https://127.0.0.1:b,..."
        ds.ctl().ok("get", "/registry/", "--prefix", "--keys-only")   # the real etcdctl
        ds.mod_revision("/registry/namespaces/default")
        ds.cluster.wait_leader().kill()  # members=3: the Raft cluster (raft_cluster.Cluster)
        ds.faults().conflicts("configmaps", n=3)      # faults=True (petcd): petcd_harness.faults

A member that exits or is not ready at start is a ComponentFailed naming it and its log.
With faults=True each petcd member serves its fault surface (--listen-faults-urls) on a port of
its own, https:// with the datastore's client certificate under TLS.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from petcd_harness.certs import PKI, make_pki
from petcd_harness.errors import ComponentFailed, HarnessError
from petcd_harness.etcdctl import Etcdctl
from petcd_harness.faults import Faults, tls_context
from petcd_harness.procs import Member, free_port, wait_ready
from petcd_harness.raft_cluster import FAST_ELECTIONS, Cluster, ClusterMember

__all__ = ["Datastore", "wait_ready_tls"]


def _secure_channel(target: str, pki: PKI) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    return grpc.secure_channel(target, creds)


def wait_ready_tls(
    url: str,
    pki: PKI,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until the TLS member at url answers Maintenance.Status over an mTLS channel."""
    wait_ready(url, timeout, proc, log_path, connect=lambda target: _secure_channel(target, pki))


@dataclass(eq=False)
class TLSMember(Member):
    """A single member serving clients on https:// with client-certificate authentication."""

    pki: PKI | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        assert self.pki is not None
        return [*super().command(), *self.pki.etcd_server_flags()]

    def wait_ready(self, timeout: float = 30.0) -> TLSMember:
        assert self.pki is not None
        wait_ready_tls(self.client_url, self.pki, timeout, self.proc, self.log_path)
        return self


@dataclass(eq=False)
class TLSClusterMember(ClusterMember):
    pki: PKI | None = None

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        assert self.pki is not None
        return [*super().command(), *self.pki.etcd_server_flags()]

    def wait_ready(self, timeout: float = 30.0) -> TLSClusterMember:
        assert self.pki is not None
        wait_ready_tls(self.client_url, self.pki, timeout, self.proc, self.log_path)
        if not self.member_id:
            self.member_id = int(self.status(timeout=5).header.member_id)
        return self

    @property
    def channel(self) -> grpc.Channel:
        assert self.pki is not None
        if self._channel is None:
            self._channel = _secure_channel(f"127.0.0.1:{self.client_port}", self.pki)
        return self._channel

    def ctl(self) -> Etcdctl:
        assert self.pki is not None
        return Etcdctl(self.client_url, env=self.pki.etcdctl_env())


class TLSCluster(Cluster):
    """A Cluster whose members serve clients over mutual TLS with one PKI."""

    def __init__(self, pki: PKI, *args: Any, **kw: Any) -> None:
        self.pki = pki
        super().__init__(*args, **kw)

    def _new_member(self, name: str) -> ClusterMember:
        m = super()._new_member(name)
        return TLSClusterMember(**{f: getattr(m, f) for f in m.__dataclass_fields__}, pki=self.pki)

    def ctl(self, *members: ClusterMember) -> Etcdctl:
        eps = ",".join(m.client_url for m in members) if members else self.endpoints
        return Etcdctl(eps, env=self.pki.etcdctl_env())


class Datastore:
    """petcd or a real etcd v3.6 for kube-apiserver: one member or a cluster of `members`,
    plain HTTP or TLS with client-certificate authentication (tls=True, or a PKI). supervised
    and on_spawn are passed to the members (see procs.Member)."""

    def __init__(
        self,
        kind: str = "petcd",
        members: int = 1,
        dir: Path | None = None,
        tls: bool | PKI = False,
        extra: Sequence[str] = (),
        supervised: bool = False,
        on_spawn: Callable[[Member], None] | None = None,
        faults: bool = False,
    ) -> None:
        if kind not in ("petcd", "etcd"):
            raise ValueError(f"unknown datastore {kind!r}")
        if dir is None:
            raise ValueError("dir is required")
        self.kind = kind
        self.size = members
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki: PKI | None = tls if isinstance(tls, PKI) else (make_pki(self.dir / "pki") if tls else None)
        self.extra = tuple(extra)
        self.supervised = supervised
        self.on_spawn = on_spawn
        self.member: Member | None = None
        self.cluster: Cluster | None = None
        # petcd's fault surfaces, one per member (a real etcd has none)
        self.with_faults = faults and kind == "petcd"
        self.fault_urls: list[str] = []

    @property
    def tls(self) -> bool:
        return self.pki is not None

    def start(self, timeout: float = 60.0) -> Datastore:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        opts: dict[str, Any] = {"supervised": self.supervised, "on_spawn": self.on_spawn}
        if self.size == 1:
            data = self.dir / f"{self.kind}.etcd"
            self.member = (
                TLSMember(self.kind, data, extra=self.extra, pki=self.pki, **opts)
                if self.pki is not None
                else Member(self.kind, data, extra=self.extra, **opts)
            )
            members: list[Member] = [self.member]
        else:
            flags = (*FAST_ELECTIONS, *self.extra)
            if self.pki is not None:
                self.cluster = TLSCluster(self.pki, self.kind, self.size, self.dir, flags, **opts)
            else:
                self.cluster = Cluster(self.kind, self.size, self.dir, flags, **opts)
            members = list(self.cluster.members)
        if self.with_faults:
            scheme = "https" if self.pki is not None else "http"
            self.fault_urls = [f"{scheme}://127.0.0.1:{free_port()}" for _ in members]
            for m, url in zip(members, self.fault_urls, strict=True):
                m.extra = (*m.extra, f"--listen-faults-urls={url}")
        try:
            if self.member is not None:
                self.member.start(timeout)
            else:
                assert self.cluster is not None
                self.cluster.start(timeout)
        except (RuntimeError, TimeoutError) as e:
            # one line naming the member and its log (the exception keeps the details)
            for m in members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise ComponentFailed(
                        f"{self.kind} {m.name}", m.log_path, m.proc.returncode, "at start"
                    ) from e
            m = members[0]
            raise ComponentFailed(
                f"{self.kind} {m.name}", m.log_path, None, f"was not ready after {timeout:.0f}s"
            ) from e

    def stop(self) -> None:
        if self.member is not None:
            self.member.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def __enter__(self) -> Datastore:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def members(self) -> list[Member]:
        if self.member is not None:
            return [self.member]
        return list(self.cluster.members) if self.cluster is not None else []

    @property
    def urls(self) -> list[str]:
        """The client URL of every member, running or not."""
        return [m.client_url for m in self.members]

    @property
    def endpoints(self) -> str:
        """Comma-separated client URLs (all members, running or not: the apiserver's list)."""
        return ",".join(self.urls)

    def ctl(self) -> Etcdctl:
        """The real etcdctl against the running members (with the client certificate under TLS)."""
        eps = self.cluster.endpoints if self.cluster is not None else self.endpoints
        return Etcdctl(eps, env=self.pki.etcdctl_env() if self.pki else None)

    def faults(self, discover: Callable[[str], list[str]] | None = None) -> Faults:
        """The members' fault surfaces (petcd_harness.faults.Faults)."""
        if not self.fault_urls:
            raise HarnessError(
                "this datastore has no fault surface: faults need petcd started with faults=True"
                if self.kind == "petcd"
                else "faults need the petcd datastore (a real etcd has no fault surface)"
            )
        ssl_ctx = None
        if self.pki is not None:
            ssl_ctx = tls_context(str(self.pki.ca), str(self.pki.client_cert), str(self.pki.client_key))
        return Faults(self.fault_urls, ssl_context=ssl_ctx, discover=discover)

    def logs(self) -> str:
        if self.member is not None:
            return self.member.log()[-20000:]
        assert self.cluster is not None
        return self.cluster.logs()

    # -- reads through etcdctl ------------------------------------------------------------------

    def get_json(self, key: str, *args: str) -> dict[str, Any]:
        """`etcdctl get -w json KEY ...`, with keys and values base64-decoded into str/bytes."""
        out: dict[str, Any] = json.loads(self.ctl().ok("get", key, *args, "-w", "json"))
        for kv in out.get("kvs", []):
            kv["key"] = base64.b64decode(kv["key"]).decode(errors="replace")
            kv["value"] = base64.b64decode(kv.get("value", ""))
        return out

    def revision(self) -> int:
        return int(self.get_json("/petcd-probe")["header"]["revision"])

    def mod_revision(self, key: str) -> int | None:
        kvs = self.get_json(key).get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else None

    def compact_rev_key(self) -> tuple[int, int] | None:
        """(stored compaction revision, version) of the apiserver's compact_rev_key."""
        kvs = self.get_json("compact_rev_key").get("kvs", [])
        return (int(kvs[0]["value"]), int(kvs[0].get("version", 0))) if kvs else None

    def compacted_revision(self) -> int:
        """The datastore's compaction revision (from HashKV, which reports it)."""
        st = json.loads(self.ctl().ok("endpoint", "hashkv", "-w", "json"))
        return int(st[0]["HashKV"].get("compact_revision", 0))
