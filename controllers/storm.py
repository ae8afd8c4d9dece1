"""The storm experiment: W writer threads doing M increments each on one Counter, safe (the
counter sample's get-modify-update with resourceVersion) or naive (last-write-wins), and a
JSON report of what was acknowledged, what the count became, and the conflicts and ambiguous
writes on the way. Not a controller: the measurement that shows why the samples are written
the way they are.

    python -m controllers.counter --storm 8x25 --counter NS/NAME         # safe
    python -m controllers.naive_counter --storm 8x25 --counter NS/NAME   # lost updates

lost_updates = acknowledged writes - the increments the count shows.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass, field

from controllers import log as logs
from controllers.counter import CounterWriter
from controllers.kubeclient import COUNTERS, Kube, Obj, rv_of
from controllers.metrics import Metrics
from controllers.naive_counter import naive_step
from controllers.retry import (
    DEFAULT_RETRY,
    Backoff,
    ExponentialBackoff,
    is_conflict,
    is_transient,
    message_of,
    status_of,
)
from controllers.workqueue import ItemExponentialFailureRateLimiter

__all__ = ["StormReport", "ensure_counter", "parse_storm", "storm"]


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
    found = kube.get_or_none(COUNTERS, namespace, name)
    if found is not None:
        return found
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


def parse_storm(spec: str) -> tuple[int, int]:
    w, sep, m = spec.lower().partition("x")
    if not sep or not w.isdigit() or not m.isdigit() or int(w) < 1 or int(m) < 1:
        raise ValueError(f"--storm wants WRITERSxINCREMENTS such as 8x25, got {spec!r}")
    return int(w), int(m)
