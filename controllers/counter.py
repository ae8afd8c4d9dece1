"""Counter controller: counts Counter status.count up to spec.target, spec.step per reconcile,
with optimistic concurrency.

    python -m controllers.counter --kubeconfig PATH [--workers 4] [--metrics-port 9101]
    python -m controllers.counter --kubeconfig PATH --storm 8x25 --counter NS/NAME

Every step is a get-modify-update of the status subresource: read the Counter (the informer's
cache first, as client-go controllers read their listers), compute the new status, PUT
.../status with the metadata.resourceVersion that was read. The apiserver turns that into an
etcd transaction "if mod_revision(key) == resourceVersion then put", so a writer that read a
stale version gets 409 Conflict instead of overwriting someone else's increment. The step runs
inside retry_on_conflict (client-go's RetryOnConflict, DefaultRetry: 5 attempts, 10 ms apart),
re-GETting in every retry; if all attempts conflict the work item is requeued rate-limited.
Nothing is written by a failed attempt, so no increment is lost or doubled.

A write whose outcome is unknown (a 5xx, a timeout, a dropped connection) is resolved before
any retry by controllers/writes.py, through the write token each step puts in the Ready
condition's message ("last step by <writer>#<n>").

Faults: object deleted mid-reconcile → 404 → dropped; invalid spec (or status.count above
spec.target) → Ready=False with reason InvalidSpec / CountAboveTarget, written once, no
requeue loop; apiserver unavailable → requeue with backoff.

controllers/naive_counter.py is the same controller written last-write-wins;
controllers/storm.py is the experiment (--storm) that compares them.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

from controllers import log as logs
from controllers.conditions import get_condition, same_condition, set_condition
from controllers.kubeclient import COUNTERS, Kube, Obj, rv_of, split_key
from controllers.metrics import Metrics
from controllers.retry import DEFAULT_RETRY, Backoff, is_conflict, is_transient, retry_on_conflict
from controllers.runtime import Controller, Result, base_parser, identity, setup
from controllers.writes import AmbiguousWrites

TOKEN_MARK = "last step by "


# ------------------------------------------------------------------------------------------------
# pure logic


def validate(obj: Obj) -> str | None:
    """Why the spec cannot be acted on, or None. (The CRD's schema already rejects most of
    this; the controller does not rely on it: an older CRD or a hand-edited one may not.)"""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return "spec is missing"
    target = spec.get("target")
    step = spec.get("step", 1)
    if not _is_int(target) or target < 0:
        return f"spec.target must be an integer >= 0, got {target!r}"
    if not _is_int(step) or step < 1:
        return f"spec.step must be an integer >= 1, got {step!r}"
    count = (obj.get("status") or {}).get("count", 0)
    if not _is_int(count) or count < 0:
        return f"status.count must be an integer >= 0, got {count!r}"
    return None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def next_status(obj: Obj, token: str, now: str | None = None) -> Obj | None:
    """The status one reconcile step writes, or None when there is nothing to write."""
    status: Obj = copy.deepcopy(obj.get("status") or {})
    gen = obj.get("metadata", {}).get("generation")
    ready = get_condition(status, "Ready")
    problem = validate(obj)
    if problem is not None:
        new = set_condition(status, "Ready", "False", "InvalidSpec", problem, gen, now)
        return None if same_condition(ready, get_condition(new, "Ready")) else new
    spec = obj["spec"]
    target, step = int(spec["target"]), int(spec.get("step", 1))
    count = int(status.get("count", 0))
    if count > target:
        msg = f"status.count {count} is above spec.target {target}; a Counter does not count down"
        new = set_condition(status, "Ready", "False", "CountAboveTarget", msg, gen, now)
        return None if same_condition(ready, get_condition(new, "Ready")) else new
    if count == target:
        if ready and ready.get("status") == "True" and ready.get("observedGeneration") == gen:
            return None
        status["observedGeneration"] = gen
        return set_condition(status, "Ready", "True", "TargetReached", f"count {count}/{target}", gen, now)
    new_count = min(count + step, target)
    status["count"] = new_count
    status["observedGeneration"] = gen
    done = new_count == target
    return set_condition(
        status,
        "Ready",
        "True" if done else "False",
        "TargetReached" if done else "Counting",
        f"count {new_count}/{target}, {TOKEN_MARK}{token}",
        gen,
        now,
    )


def token_of(obj: Obj) -> str | None:
    """The write token in the Ready condition's message (see next_status)."""
    msg = (get_condition(obj.get("status"), "Ready") or {}).get("message", "")
    _, sep, token = str(msg).rpartition(TOKEN_MARK)
    return token if sep else None


def with_status(obj: Obj, status: Obj) -> Obj:
    """The PUT body for .../status: the object as read (so metadata.resourceVersion is the
    precondition) with the new status."""
    body = copy.deepcopy(obj)
    body["status"] = status
    return body


# ------------------------------------------------------------------------------------------------
# the writer and the controller


