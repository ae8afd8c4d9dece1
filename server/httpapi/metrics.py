"""/metrics: etcd's metric names, read from the server when scraped.

Each server has its own prometheus_client CollectorRegistry (several servers can live in one
process, as in tests) holding
  * EtcdCollector, which reads the server's state at scrape time: leadership, raft indexes,
    database and quota sizes, revisions, key count, identity and versions, the health
    endpoints' results, and the counters of a `stats` object on the server if it has one
    (see ServerStats: nothing is incremented on the hot path from here);
  * prometheus_client's ProcessCollector (process_cpu_seconds_total, process_open_fds, ...,
    the same names Go's process collector uses).

The exposition is written here rather than by prometheus_client.generate_latest so that it is
client_golang's text format: counters keep etcd's exact names (etcd_server_health_failures has
no _total), no _created samples, values formatted as Go does (20480, 2.147483648e+09), families
sorted by name.
"""

from __future__ import annotations

import contextlib
import decimal
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.etcdserver.server import EtcdServer
from server.httpapi.health import HealthStats
from server.version import SERVER_VERSION

__all__ = [
    "CONTENT_TYPE",
    "EtcdCollector",
    "ServerStats",
    "go_float",
    "new_registry",
    "render",
    "serve_metrics",
]

# what client_golang's promhttp answers a scraper that asks for nothing in particular
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"


@runtime_checkable
class ServerStats(Protocol):
    """Counters the server may keep as plain ints (e.g. `EtcdServer.stats`) for /metrics to read.

    leader_changes      etcd_server_leader_changes_seen_total: +1 when this member sees a new
                        leader (raft's SoftState.Lead changes to a non-zero ID)
    proposals_failed    etcd_server_proposals_failed_total: +1 when a proposal cannot be
                        appended to the log or times out waiting to be applied
    proposals_pending   etcd_server_proposals_pending: proposals appended and not yet applied
    mvcc_range / mvcc_put / mvcc_delete
                        etcd_mvcc_{range,put,delete}_total: +1 per Range / Put / DeleteRange
                        operation run by an MVCC read or write transaction (txn ops included)
    mvcc_txn            etcd_mvcc_txn_total: +1 when a transaction ends having run more than
                        one operation
    faults_injected     (optional) petcd_faults_injected_total{kind}: faults injected on
                        purpose (server/faults); only while the fault surface is on
    """

    leader_changes: int
    proposals_failed: int
    proposals_pending: int
    mvcc_range: int
    mvcc_put: int
    mvcc_delete: int
    mvcc_txn: int


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    m = Metric(name, doc, "gauge")
    m.add_sample(name, labels or {}, value)
    return m


def _counter(name: str, doc: str, value: float) -> Metric:
    m = Metric(name, doc, "counter")
    m.add_sample(name, {}, value)
    return m


def _live_keys(server: EtcdServer) -> int:
    """Keys alive at the current revision (etcd's keysGauge, kept by its index on put/tombstone)."""
    kv = server.kv
    return kv.index.count_revisions(b"", b"", kv.rev())


