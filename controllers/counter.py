"""Counter controller: counts Counter status.count up to spec.target, spec.step per reconcile,
with optimistic concurrency.

    python -m controllers.counter --kubeconfig PATH [--workers 4] [--metrics-port 9101]
    python -m controllers.counter --kubeconfig PATH --storm 8x25 --counter NS/NAME

Every step is a get-modify-update of the status subresource: GET .../status, compute the new
status, PUT .../status with the metadata.resourceVersion that was read. The apiserver turns
that into an etcd transaction "if mod_revision(key) == resourceVersion then put", so a writer
that read a stale version gets 409 Conflict instead of overwriting someone else's increment.
The step runs inside retry_on_conflict (client-go's RetryOnConflict, DefaultRetry: 5 attempts,
10 ms apart), re-GETting in every attempt; if all attempts conflict the work item is requeued
rate-limited. Nothing is written by a failed attempt, so no increment is lost or doubled.

Writes whose outcome is unknown (a 5xx such as "etcdserver: leader changed" or a timeout, or
a connection dropped after the request was sent: the transaction may still have committed)
are resolved before any retry: a watch from the resourceVersion the write was conditioned on
shows the one version that followed it; the write was ours iff that version carries our write
token (the Ready condition's message ends with "last step by <writer>#<n>"). Only the
conditional write makes this possible: exactly one writer can succeed from a given version.

Faults: object deleted mid-reconcile → 404 → dropped; invalid spec (or status.count above
spec.target) → Ready=False with reason InvalidSpec / CountAboveTarget, written once, no
requeue loop; apiserver unavailable → requeue with backoff.

--storm WxM runs W writer threads doing M increments each on one Counter (creating it with a
large target if missing) and prints a JSON report; controllers.naive_counter does the same
without resourceVersion, to show the lost updates.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeGuard

from controllers import log as logs
from controllers.conditions import get_condition, same_condition, set_condition
from controllers.informer import WatchError
from controllers.kubeclient import COUNTERS, Kube, Obj, rv_of, split_key
from controllers.metrics import Metrics
from controllers.retry import (
    DEFAULT_RETRY,
    Backoff,
    ExponentialBackoff,
    is_conflict,
    is_gone,
    is_not_found,
    is_transient,
    message_of,
    retry_on_conflict,
    status_of,
)
from controllers.runtime import Controller, Result, base_parser, identity, setup
from controllers.workqueue import ItemExponentialFailureRateLimiter

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
# the safe writer


class UnresolvedWrite(Exception):
    """A write's outcome could not be determined (treated as not applied)."""

    status = 500