class CounterWriter:
    """One step of a Counter: get-modify-update inside retry_on_conflict; thread-safe."""

    def __init__(
        self,
        kube: Kube,
        writer: str,
        metrics: Metrics | None = None,
        backoff: Backoff = DEFAULT_RETRY,
        resolve_timeout: float = 60.0,
        on_write: Callable[[Obj], None] | None = None,
    ) -> None:
        self.kube = kube
        self.writer = writer
        self.metrics = metrics or Metrics("counter")
        self.backoff = backoff
        self.on_write = on_write
        self.ambiguous = AmbiguousWrites(
            kube, COUNTERS, self.metrics, logs.get_logger("counter", writer=writer), resolve_timeout
        )
        self._seq = itertools.count(1)

    def step(self, namespace: str, name: str, cached: Obj | None = None) -> Obj | None:
        """Write the next status of the Counter; the object written, or None if there was
        nothing to write. The first attempt starts from cached (the informer's copy) when given,
        every retry from a fresh GET. Raises 409 when every attempt conflicted, 404 if the object
        is gone, and transient errors (the write did not happen) for the caller to requeue."""

        def attempt() -> Obj | None:
            nonlocal cached
            cur = cached if cached is not None else self.kube.get(COUNTERS, namespace, name, "status")
            cached = None  # a retry starts from a fresh GET
            token = f"{self.writer}#{next(self._seq)}"
            status = next_status(cur, token)
            if status is None:
                return None
            try:
                out = self.kube.replace(COUNTERS, namespace, name, with_status(cur, status), "status")
            except Exception as e:
                if is_conflict(e) or not is_transient(e):
                    raise
                resolved = self.ambiguous.outcome(
                    namespace, name, rv_of(cur), lambda o: token_of(o) == token, e
                )
                if resolved is None:
                    raise
                out = resolved
            self.metrics.wrote("status")
            if self.on_write is not None:
                self.on_write(out)
            return out

        return retry_on_conflict(
            attempt, self.backoff, on_conflict=lambda e: self.metrics.conflict(), sleep=self._sleep
        )

    def _sleep(self, delay: float) -> None:
        self.metrics.retry("conflict")  # retry_on_conflict sleeps exactly once per retry
        time.sleep(delay)


def make_controller(
    kube: Kube,
    writer: str,
    workers: int = 4,
    metrics: Metrics | None = None,
    naive: bool = False,
    namespace: str | None = None,
    **kw: Any,
) -> Controller:
    if naive:  # the last-write-wins variant is a sample of its own
        from controllers import naive_counter

        return naive_counter.make_controller(kube, writer, workers, metrics, namespace, **kw)
    metrics = metrics or Metrics("counter")
    safe = CounterWriter(kube, writer, metrics)

    def reconcile(key: str) -> Result | None:
        cached = counters.store.get(key)
        if cached is None:
            return None  # deleted: the informer saw it go
        ns, name = split_key(key)
        assert ns is not None
        safe.step(ns, name, cached)
        return None  # our own write comes back as a MODIFIED event, which enqueues the next step

    ctl = Controller("counter", kube, reconcile, workers=workers, metrics=metrics, **kw)
    counters = ctl.watch(COUNTERS, namespace=namespace)
    return ctl


# ------------------------------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None, naive: bool = False) -> int:
    name = "naive-counter" if naive else "counter"
    ap = base_parser(
        f"python -m controllers.{name.replace('-', '_')}",
        "Counter controller"
        + (" (naive last-write-wins: no resourceVersion)" if naive else " (optimistic concurrency)"),
    )
    ap.add_argument("--namespace", help="only Counters in this namespace (default: all)")
    ap.add_argument("--storm", metavar="WxM", help="instead of the controller: W writers x M increments")
    ap.add_argument(
        "--counter", metavar="NS/NAME", default="petcd-demo/storm", help="the Counter for --storm"
    )
    args = ap.parse_args(argv)
    from controllers import storm  # the experiment, not the controller

    try:
        storm_spec = storm.parse_storm(args.storm) if args.storm else None
    except ValueError as e:
        ap.error(str(e))
    kube, metrics = setup(args, name)
    me = identity(args)
    if storm_spec is not None:
        ns, obj_name = split_key(args.counter)
        if ns is None:
            ap.error("--counter wants NAMESPACE/NAME")
        storm.ensure_counter(kube, ns, obj_name)
        report = storm.storm(kube, ns, obj_name, *storm_spec, naive=naive, identity=me, metrics=metrics)
        print(report.to_json(), flush=True)
        return 0
    ctl = make_controller(
        kube,
        me,
        workers=args.workers,
        metrics=metrics,
        naive=naive,
        namespace=args.namespace,
        watch_timeout=args.watch_timeout,
        shutdown_grace=args.shutdown_grace,
    )
    return ctl.run_until_signal()


if __name__ == "__main__":
    import sys

    sys.exit(main())
