"""The controller runtime: informers feed keys into a work queue, N worker threads reconcile
them, errors requeue with client-go's rate limiting, SIGTERM/SIGINT stop everything gracefully.

    ctl = Controller("counter", kube, reconcile, workers=4)
    ctl.watch(COUNTERS)                 # informer → enqueue namespace/name on every event
    ctl.run_until_signal()              # or start() / stop() from a test

How a reconcile's outcome is handled (the work item is a key "namespace/name"):

- returns None or Result():          done; the key's failure count is reset (forget)
- Result(requeue_after=s):           reconcile again in s seconds
- Result(requeue=True):              requeue rate-limited (exponential per key)
- raises 404 Not Found:              the object is gone: dropped (logged, no retry)
- raises 409 Conflict:               requeue rate-limited (retry_on_conflict inside gave up)
- raises 429/5xx/connection error:   requeue rate-limited (the apiserver is unavailable)
- raises anything else:              logged with the traceback, requeue rate-limited

Graceful shutdown: informers stop (their watch sockets are closed), the queue shuts down,
workers finish the reconcile they are in (up to --shutdown-grace seconds) and drop what is
still queued, the resume checkpoint is saved, the metrics server stops.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controllers import log as logs
from controllers.checkpoint import Checkpointer, CheckpointStore, ConfigMapCheckpoint, FileCheckpoint
from controllers.informer import Handler, Indexer, Informer
from controllers.kubeclient import Kube, Obj, Resource, key_of, load_api_client
from controllers.metrics import Metrics
from controllers.retry import ExponentialBackoff, describe, is_conflict, is_not_found, is_transient
from controllers.workqueue import RateLimiter, WorkQueue, default_controller_rate_limiter


@dataclass(frozen=True)
class Result:
    requeue: bool = False
    requeue_after: float | None = None


Reconcile = Callable[[str], "Result | None"]


class Controller:
    def __init__(
        self,
        name: str,
        kube: Kube,
        reconcile: Reconcile,
        workers: int = 2,
        metrics: Metrics | None = None,
        rate_limiter: RateLimiter | None = None,
        checkpointer: Checkpointer | None = None,
        watch_timeout: int = 300,
        shutdown_grace: float = 10.0,
    ) -> None:
        self.name = name
        self.kube = kube
        self.reconcile = reconcile
        self.workers = workers
        self.metrics = metrics or Metrics(name)
        depth = self.metrics.queue_depth.labels(name)
        self.queue: WorkQueue[str] = WorkQueue(
            rate_limiter or default_controller_rate_limiter(), on_depth=depth.set
        )
        self.checkpointer = checkpointer
        self.resume_points: dict[str, str] = {}
        self.watch_timeout = watch_timeout
        self.shutdown_grace = shutdown_grace
        self.informers: list[Informer] = []
        self.log = logs.get_logger("controller", controller=name)
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    # -- wiring ------------------------------------------------------------------------------------

    def watch(
        self,
        resource: Resource,
        handler: Handler | None = None,
        namespace: str | None = None,
        label_selector: str | None = None,
        indexers: dict[str, Indexer] | None = None,
    ) -> Informer:
        """An informer on resource; by default every event enqueues the object's key. Its
        store is the cache reconciles read (with indexers: Store.by_index lookups)."""
        inf = Informer(
            self.kube,
            resource,
            handler or self.enqueue_handler,
            namespace=namespace,
            label_selector=label_selector,
            metrics=self.metrics,
            on_resource_version=self.checkpointer.tracker(resource.plural) if self.checkpointer else None,
            watch_timeout=self.watch_timeout,
            indexers=indexers,
        )
        self.informers.append(inf)
        return inf

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    def enqueue_handler(self, event_type: str, obj: Obj, old: Obj | None) -> None:
        self.queue.add(key_of(obj))

    # -- running -----------------------------------------------------------------------------------

    def start(self, sync_timeout: float | None = None) -> Controller:
        """Start informers, wait until each has listed once, then start the workers."""
        if self.checkpointer is not None:
            self.resume_points = self._load_checkpoint()
        self.log.info("starting", workers=self.workers, resume_from=self.resume_points or None)
        for inf in self.informers:
            inf.resume_from = self.resume_points.get(inf.resource.plural) or None
            inf.start()
        if self.checkpointer is not None:
            self.checkpointer.start()
        deadline = None if sync_timeout is None else time.monotonic() + sync_timeout
        for inf in self.informers:
            while not inf.wait_synced(0.2):
                if self.stopping.is_set():
                    return self
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"informer for {inf.resource.plural} did not sync")
        self.log.info("caches synced", resources=[i.resource.plural for i in self.informers])
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"{self.name}-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _load_checkpoint(self) -> dict[str, str]:
        assert self.checkpointer is not None
        backoff = ExponentialBackoff()
        while not self.stopping.is_set():
            try:
                return self.checkpointer.load()
            except Exception as e:
                if not is_transient(e):
                    raise
                delay = backoff.next()
                self.log.warning(
                    "loading the resume checkpoint failed, retrying", delay=round(delay, 3), **describe(e)
                )
                self.stopping.wait(delay)
        return {}

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self.log.info("stopping")
        self.stopping.set()
        for inf in self.informers:
            inf.stop()
        drained = self.queue.shutdown(drain=True, timeout=self.shutdown_grace)
        for t in self._threads:
            t.join(max(0.1, self.shutdown_grace))
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.metrics.close()
        self._stopped.set()
        self.log.info("stopped", drained=drained)

    def run_until_signal(self) -> int:
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            self.log.info("signal received: shutting down", signal=signal.Signals(signum).name)
            self.stopping.set()
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start()
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
        return 0

    # -- workers -----------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                if not self.stopping.is_set():
                    self.process(key)
            finally:
                self.queue.done(key)

    def process(self, key: str) -> None:
        start = time.monotonic()
        try:
            result = self.reconcile(key)
        except Exception as e:
            self._failed(key, e)
            return
        finally:
            self.metrics.reconcile_duration.labels(self.name).observe(time.monotonic() - start)
        if result is not None and result.requeue_after is not None:
            self.queue.forget(key)
            self.queue.add_after(key, result.requeue_after)
            self.metrics.reconciled("requeue")
        elif result is not None and result.requeue:
            self.queue.add_rate_limited(key)
            self.metrics.retry("ratelimited")
            self.metrics.reconciled("requeue")
        else:
            self.queue.forget(key)
            self.metrics.reconciled("success")

    def _failed(self, key: str, e: Exception) -> None:
        if is_not_found(e):
            self.queue.forget(key)
            self.metrics.reconciled("dropped")
            self.log.info("object is gone (404): dropped", key=key)
            return
        if self.stopping.is_set():
            self.metrics.reconciled("error")
            return
        delay = self.queue.add_rate_limited(key)
        self.metrics.retry("ratelimited")
        self.metrics.reconciled("error")
        fields = {
            "key": key,
            "requeue_in": round(delay, 3),
            "requeues": self.queue.num_requeues(key),
            **describe(e),
        }
        if is_conflict(e):
            self.log.info("conflict (409) after retries: requeued", **fields)
        elif is_transient(e):
            self.log.warning("apiserver unavailable: requeued", **fields)
        else:
            self.log.error("reconcile failed: requeued", exc_info=True, **fields)


# ------------------------------------------------------------------------------------------------
# command line


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: the in-cluster service account in a pod, else $KUBECONFIG or ~/.kube/config)",
    )
    ap.add_argument("--context", help="kubeconfig context")
    ap.add_argument("--workers", type=int, default=4, help="reconcile threads (default 4)")
    ap.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    ap.add_argument("--metrics-addr", default="0.0.0.0")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--log-format", default="json", choices=["json", "text"])
    ap.add_argument(
        "--watch-timeout", type=int, default=300, help="seconds per watch request (jittered x1-2)"
    )
    ap.add_argument(
        "--shutdown-grace", type=float, default=10.0, help="seconds to finish reconciles on SIGTERM"
    )
    ap.add_argument(
        "--identity",
        default=None,
        help="this instance's name in the objects it writes (default: $POD_NAME or a random one)",
    )
    return ap


def add_resume_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--resume-file", help="keep the watches' resourceVersions in this JSON file")
    g.add_argument(
        "--resume-configmap", metavar="NAMESPACE/NAME", help="... or in this ConfigMap's annotations"
    )
    ap.add_argument("--resume-interval", type=float, default=1.0, help="seconds between checkpoint saves")


def make_checkpointer(args: argparse.Namespace, kube: Kube) -> Checkpointer | None:
    store: CheckpointStore | None = None
    if getattr(args, "resume_file", None):
        store = FileCheckpoint(args.resume_file)
    elif getattr(args, "resume_configmap", None):
        ns, sep, name = args.resume_configmap.partition("/")
        if not sep or not ns or not name:
            raise SystemExit("--resume-configmap wants NAMESPACE/NAME")
        store = ConfigMapCheckpoint(kube, ns, name)
    return Checkpointer(store, args.resume_interval) if store is not None else None


def identity(args: argparse.Namespace) -> str:
    import os

    return str(args.identity or os.environ.get("POD_NAME") or f"{os.uname().nodename}-{uuid.uuid4().hex[:6]}")


def setup(args: argparse.Namespace, name: str) -> tuple[Kube, Metrics]:
    logs.setup(args.log_level, args.log_format)
    kube = Kube(load_api_client(args.kubeconfig, args.context, pool_size=max(16, args.workers * 2 + 8)))
    metrics = Metrics(name)
    if args.metrics_port is not None:
        port = metrics.serve(args.metrics_port, args.metrics_addr)
        logs.get_logger("controller", controller=name).info("serving metrics", port=port)
    return kube, metrics
