"""The `petcd` command: etcd's flags and ETCD_* environment variables (etcd's server/etcdmain).

    petcd [flags]                         run a member (no flags: like `etcd` with no flags)
    petcd snapshot restore FILE [flags]   restore a data directory from `etcdctl snapshot save`
    petcd --version                       etcd's version lines, then petcd's

Flags take etcd's names and forms (--name=x, --name x, -name x; bool flags alone or =true).
A flag also comes from the environment as ETCD_<NAME> (e.g. ETCD_DATA_DIR); a command-line flag
wins. A flag etcd does not know is an error; an etcd flag petcd does not implement is accepted
and reported as ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server import failpoint
from server.config import Config, ConfigError
from server.durations import parse_duration
from server.errors import EtcdError
from server.version import API_VERSION, PETCD_VERSION, SERVER_VERSION

__all__ = ["main", "parse_args", "parse_duration"]

log = logging.getLogger("petcd")


class UsageError(Exception):
    pass


def _urls(text: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in text.split(",") if u.strip())


def _bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "t", "true"):
        return True
    if t in ("0", "f", "false"):
        return False
    raise ValueError(f"invalid boolean value {text!r}")


@dataclass(frozen=True)
class Flag:
    name: str
    field: str | None  # Config field; None: accepted and ignored
    parse: Callable[[str], Any] = str
    is_bool: bool = False


def _ms(text: str) -> int:
    return int(text)


_FLAGS: list[Flag] = [
    Flag("name", "name"),
    Flag("data-dir", "data_dir"),
    Flag("wal-dir", "wal_dir"),
    Flag("listen-client-urls", "listen_client_urls", _urls),
    Flag("advertise-client-urls", "advertise_client_urls", _urls),
    Flag("listen-client-http-urls", "listen_client_http_urls", _urls),
    Flag("listen-peer-urls", "listen_peer_urls", _urls),
    Flag("initial-advertise-peer-urls", "initial_advertise_peer_urls", _urls),
    Flag("initial-cluster", "initial_cluster"),
    Flag("initial-cluster-state", "initial_cluster_state"),
    Flag("initial-cluster-token", "initial_cluster_token"),
    Flag("listen-metrics-urls", "listen_metrics_urls", _urls),
    Flag("snapshot-count", "snapshot_count", int),
    Flag("snapshot-catchup-entries", "snapshot_catchup_entries", int),
    Flag("experimental-snapshot-catchup-entries", "snapshot_catchup_entries", int),
    Flag("heartbeat-interval", "heartbeat_interval_ms", _ms),
    Flag("election-timeout", "election_timeout_ms", _ms),
    Flag("pre-vote", "pre_vote", _bool, True),
    Flag("max-learners", "max_learners", int),
    Flag("quota-backend-bytes", "quota_backend_bytes", int),
    Flag("max-txn-ops", "max_txn_ops", int),
    Flag("max-request-bytes", "max_request_bytes", int),
    Flag("auto-compaction-mode", "auto_compaction_mode"),
    Flag("auto-compaction-retention", "auto_compaction_retention"),
    Flag("compaction-batch-limit", "compaction_batch_limit", int),
    Flag("experimental-compaction-batch-limit", "compaction_batch_limit", int),
    Flag(
        "compaction-sleep-interval", "compaction_sleep_interval_ms", lambda t: int(parse_duration(t) * 1000)
    ),
    Flag(
        "experimental-compaction-sleep-interval",
        "compaction_sleep_interval_ms",
        lambda t: int(parse_duration(t) * 1000),
    ),
    Flag("watch-progress-notify-interval", "watch_progress_notify_interval_s", parse_duration),
    Flag("experimental-watch-progress-notify-interval", "watch_progress_notify_interval_s", parse_duration),
    Flag("unsafe-no-fsync", "unsafe_no_fsync", _bool, True),
    # petcd's own: front-end processes terminating gRPC on the client port (see server/embed/link.py)
    Flag("grpc-frontends", "grpc_frontends", int),
    Flag("grpc-server", "grpc_server"),
    # petcd's own: the fault-injection control surface (server/faults), off without it
    Flag("listen-faults-urls", "listen_faults_urls", _urls),
    Flag("cert-file", "cert_file"),
    Flag("key-file", "key_file"),
    Flag("trusted-ca-file", "trusted_ca_file"),
    Flag("client-cert-auth", "client_cert_auth", _bool, True),
    Flag("auto-tls", "auto_tls", _bool, True),
    Flag("peer-cert-file", "peer_cert_file"),
    Flag("peer-key-file", "peer_key_file"),
    Flag("peer-trusted-ca-file", "peer_trusted_ca_file"),
    Flag("peer-client-cert-auth", "peer_client_cert_auth", _bool, True),
    Flag("peer-auto-tls", "peer_auto_tls", _bool, True),
    Flag("cipher-suites", "cipher_suites", _urls),
    Flag("tls-min-version", "tls_min_version"),
    Flag("tls-max-version", "tls_max_version"),
    Flag("auth-token", "auth_token"),
    Flag("bcrypt-cost", "bcrypt_cost", int),
    Flag("auth-token-ttl", "auth_token_ttl", int),
    Flag("log-level", "log_level"),
    Flag("grpc-keepalive-min-time", "grpc_keepalive_min_time_s", parse_duration),
    Flag("grpc-keepalive-interval", "grpc_keepalive_interval_s", parse_duration),
    Flag("grpc-keepalive-timeout", "grpc_keepalive_timeout_s", parse_duration),
]

# etcd flags petcd accepts without acting on them
_IGNORED = [
    "max-snapshots", "max-wals", "backend-bbolt-freelist-type", "backend-batch-interval",
    "backend-batch-limit", "max-concurrent-streams", "socket-reuse-port", "socket-reuse-address",
    "raft-read-timeout", "raft-write-timeout", "feature-gates", "discovery", "discovery-token",
    "discovery-endpoints", "discovery-srv", "discovery-srv-name", "discovery-fallback",
    "discovery-proxy", "strict-reconfig-check", "v2-deprecation", "client-crl-file",
    "client-cert-allowed-hostname", "peer-cert-allowed-cn", "peer-cert-allowed-hostname",
    "peer-crl-file", "self-signed-cert-validity", "cors", "host-whitelist", "enable-pprof", "metrics",
    "logger", "log-outputs", "log-format", "enable-log-rotation", "log-rotation-config-json",
    "warning-unary-request-duration", "experimental-warning-unary-request-duration",
    "enable-distributed-tracing", "experimental-enable-distributed-tracing",
    "distributed-tracing-address", "experimental-distributed-tracing-address",
    "distributed-tracing-service-name", "experimental-distributed-tracing-service-name",
    "distributed-tracing-instance-id", "experimental-distributed-tracing-instance-id",
    "distributed-tracing-sampling-rate", "experimental-distributed-tracing-sampling-rate",
    "experimental-initial-corrupt-check", "experimental-corrupt-check-time", "corrupt-check-time",
    "experimental-compact-hash-check-enabled", "experimental-compact-hash-check-time",
    "compact-hash-check-time", "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist", "experimental-peer-skip-client-san-verification",
    "peer-skip-client-san-verification", "experimental-warning-apply-duration",
    "warning-apply-duration", "experimental-txn-mode-write-with-shared-buffer",
    "experimental-bootstrap-defrag-threshold-megabytes", "bootstrap-defrag-threshold-megabytes",
    "experimental-downgrade-check-time", "downgrade-check-time", "experimental-memory-mlock",
    "memory-mlock", "experimental-stop-grpc-service-on-defrag", "force-new-cluster",
    "initial-election-tick-advance", "enable-grpc-gateway", "client-cert-file", "client-key-file",
    "peer-client-cert-file", "peer-client-key-file", "discovery-dial-timeout",
    "discovery-request-timeout", "discovery-keepalive-time", "discovery-keepalive-timeout",
    "discovery-insecure-transport", "discovery-insecure-skip-tls-verify", "discovery-cert",
    "discovery-key", "discovery-cacert", "discovery-user", "discovery-password",
]  # fmt: skip
_BOOL_IGNORED = {
    "enable-pprof", "socket-reuse-port", "socket-reuse-address", "strict-reconfig-check",
    "experimental-initial-corrupt-check", "experimental-compact-hash-check-enabled",
    "experimental-enable-lease-checkpoint", "experimental-enable-lease-checkpoint-persist",
    "experimental-peer-skip-client-san-verification", "peer-skip-client-san-verification",
    "experimental-memory-mlock", "memory-mlock", "experimental-stop-grpc-service-on-defrag",
    "force-new-cluster", "initial-election-tick-advance", "enable-grpc-gateway",
    "enable-distributed-tracing", "experimental-enable-distributed-tracing", "enable-log-rotation",
    "experimental-txn-mode-write-with-shared-buffer", "discovery-insecure-transport",
    "discovery-insecure-skip-tls-verify",
}  # fmt: skip

FLAGS: dict[str, Flag] = {f.name: f for f in _FLAGS}
for _name in _IGNORED:
    FLAGS.setdefault(_name, Flag(_name, None, str, _name in _BOOL_IGNORED))


def parse_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> tuple[Config, list[str]]:
    """Config from flags and ETCD_* variables; also returns the names of ignored flags set."""
    values: dict[str, str] = {}
    env = os.environ if environ is None else environ
    for name in FLAGS:
        var = "ETCD_" + name.upper().replace("-", "_")
        if var in env:
            values[name] = env[var]
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UsageError(f"'{arg}' is not a valid flag")
        name, eq, value = arg.lstrip("-").partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if not eq:
            if flag.is_bool:
                value = "true"
            else:
                i += 1
                if i >= len(args):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args[i]
        values[name] = value
        i += 1
    fields: dict[str, Any] = {}
    ignored: list[str] = []
    for name, value in values.items():
        flag = FLAGS[name]
        if flag.field is None:
            ignored.append(name)
            continue
        try:
            fields[flag.field] = flag.parse(value)
        except ValueError as e:
            raise UsageError(f'invalid value "{value}" for flag -{name}: {e}') from e
    return Config(**fields), ignored


class _JSONFormatter(logging.Formatter):
    """One JSON object per line, like etcd's zap logger."""

    _SKIP = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "level": record.levelname.lower().replace("warning", "warn"),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "caller": f"{record.module}:{record.lineno}",
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._SKIP:
                doc[key] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(
        {"debug": logging.DEBUG, "warn": logging.WARNING, "error": logging.ERROR}.get(level, logging.INFO)
    )


