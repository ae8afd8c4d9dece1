"""The rollout stepper (controllers/rollout_stepper.py) against Kubernetes' own deployment
controller on the full control plane, on petcd and on real etcd.

We test these aspects:
- conflicts nobody staged: the stepper reads Deployments and Pods from its informer caches and
  writes Deployments' spec and annotations when a canary pod is Ready, just as the deployment
  controller writes their status and revision annotation; whichever of the two wrote from a
  stale copy gets 409 Conflict (the stepper's counted by itself and by the apiserver, the
  deployment controller's by the apiserver);
- no lost or doubled update despite them: for each Deployment, exactly one write per plan entry
  (the step annotation, metadata.generation, the last image), exactly one ReplicaSet per
  template with revisions 1..len(plan)+1, and the deployment controller's own writes intact
  (the revision annotation, status.observedGeneration, all replicas updated and available).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controllers import rollout_stepper
from controllers.kubeclient import Kube
from petcd_harness.controlplane import KubeCluster
from tests.e2e.conftest import metric, unique
from tests.framework.wait import wait_until

DEPLOYMENTS, REPLICAS = 3, 4
PLAN = [f"registry.example/app:v{i}" for i in range(2, 10)]


@pytest.fixture
def ns(cluster: KubeCluster) -> Iterator[str]:
    name = unique("stepper")
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def conflicts_on_deployments(cluster: KubeCluster) -> tuple[int, int]:
    """409 answers to PUTs of Deployments and of their /status, so far (apiserver metrics)."""
    total = metric(cluster, "apiserver_request_total", resource="deployments", verb="PUT", code="409")
    status = metric(
        cluster,
        "apiserver_request_total",
        resource="deployments",
        subresource="status",
        verb="PUT",
        code="409",
    )
    return int(total - status), int(status)


def rollout_complete(d: dict[str, Any]) -> bool:
    """Every replica runs the current template, available, and no old pod is left."""
    status, want = d.get("status", {}), d["spec"]["replicas"]
    return (
        status.get("observedGeneration", 0) == d["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == want
        and status.get("availableReplicas", 0) == want
        and status.get("replicas", 0) == want
    )


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": {rollout_stepper.LABEL: "true"},
            "annotations": {rollout_stepper.PLAN: ",".join(PLAN)},
        },
        "spec": {
            "replicas": REPLICAS,
            "revisionHistoryLimit": len(PLAN) + 5,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, rollout_stepper.LABEL: "true"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
            },
        },
    }


def test_stepper_and_deployment_controller_lose_no_update(cluster: KubeCluster, ns: str) -> None:
    kube = Kube.from_kubeconfig(str(cluster.kubeconfig))
    ctl = rollout_stepper.make_controller(kube, workers=2, namespace=ns)
    before = conflicts_on_deployments(cluster)
    ctl.start(sync_timeout=30)
    try:
        names = [f"app-{i}" for i in range(DEPLOYMENTS)]
        for name in names:
            kube.create(rollout_stepper.DEPLOYMENTS, ns, deployment(name))

        def done() -> list[dict[str, Any]] | None:
            ds = [kube.get(rollout_stepper.DEPLOYMENTS, ns, n) for n in names]
            finished = all(
                d["metadata"]["annotations"].get(rollout_stepper.STEP) == str(len(PLAN))
                and rollout_complete(d)
                for d in ds
            )
            return ds if finished else None

        final = wait_until(done, timeout=300, interval=0.5, what="every Deployment through its plan")
    finally:
        ctl.stop()
        kube.close()
    conflicts = int(ctl.metrics.value("conflicts_total"))
    writes = int(ctl.metrics.value("writes_total"))
    on_objects, on_status = (
        after - b for after, b in zip(conflicts_on_deployments(cluster), before, strict=True)
    )
    print(
        f"\n[{cluster.config.datastore}] {DEPLOYMENTS} Deployments x {len(PLAN)} steps: {writes} writes by the "
        f"stepper, {conflicts} of its PUTs answered 409; the deployment controller's status writes got "
        f"{on_status} 409s (apiserver metrics: {on_objects} 409s on Deployment PUTs, {on_status} on /status)"
    )
    assert writes == DEPLOYMENTS * len(PLAN)
    assert conflicts <= on_objects  # every 409 the stepper saw was the apiserver's
    assert conflicts + on_status > 0  # two writers on one object: the contention is real
    for d in final:
        name = d["metadata"]["name"]
        assert d["metadata"]["generation"] == 1 + len(PLAN)
        assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == str(len(PLAN) + 1)
        assert d["spec"]["template"]["spec"]["containers"][0]["image"] == PLAN[-1]
        assert d["status"]["observedGeneration"] == d["metadata"]["generation"]
        rs = cluster.kubectl("get", "replicasets", "-n", ns, "-l", f"app={name}", "-o", "json").json()[
            "items"
        ]
        revisions = sorted(int(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for r in rs)
        assert revisions == list(range(1, len(PLAN) + 2)), name
        images = sorted(r["spec"]["template"]["spec"]["containers"][0]["image"] for r in rs)
        assert images == sorted(["registry.example/app:v1", *PLAN]), name
        assert [r["spec"]["replicas"] for r in rs].count(REPLICAS) == 1, name  # the rest scaled to 0
