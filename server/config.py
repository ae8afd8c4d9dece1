"""A member's configuration: etcd's flags as one immutable value (etcd's server/embed/config.go
and server/config). It sits below everything that reads it: embed builds it, etcdserver, v3rpc
and httpapi take it.

Defaults are etcd's, so `petcd` with no flags behaves like `etcd` with no flags: member
`default`, data in `./default.etcd`, clients on http://localhost:2379, peers on :2380.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from server.durations import parse_duration
from server.urls import parse_initial_cluster

__all__ = ["Config", "ConfigError", "parse_retention"]

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
GRPC_OVERHEAD_BYTES = 512 * 1024
GRPC_SERVERS = ("native", "grpcio")


class ConfigError(ValueError):
    """An invalid flag value or combination."""


def parse_retention(mode: str, retention: str) -> float:
    """--auto-compaction-retention: seconds (periodic) or revisions (revision) to retain; 0 when
    disabled. A bare number is hours in periodic mode."""
    retention = retention.strip() or "0"
    if mode == "revision":
        return float(int(retention))
    if re.fullmatch(r"\d+", retention):
        return float(int(retention)) * 3600
    return parse_duration(retention)


@dataclass(frozen=True)
class Config:
    name: str = "default"
    data_dir: str = ""
    wal_dir: str = ""
    listen_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    advertise_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    listen_client_http_urls: tuple[str, ...] = ()
    listen_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    initial_advertise_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    listen_metrics_urls: tuple[str, ...] = ()

    snapshot_count: int = 10_000
    snapshot_catchup_entries: int = 5_000
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    pre_vote: bool = True
    max_learners: int = 1

    quota_backend_bytes: int = 0
    max_txn_ops: int = 128
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    compaction_batch_limit: int = 1000
    compaction_sleep_interval_ms: int = 10
    watch_progress_notify_interval_s: float = 600.0
    unsafe_no_fsync: bool = False
    # petcd only: gRPC front-end processes sharing the client port (0: serve gRPC in-process)
    grpc_frontends: int = 0
    # petcd only: the gRPC server of http:// client URLs, "native" (BidiFront, Rust) or "grpcio";
    # https:// URLs are always grpcio's (server/embed/grpc_server.py says why)
    grpc_server: str = "native"
    # petcd only: where the fault-injection control surface listens (none: it does not exist)
    listen_faults_urls: tuple[str, ...] = ()

    # transport security (client and peer)
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    auto_tls: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    peer_auto_tls: bool = False
    cipher_suites: tuple[str, ...] = ()
    tls_min_version: str = "TLS1.2"
    tls_max_version: str = ""

    # auth
    auth_token: str = "simple"
    bcrypt_cost: int = 10
    auth_token_ttl: int = 300

    log_level: str = "info"
    grpc_keepalive_min_time_s: float = 5.0
    grpc_keepalive_interval_s: float = 7200.0
    grpc_keepalive_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if not self.data_dir:
            object.__setattr__(self, "data_dir", f"{self.name}.etcd")
        if not self.initial_cluster:
            urls = ",".join(f"{self.name}={u}" for u in self.initial_advertise_peer_urls)
            object.__setattr__(self, "initial_cluster", urls)

    def validate(self) -> None:
        if self.grpc_server not in GRPC_SERVERS:
            raise ConfigError(
                f"--grpc-server must be one of {', '.join(GRPC_SERVERS)}, not {self.grpc_server!r}"
            )
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms:
            raise ConfigError(
                f"--election-timeout[{self.election_timeout_ms}ms] should be at least as 5 times as "
                f"--heartbeat-interval[{self.heartbeat_interval_ms}ms]"
            )
        if self.initial_cluster_state not in ("new", "existing"):
            raise ConfigError(f"invalid --initial-cluster-state {self.initial_cluster_state!r}")
        if self.auto_compaction_mode not in ("periodic", "revision"):
            raise ConfigError(f"unknown auto-compaction-mode {self.auto_compaction_mode!r}")
        try:
            parse_retention(self.auto_compaction_mode, self.auto_compaction_retention)
        except ValueError as e:
            raise ConfigError(
                f"invalid auto-compaction-retention {self.auto_compaction_retention!r}: {e}"
            ) from e
        if self.max_request_bytes <= 0:
            raise ConfigError("--max-request-bytes must be positive")
        self._validate_faults_urls()
        peers = parse_initial_cluster(self.initial_cluster)
        if self.name not in peers:
            raise ConfigError(f"couldn't find local name {self.name!r} in the initial cluster configuration")
        if sorted(peers[self.name]) != sorted(self.initial_advertise_peer_urls):
            raise ConfigError(
                f"--initial-cluster has {self.name}={','.join(peers[self.name])} but missing from "
                f"--initial-advertise-peer-urls={','.join(self.initial_advertise_peer_urls)}"
            )

    def _validate_faults_urls(self) -> None:
        """The fault surface has a listener of its own, never a client or peer one, and with
        client certificate authentication only https://, where the client CA verifies callers."""
        taken: dict[int, str] = {}
        for flag, urls in (
            ("--listen-client-urls", self.listen_client_urls),
            ("--listen-client-http-urls", self.listen_client_http_urls),
            ("--listen-peer-urls", self.listen_peer_urls),
            ("--listen-metrics-urls", self.listen_metrics_urls),
        ):
            for url in urls:
                u = urlsplit(url)
                if u.port:
                    taken[u.port] = flag
        for url in self.listen_faults_urls:
            u = urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname or u.port is None:
                raise ConfigError(
                    f"--listen-faults-urls: {url!r} is not an http:// or https:// URL with a port"
                )
            clash = taken.get(u.port) if u.port else None
            if clash is not None:
                raise ConfigError(f"--listen-faults-urls: {url!r} is a port of {clash}; it needs its own")
            if self.client_cert_auth and u.scheme != "https":
                raise ConfigError(
                    f"--listen-faults-urls: {url!r} must be https:// with --client-cert-auth "
                    "(callers are verified by --trusted-ca-file)"
                )

    def with_(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- derived values -------------------------------------------------------------------------

    @property
    def member_dir(self) -> str:
        return f"{self.data_dir}/member"

    @property
    def backend_path(self) -> str:
        return f"{self.member_dir}/snap/db"

    @property
    def wal_path(self) -> str:
        return self.wal_dir or f"{self.member_dir}/wal"

    @property
    def snap_dir(self) -> str:
        return f"{self.member_dir}/snap"

    @property
    def election_ticks(self) -> int:
        return self.election_timeout_ms // self.heartbeat_interval_ms

    @property
    def min_lease_ttl(self) -> int:
        """etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds."""
        min_ttl_ms = (3 * self.election_ticks) // 2 * self.heartbeat_interval_ms
        return -(-min_ttl_ms // 1000)

    @property
    def max_recv_bytes(self) -> int:
        return self.max_request_bytes + GRPC_OVERHEAD_BYTES