async def _serve(cfg: Config) -> int:
    from server.embed.etcd import Etcd  # imported late: --help and --version stay fast

    e = Etcd(cfg)
    await e.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready to serve client requests", extra={"member": cfg.name, "data-dir": cfg.data_dir})
    signalled = asyncio.ensure_future(stop.wait())
    stopped = asyncio.ensure_future(e.wait_stopped())
    await asyncio.wait({signalled, stopped}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if stopped.done():
        reason = stopped.result()
        failed = "failed" in reason
        (log.error if failed else log.warning)("stopping", extra={"reason": reason})
        code = 1 if failed else 0
    else:
        stopped.cancel()
        log.info("received signal; shutting down")
    await e.stop()
    return code


def _usage() -> str:
    lines = [
        "Usage:",
        "",
        "  petcd [flags]",
        "  petcd snapshot restore <file> [--data-dir DIR ...]   (etcdutl snapshot restore)",
        "  petcd snapshot status <file> [-w simple|table|json|fields]",
        "",
        "Flags:",
    ]
    lines += [f"  --{f.name}" for f in _FLAGS]
    lines += ["", "Accepted and ignored (etcd flags petcd does not act on):", "  " + " ".join(_IGNORED)]
    return "\n".join(lines)


_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}


def version_text() -> str:
    """etcd's four lines first, for tools that read the first version they see (kwokctl,
    scripts), then petcd's own."""
    machine = platform.machine().lower()
    return "\n".join(
        [
            f"etcd Version: {SERVER_VERSION}",
            f"Git SHA: Not provided (petcd {PETCD_VERSION})",
            f"Go Version: none (petcd runs on Python {platform.python_version()})",
            f"Go OS/Arch: {sys.platform}/{_GOARCH.get(machine, machine)}",
            f"petcd Version: {PETCD_VERSION}",
            f"etcd API Version: {API_VERSION}",
        ]
    )


