"""Rollout stepper: walks a Deployment through a list of images, one rollout at a time, next to
Kubernetes' own deployment controller, which writes the same object's status all along.

    python -m controllers.rollout_stepper --kubeconfig PATH [--namespace NS] [--workers 2]

A Deployment opts in with the label petcd.example.com/rollout-stepper=true and lists its
images in the annotation petcd.example.com/rollout-plan ("app:v2,app:v3,app:v4"). As soon as
the current template runs on one pod (a canary), the stepper sets the first container's image
to the next entry and counts it in the annotation petcd.example.com/rollout-step, in one PUT
conditioned on the resourceVersion it read. The Deployment ends on the last image, rolled out.

Where the conflicts come from: reconciles read the informer's cache, and the deployment
controller keeps writing the object (status through /status, the revision annotation through
the object itself) while it scales ReplicaSets and pods come and go, which is exactly when
the stepper writes. Every such write makes a new resourceVersion, so a
cached copy is often stale by the time the stepper writes it: the apiserver answers 409
Conflict, nothing is written, and the key is requeued (rate-limited) until the cache has caught
up. Because a write only lands on the version it was computed from, each step is applied
exactly once: the step count, the Deployment's generation and its ReplicaSet revisions all end
equal to the plan's length, however many 409s there were (petcd_controller_conflicts_total).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence

from controllers.informer import Informer
from controllers.kubeclient import Kube, Obj, Resource, key_of, split_key
from controllers.metrics import Metrics
from controllers.retry import is_conflict
from controllers.runtime import Controller, Result, base_parser, setup

DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
PODS = Resource("", "v1", "pods", "Pod")
LABEL = "petcd.example.com/rollout-stepper"
PLAN = "petcd.example.com/rollout-plan"
STEP = "petcd.example.com/rollout-step"


def selects(d: Obj, pod: Obj) -> bool:
    """Whether the Deployment's selector (matchLabels) selects the pod, in its namespace."""
    labels = pod["metadata"].get("labels", {})
    match = d["spec"]["selector"].get("matchLabels", {})
    same_ns = pod["metadata"].get("namespace") == d["metadata"].get("namespace")
    return same_ns and all(labels.get(k) == v for k, v in match.items())


def canary_ready(d: Obj, pods: list[Obj]) -> bool:
    """A pod of the Deployment runs its current image and is Ready."""
    image = d["spec"]["template"]["spec"]["containers"][0]["image"]
    return any(
        selects(d, p)
        and p["spec"]["containers"][0]["image"] == image
        and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])
        )
        for p in pods
    )


def next_step(d: Obj, pods: list[Obj]) -> Obj | None:
    """The Deployment with the next image of its plan, or None when there is nothing to do."""
    annotations = d["metadata"].get("annotations", {})
    plan = [image.strip() for image in annotations.get(PLAN, "").split(",") if image.strip()]
    step = int(annotations.get(STEP, "0"))
    if step >= len(plan) or not canary_ready(d, pods):
        return None
    new = copy.deepcopy(d)
    new["metadata"]["annotations"][STEP] = str(step + 1)
    new["spec"]["template"]["spec"]["containers"][0]["image"] = plan[step]
    return new  # metadata.resourceVersion is still the one read: the write's precondition


def make_controller(
    kube: Kube,
    workers: int = 2,
    namespace: str | None = None,
    metrics: Metrics | None = None,
    watch_timeout: int = 300,
    shutdown_grace: float = 10.0,
) -> Controller:
    metrics = metrics or Metrics("rollout-stepper")
    deployments: Informer
    pods: Informer

    def reconcile(key: str) -> Result | None:
        d = deployments.store.get(key)  # the caches, possibly behind the apiserver
        new = next_step(d, pods.store.objects()) if d is not None else None
        if new is None:
            return None
        ns, name = split_key(key)
        try:
            kube.replace(DEPLOYMENTS, ns, name, new)
        except Exception as e:
            if is_conflict(e):  # the deployment controller wrote since: requeued
                metrics.conflict()
            raise
        metrics.wrote("update")
        return None

    def pod_changed(event: str, pod: Obj, old: Obj | None) -> None:
        for d in deployments.store.objects():
            if selects(d, pod):
                ctl.enqueue(key_of(d))

    ctl = Controller(
        "rollout-stepper",
        kube,
        reconcile,
        workers=workers,
        metrics=metrics,
        watch_timeout=watch_timeout,
        shutdown_grace=shutdown_grace,
    )
    selector = f"{LABEL}=true"
    deployments = ctl.watch(DEPLOYMENTS, namespace=namespace, label_selector=selector)
    pods = ctl.watch(PODS, pod_changed, namespace=namespace, label_selector=selector)
    return ctl


def main(argv: Sequence[str] | None = None) -> int:
    ap = base_parser(
        "python -m controllers.rollout_stepper", "Rollout stepper (Deployments, optimistic concurrency)"
    )
    ap.add_argument("--namespace", help="only Deployments in this namespace (default: all)")
    args = ap.parse_args(argv)
    kube, metrics = setup(args, "rollout-stepper")
    ctl = make_controller(
        kube,
        workers=args.workers,
        namespace=args.namespace,
        metrics=metrics,
        watch_timeout=args.watch_timeout,
        shutdown_grace=args.shutdown_grace,
    )
    return ctl.run_until_signal()


if __name__ == "__main__":
    sys.exit(main())