class CounterWriter:
    """One step of a Counter with get-modify-update + retry_on_conflict; thread-safe."""

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
        self.resolve_timeout = resolve_timeout
        self.on_write = on_write
        self.log = logs.get_logger("counter", writer=writer)
        self._seq = itertools.count(1)

    def _sleep(self, delay: float) -> None:
        self.metrics.retry("conflict")  # retry_on_conflict sleeps exactly once per retry
        time.sleep(delay)

    def step(self, namespace: str, name: str) -> Obj | None:
        """Write the next status of the Counter; the object written, or None if there was
        nothing to write. Raises 409 when every attempt conflicted, 404 if the object is gone,
        and transient errors (the write did not happen) for the caller to requeue."""

        def attempt() -> Obj | None:
            cur = self.kube.get(COUNTERS, namespace, name, "status")  # re-read every attempt
            token = f"{self.writer}#{next(self._seq)}"
            status = next_status(cur, token)
            if status is None:
                return None
            try:
                out = self.kube.replace(COUNTERS, namespace, name, with_status(cur, status), "status")
            except Exception as e:
                if is_conflict(e) or not is_transient(e):
                    raise
                resolved = self.resolve(namespace, name, rv_of(cur), token, e)
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

    def resolve(self, namespace: str, name: str, rv0: str, token: str, error: BaseException) -> Obj | None:
        """After a write conditioned on rv0 failed in an unknown way: the object our write
        produced if it was applied, None if it was not."""
        self.metrics.retry("ambiguous")
        self.log.warning(
            "write outcome unknown: resolving",
            key=f"{namespace}/{name}",
            resource_version=rv0,
            token=token,
            status=status_of(error),
            error=message_of(error),
        )
        deadline = time.monotonic() + self.resolve_timeout
        backoff = ExponentialBackoff(initial=0.2, cap=5.0)
        while True:
            try:
                out = self._resolve_once(namespace, name, rv0, token)
                self.log.info("write outcome resolved", token=token, applied=out is not None)
                self.metrics.retry("ambiguous_applied" if out is not None else "ambiguous_not_applied")
                return out
            except Exception as e:
                if isinstance(e, UnresolvedWrite) or time.monotonic() > deadline:
                    self.metrics.retry("unresolved")
                    self.log.error(
                        "write outcome unresolved: assuming not applied", token=token, error=message_of(e)
                    )
                    return None
                if not (is_transient(e) or isinstance(e, WatchError)):
                    raise
                time.sleep(backoff.next())

    def _resolve_once(self, namespace: str, name: str, rv0: str, token: str) -> Obj | None:
        try:
            stream = self.kube.watch(
                COUNTERS,
                namespace,
                resource_version=rv0,
                timeout_seconds=5,
                allow_bookmarks=False,
                fieldSelector=f"metadata.name={name}",
            )
        except Exception as e:
            if is_gone(e):
                return self._resolve_by_get(namespace, name, rv0, token)
            raise
        try:
            for ev in stream:
                t, obj = ev.get("type"), ev.get("object") or {}
                if t == "ERROR":
                    if obj.get("code") == 410:
                        return self._resolve_by_get(namespace, name, rv0, token)
                    raise WatchError(obj.get("code"), obj.get("reason"), obj.get("message"))
                if t in ("MODIFIED", "DELETED"):
                    # exactly one write can succeed from rv0: this one
                    return obj if t == "MODIFIED" and token_of(obj) == token else None
        finally:
            stream.close()
        # nothing after rv0 for 5 s: the write did not happen if the object is still at rv0
        cur = self.kube.get(COUNTERS, namespace, name, "status")
        if rv_of(cur) == rv0:
            return None
        raise WatchError(0, "Retry", "the object changed but the watch showed nothing yet")

    def _resolve_by_get(self, namespace: str, name: str, rv0: str, token: str) -> Obj | None:
        cur = self.kube.get(COUNTERS, namespace, name, "status")
        if token_of(cur) == token:
            return cur
        if rv_of(cur) == rv0:
            return None
        raise UnresolvedWrite(f"{rv0} is too old to watch from and the object has changed since")


def naive_step(
    kube: Kube, namespace: str, name: str, token: str, metrics: Metrics | None = None
) -> Obj | None:
    """The last-write-wins step (controllers.naive_counter): GET, compute, and write the new
    status with a JSON merge patch that carries no resourceVersion. Never a 409 — and two
    writers that read the same count both write count+1: one increment is lost."""
    cur = kube.get(COUNTERS, namespace, name, "status")
    status = next_status(cur, token)
    if status is None:
        return None
    out = kube.patch(COUNTERS, namespace, name, {"status": status}, "application/merge-patch+json", "status")
    if metrics is not None:
        metrics.wrote("status")
    return out


# ------------------------------------------------------------------------------------------------
# the controller


def make_controller(
    kube: Kube,
    writer: str,
    workers: int = 4,
    metrics: Metrics | None = None,
    naive: bool = False,
    namespace: str | None = None,
    **kw: Any,
) -> Controller:
    name = "naive-counter" if naive else "counter"
    metrics = metrics or Metrics(name)
    safe = CounterWriter(kube, writer, metrics)
    seq = itertools.count(1)

    def reconcile(key: str) -> Result | None:
        ns, obj_name = split_key(key)
        assert ns is not None
        if naive:
            naive_step(kube, ns, obj_name, f"{writer}#{next(seq)}", metrics)
        else:
            safe.step(ns, obj_name)
        # our own write comes back as a MODIFIED event, which enqueues the next step
        return None

    ctl = Controller(name, kube, reconcile, workers=workers, metrics=metrics, **kw)
    ctl.watch(COUNTERS, namespace=namespace)
    return ctl


# ------------------------------------------------------------------------------------------------
# the storm


@dataclass
class StormReport:
    mode: str
    writers: int
    increments: int
    expected: int
    acknowledged: int = 0  # writes the apiserver answered 200 to
    final_count: int = 0
    conflicts: int = 0  # 409 answers
    conflict_retries: int = 0  # retry_on_conflict re-attempts
    requeues: int = 0  # retry_on_conflict gave up: requeued with the per-writer rate limiter
    transient_errors: int = 0
    ambiguous_writes: int = 0  # writes whose outcome was unknown, resolved through a watch ...
    ambiguous_applied: int = 0  # ... of which this many had been applied
    seconds: float = 0.0
    resource_versions: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.acknowledged - self.final_count

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("resource_versions")
        d["lost_updates"] = self.lost
        return json.dumps(d)