def _raise_open_files_limit() -> None:
    """Every client connection and watch stream holds a descriptor: lift the soft limit to the
    hard one, as the Go runtime does for etcd (the usual soft 1024 would refuse connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-version"]):
        print(version_text())
        return 0
    if args[:1] in (["--help"], ["-h"], ["-help"]):
        print(_usage())
        return 0
    if args[:1] == ["snapshot"]:
        from server.etcdutl import main as snapshot_main  # late import, as above

        return snapshot_main(args[1:])
    try:
        cfg, ignored = parse_args(args)
        cfg.validate()
    except (UsageError, ConfigError, ValueError) as e:
        print(f"petcd: {e}", file=sys.stderr)
        print("Try 'petcd --help' for the list of flags.", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    _raise_open_files_limit()
    for name in ignored:
        log.warning("flag accepted but not implemented by petcd; ignored", extra={"flag": name})
    try:  # etcd's failpoints: GOFAIL_FAILPOINTS, and GOFAIL_HTTP's endpoint (none without it)
        gofail = failpoint.serve(os.environ)
    except failpoint.FailpointError as e:
        print(f"petcd: GOFAIL_FAILPOINTS: fail to parse failpoint: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"petcd: GOFAIL_HTTP: {e}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(cfg))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a member that cannot start says why in one line, then exits
        # a refusal (bad --auth-token, damaged files) needs no traceback; a bug does
        refused = isinstance(e, EtcdError)
        log.error("cannot start", exc_info=not refused, extra={"error": str(e)} if refused else None)
        print(f"petcd: cannot start: {e}", file=sys.stderr)
        return 1
    finally:
        if gofail is not None:
            gofail.stop()


if __name__ == "__main__":
    sys.exit(main())