def _major_minor(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else version


class EtcdCollector(Collector):
    def __init__(self, server: EtcdServer, health: HealthStats) -> None:
        self._s = server
        self._health = health

    def collect(self) -> Iterable[Metric]:
        metrics = list(self._health_metrics())
        # before start the server's parts do not exist yet
        with contextlib.suppress(AttributeError):
            metrics.extend(self._server_metrics())
        return metrics

    def _server_metrics(self) -> Iterator[Metric]:
        s = self._s
        my_id = f"{s.member_id:x}"
        leader = s.leader_id
        me = s.cluster.member(s.member_id)
        stats = getattr(s, "stats", None)
        if not isinstance(stats, ServerStats):
            stats = None

        yield _gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            float(leader != 0),
        )
        yield _gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            float(leader != 0 and leader == s.member_id),
        )
        yield _gauge(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            float(me is not None and me.is_learner),
        )
        yield _counter(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            stats.leader_changes if stats is not None else float(leader != 0),
        )
        yield _gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            s.committed_index,
        )
        yield _gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            s.applied_index,
        )
        if stats is not None:
            yield _gauge(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
                stats.proposals_pending,
            )
            yield _counter(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
                stats.proposals_failed,
            )
            yield _counter(
                "etcd_mvcc_range_total", "Total number of ranges seen by this member.", stats.mvcc_range
            )
            yield _counter("etcd_mvcc_put_total", "Total number of puts seen by this member.", stats.mvcc_put)
            yield _counter(
                "etcd_mvcc_delete_total", "Total number of deletes seen by this member.", stats.mvcc_delete
            )
            yield _counter("etcd_mvcc_txn_total", "Total number of txns seen by this member.", stats.mvcc_txn)
            injected: dict[str, int] = getattr(stats, "faults_injected", {})
            if injected:
                faults = Metric(
                    "petcd_faults_injected_total", "Faults injected on purpose, by kind.", "counter"
                )
                for kind, n in sorted(injected.items()):
                    faults.add_sample("petcd_faults_injected_total", {"kind": kind}, n)
                yield faults
        yield _gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            s.quota.quota_bytes,
        )
        yield _gauge(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            1,
            {"server_id": my_id},
        )
        yield _gauge(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            1,
            {"server_version": SERVER_VERSION},
        )
        if s.cluster.version:
            yield _gauge(
                "etcd_cluster_version",
                "Which version is running. 1 for 'cluster_version' label with current cluster version",
                1,
                {"cluster_version": _major_minor(s.cluster.version)},
            )
        peers = Metric("etcd_network_known_peers", "The current number of known peers.", "gauge")
        for m in s.cluster.sorted_members():
            peers.add_sample("etcd_network_known_peers", {"Local": my_id, "Remote": f"{m.id:x}"}, 1)
        yield peers
        # the store may be closing under a late scrape: skip what cannot be read
        with contextlib.suppress(Exception):
            yield _gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                s.backend.size(),
            )
            yield _gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
                s.backend.size_in_use(),
            )
        yield _gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", s.kv.rev())
        yield _gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            s.kv.first_rev(),  # -1 before the first compaction, as etcd
        )
        yield _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", _live_keys(s))
        victims = sum(len(batch) for batch in s.kv.victims)
        slow = len(s.kv.unsynced) + victims
        yield _gauge(
            "etcd_debugging_mvcc_watcher_total", "Total number of watchers.", len(s.kv.synced) + slow
        )
        yield _gauge(
            "etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.", slow
        )

    def _health_metrics(self) -> Iterator[Metric]:
        h = self._health
        yield _counter(
            "etcd_server_health_success", "The total number of successful health checks", h.success
        )
        yield _counter("etcd_server_health_failures", "The total number of failed health checks", h.failures)
        if h.check:
            g = Metric("etcd_server_healthcheck", "The result of each kind of healthcheck.", "gauge")
            for (check_type, name), v in h.check.items():
                g.add_sample("etcd_server_healthcheck", {"type": check_type, "name": name}, v)
            yield g
        if h.checks_total:
            c = Metric(
                "etcd_server_healthchecks_total", "The total number of each kind of healthcheck.", "counter"
            )
            for (check_type, name, status), n in h.checks_total.items():
                c.add_sample(
                    "etcd_server_healthchecks_total", {"type": check_type, "name": name, "status": status}, n
                )
            yield c


def new_registry(server: EtcdServer, health: HealthStats) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(EtcdCollector(server, health))
    ProcessCollector(registry=registry)
    return registry


# -- client_golang's text format --------------------------------------------------------------------


def go_float(v: float) -> str:
    """A sample value as client_golang writes it (strconv 'g', shortest)."""
    if v == 0:
        return "0"
    if v == 1:
        return "1"
    if v == -1:
        return "-1"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    sign, digit_tuple, exponent = decimal.Decimal(repr(float(v))).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    dp = len(digits) + exponent  # position of the decimal point
    exp = dp - 1
    if exp < -4 or exp >= 6:  # %e when the exponent is < -4 or >= 6 (Go's rule for shortest %g)
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        text = f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    elif dp <= 0:
        text = "0." + "0" * (-dp) + digits
    elif dp >= len(digits):
        text = digits + "0" * (dp - len(digits))
    else:
        text = digits[:dp] + "." + digits[dp:]
    return ("-" if sign else "") + text


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def render(registry: CollectorRegistry) -> bytes:
    families: dict[str, tuple[str, str, list[tuple[str, dict[str, str], float]]]] = {}
    for metric in registry.collect():
        samples = [
            (s.name, dict(s.labels), float(s.value))
            for s in metric.samples
            if not s.name.endswith("_created")
        ]
        typ = {"unknown": "untyped", "info": "gauge", "stateset": "gauge"}.get(metric.type, metric.type)
        if metric.type == "counter":
            name = samples[0][0] if samples else metric.name + "_total"
        elif metric.type == "info":
            name = metric.name + "_info"
        else:
            name = metric.name
        if typ in ("gauge", "counter", "untyped"):
            samples.sort(key=lambda s: sorted(s[1].items()))
        families[name] = (metric.documentation, typ, samples)
    out: list[str] = []
    for name in sorted(families):
        doc, typ, samples = families[name]
        out.append(f"# HELP {name} {_escape_help(doc)}\n# TYPE {name} {typ}\n")
        for sname, labels, value in samples:
            if labels:
                pairs = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                out.append(f"{sname}{{{pairs}}} {go_float(value)}\n")
            else:
                out.append(f"{sname} {go_float(value)}\n")
    return "".join(out).encode()


def serve_metrics(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The /metrics handler (any method, like promhttp), gzipped when the scraper accepts it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression(web.ContentCoding.gzip)
        return resp

    return handler
