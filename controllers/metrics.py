"""Prometheus metrics of a controller, in a registry of its own (several controllers can live in
one process, e.g. in tests), served on an optional port (--metrics-port).

    petcd_controller_reconciles_total{controller,result}   result: success|requeue|error|dropped
    petcd_controller_conflicts_total{controller}           409 Conflict answers to writes
    petcd_controller_retries_total{controller,reason}      reason: conflict (retry_on_conflict
                                                            attempts), ratelimited (requeues),
                                                            watch|list (reconnects after errors),
                                                            ambiguous (a write's outcome unknown),
                                                            ambiguous_applied|ambiguous_not_applied
                                                            (how it was resolved), unresolved
    petcd_controller_relists_total{controller,resource,reason}
                                                            reason: initial|expired (410 Gone)|resume
    petcd_controller_watch_events_total{controller,resource,type}
    petcd_controller_reconcile_duration_seconds{controller}
    petcd_controller_workqueue_depth{controller}
    petcd_controller_writes_total{controller,kind}          successful writes (kind: status|create|update|delete)
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

NAMESPACE = "petcd_controller"


class Metrics:
    def __init__(self, controller: str, registry: CollectorRegistry | None = None) -> None:
        self.controller = controller
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "reconciles", "Reconciles by result.", ["controller", "result"], namespace=NAMESPACE, registry=r
        )
        self.conflicts = Counter(
            "conflicts", "409 Conflict answers to writes.", ["controller"], namespace=NAMESPACE, registry=r
        )
        self.retries = Counter(
            "retries", "Retries by reason.", ["controller", "reason"], namespace=NAMESPACE, registry=r
        )
        self.relists = Counter(
            "relists",
            "Full lists of a resource (initial, after 410 Gone, on resume).",
            ["controller", "resource", "reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.watch_events = Counter(
            "watch_events",
            "Watch events received, by type.",
            ["controller", "resource", "type"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.writes = Counter(
            "writes", "Successful writes by kind.", ["controller", "kind"], namespace=NAMESPACE, registry=r
        )
        self.reconcile_duration = Histogram(
            "reconcile_duration_seconds",
            "Time per reconcile.",
            ["controller"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.queue_depth = Gauge(
            "workqueue_depth",
            "Items waiting in the work queue.",
            ["controller"],
            namespace=NAMESPACE,
            registry=r,
        )
        self._server: Any = None
        self._lock = threading.Lock()

    # -- shortcuts with the controller label filled in -------------------------------------------

    def reconciled(self, result: str) -> None:
        self.reconciles.labels(self.controller, result).inc()

    def conflict(self) -> None:
        self.conflicts.labels(self.controller).inc()

    def retry(self, reason: str) -> None:
        self.retries.labels(self.controller, reason).inc()

    def relist(self, resource: str, reason: str) -> None:
        self.relists.labels(self.controller, resource, reason).inc()

    def watch_event(self, resource: str, type_: str) -> None:
        self.watch_events.labels(self.controller, resource, type_).inc()

    def wrote(self, kind: str) -> None:
        self.writes.labels(self.controller, kind).inc()

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named petcd_controller_<name> (e.g. "conflicts_total") whose
        labels include `labels`."""
        full = f"{NAMESPACE}_{name}"
        total = 0.0
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == full and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    # -- HTTP --------------------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics on port (0: a free one); returns the port."""
        with self._lock:
            if self._server is None:
                server, _thread = start_http_server(port, addr=addr, registry=self.registry)
                self._server = server
            return int(self._server.server_port)

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None