def ensure_counter(kube: Kube, namespace: str, name: str, target: int = 1_000_000) -> Obj:
    try:
        return kube.get(COUNTERS, namespace, name)
    except Exception as e:
        if not is_not_found(e):
            raise
    body = {
        "apiVersion": f"{COUNTERS.group}/{COUNTERS.version}",
        "kind": "Counter",
        "metadata": {"name": name},
        "spec": {"target": target, "step": 1},
    }
    return kube.create(COUNTERS, namespace, body)


def storm(
    kube: Kube,
    namespace: str,
    name: str,
    writers: int,
    increments: int,
    naive: bool = False,
    identity: str = "storm",
    metrics: Metrics | None = None,
    backoff: Backoff = DEFAULT_RETRY,
) -> StormReport:
    """`writers` threads each apply `increments` steps of +spec.step to one Counter."""
    metrics = metrics or Metrics("naive-counter" if naive else "counter")
    report = StormReport("naive" if naive else "safe", writers, increments, writers * increments)
    lock = threading.Lock()
    log = logs.get_logger("storm", counter=f"{namespace}/{name}", mode=report.mode)
    before = int((kube.get(COUNTERS, namespace, name).get("status") or {}).get("count", 0))

    def count(what: str, n: int = 1) -> None:
        with lock:
            setattr(report, what, getattr(report, what) + n)

    def record(obj: Obj) -> None:
        with lock:
            report.resource_versions.append(rv_of(obj))

    def run(i: int) -> None:
        me = f"{identity}-{i}"
        w = CounterWriter(kube, me, metrics, backoff, on_write=record)
        limiter = ItemExponentialFailureRateLimiter(0.005, 1.0)
        reconnect = ExponentialBackoff(initial=0.2, cap=5.0)
        seq = itertools.count(1)
        for _ in range(increments):
            while True:
                try:
                    if naive:
                        out = naive_step(kube, namespace, name, f"{me}#{next(seq)}", metrics)
                        if out is not None:
                            record(out)
                    else:
                        out = w.step(namespace, name)
                except Exception as e:
                    if is_conflict(e):
                        count("requeues")
                        metrics.retry("ratelimited")
                        time.sleep(limiter.when(me))
                        continue
                    if is_transient(e):
                        count("transient_errors")
                        log.warning(
                            "write failed, retrying", writer=me, status=status_of(e), error=message_of(e)
                        )
                        time.sleep(reconnect.next())
                        continue
                    raise
                if out is None:
                    raise RuntimeError(f"Counter {namespace}/{name} reached its target during the storm")
                limiter.forget(me)
                count("acknowledged")
                break

    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            run(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,), name=f"storm-{i}") for i in range(writers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    report.seconds = round(time.monotonic() - t0, 2)
    report.final_count = (
        int((kube.get(COUNTERS, namespace, name).get("status") or {}).get("count", 0)) - before
    )
    report.conflicts = int(metrics.value("conflicts_total"))
    report.conflict_retries = int(metrics.value("retries_total", reason="conflict"))
    report.ambiguous_writes = int(metrics.value("retries_total", reason="ambiguous"))
    report.ambiguous_applied = int(metrics.value("retries_total", reason="ambiguous_applied"))
    log.info("storm done", **{k: v for k, v in json.loads(report.to_json()).items()})
    return report


# ------------------------------------------------------------------------------------------------
# command line


def parse_storm(spec: str) -> tuple[int, int]:
    w, sep, m = spec.lower().partition("x")
    if not sep or not w.isdigit() or not m.isdigit() or int(w) < 1 or int(m) < 1:
        raise ValueError(f"--storm wants WRITERSxINCREMENTS such as 8x25, got {spec!r}")
    return int(w), int(m)


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
    try:
        storm_spec = parse_storm(args.storm) if args.storm else None
    except ValueError as e:
        ap.error(str(e))
    kube, metrics = setup(args, name)
    me = identity(args)
    if storm_spec is not None:
        ns, obj_name = split_key(args.counter)
        if ns is None:
            ap.error("--counter wants NAMESPACE/NAME")
        ensure_counter(kube, ns, obj_name)
        report = storm(kube, ns, obj_name, *storm_spec, naive=naive, identity=me, metrics=metrics)
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
