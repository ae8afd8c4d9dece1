"""The naive Counter controller: the counter sample's steps written last-write-wins (a JSON
merge patch of status without metadata.resourceVersion), so concurrent writers overwrite each
other's increments. It exists to be measured against the safe one:

    python -m controllers.naive_counter --kubeconfig PATH [--workers 4]
    python -m controllers.naive_counter --kubeconfig PATH --storm 8x25 --counter NS/NAME

The storm report's lost_updates is acknowledged writes minus the count they produced.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from typing import Any

from controllers import counter
from controllers.kubeclient import COUNTERS, Kube, Obj, split_key
from controllers.metrics import Metrics
from controllers.runtime import Controller, Result

__all__ = ["main", "make_controller", "naive_step"]


def naive_step(
    kube: Kube, namespace: str, name: str, token: str, metrics: Metrics | None = None
) -> Obj | None:
    """GET, compute, and write the new status with a merge patch that carries no
    resourceVersion. Never a 409 — and two writers that read the same count both write count+1:
    one increment is lost."""
    cur = kube.get(COUNTERS, namespace, name, "status")
    status = counter.next_status(cur, token)
    if status is None:
        return None
    out = kube.patch(COUNTERS, namespace, name, {"status": status}, "application/merge-patch+json", "status")
    if metrics is not None:
        metrics.wrote("status")
    return out


def make_controller(
    kube: Kube,
    writer: str,
    workers: int = 4,
    metrics: Metrics | None = None,
    namespace: str | None = None,
    **kw: Any,
) -> Controller:
    metrics = metrics or Metrics("naive-counter")
    seq = itertools.count(1)

    def reconcile(key: str) -> Result | None:
        ns, name = split_key(key)
        assert ns is not None
        naive_step(kube, ns, name, f"{writer}#{next(seq)}", metrics)
        return None

    ctl = Controller("naive-counter", kube, reconcile, workers=workers, metrics=metrics, **kw)
    ctl.watch(COUNTERS, namespace=namespace)
    return ctl


def main(argv: Sequence[str] | None = None) -> int:
    return counter.main(argv, naive=True)


if __name__ == "__main__":
    sys.exit(main())
